"""Seeded, rank-sharded orders of the SFT data."""

from __future__ import annotations

import numpy as np

from mrgrpo.sft_data import epoch_order


def test_epoch_order_rank_shards_are_disjoint_and_cover():
    for n, world in [(10, 2), (11, 3), (7, 4)]:
        parts = [epoch_order(n, 0, 0, 1, r, world) for r in range(world)]
        flat = np.concatenate(parts)
        assert len(flat) == n and len(set(flat.tolist())) == n
    assert not np.array_equal(epoch_order(20, 0, 0, 0), epoch_order(20, 0, 0, 1))  # reshuffled each epoch
