"""Seeded orders of the SFT data: every draw is a pure function of the run seed and named tags."""

from __future__ import annotations

import numpy as np

# tags that keep the random streams of the SFT data apart
TAG_ORDER, TAG_SHARDS, TAG_MIX, TAG_DROP = 11, 12, 13, 14


def rng(*parts: int) -> np.random.Generator:
    """A numpy generator seeded by the integers ``parts`` (e.g. seed, tag, source, epoch)."""
    return np.random.default_rng([int(p) % (1 << 63) for p in parts])


def epoch_order(n: int, seed: int, source_index: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This rank's record indices for one epoch: a seeded permutation of ``range(n)``, every
    ``world_size``-th item from ``rank`` (disjoint across ranks). With fewer records than
    processes every rank takes the whole permutation."""
    perm = rng(seed, TAG_ORDER, source_index, epoch).permutation(n)
    return perm if n < world_size else perm[rank::world_size]


__all__ = ["TAG_DROP", "TAG_MIX", "TAG_ORDER", "TAG_SHARDS", "epoch_order", "rng"]
