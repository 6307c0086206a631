"""Named seed streams: every random draw of a run is a pure function of (seed, stream, ids).

A draw is seeded from ``derive_seed(seed, stream, *ids)``, e.g. the rollout noise of a sample
from ``(train.seed, ROLLOUT_NOISE, step, global sample id)``: it does not depend on how samples
are split across processes or micro-batches, and a resumed run draws what an uninterrupted one
does. Streams keep apart draws that would otherwise share ids (the noise of sample 3 and the
timesteps chosen for sample 3). The numbers are part of the reproducibility contract: changing
one changes every run that uses it, so new streams take new numbers.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class SeedStream(IntEnum):
    """The random streams of the trainers (values are fixed; see the module docstring)."""

    #: initial noise and SDE noise of one rollout sample: ids = (step, global sample id)
    ROLLOUT_NOISE = 1
    #: initial noise shared by a group (``rl.shared_noise``): ids = (step, global group id)
    GROUP_NOISE = 2
    #: which SDE steps a sample trains on: ids = (step, global sample id)
    TRAIN_TIMESTEPS = 3
    #: evaluation noise (fixed across the run): ids = (0, global prompt index)
    EVAL_NOISE = 4
    #: process-wide torch seed of the SFT trainer: ids = (rank,)
    SFT_PROCESS = 5
    #: noise and sigmas of a flow-matching (SFT) batch: ids = (step, micro-batch or pass, rank)
    SFT_NOISE = 6
    #: order in which the trainer walks a rollout's samples: ids = (step, epoch); see :func:`train_order_rng`
    TRAIN_ORDER = 11
    #: start of a random SDE window (``rl.sde_window.mode: random``): ids = (step,)
    SDE_WINDOW = 12


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy ``SeedSequence``; stable across processes, runs and platforms)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state.astype(np.uint64) @ np.array([1 << 31, 1], dtype=np.uint64)) & ((1 << 63) - 1)


def derive_seed(seed: int, stream: SeedStream | int, *ids: int) -> int:
    """The 63-bit seed of one draw: ``hash(seed, stream, *ids)``."""
    return hash_seed(seed, int(stream), *ids)


def process_seed(seed: int, rank: int) -> int:
    """The process-wide torch seed of the MR-GRPO trainer on ``rank``: ``hash(seed, rank)``.

    The one seed without a stream number (it predates the streams; kept so runs reproduce).
    """
    return hash_seed(seed, rank)


def train_order_rng(seed: int, step: int, epoch: int) -> np.random.Generator:
    """The numpy generator that orders a rollout's samples for training in pass ``epoch`` of ``step``.

    Seeded from ``[seed, step, epoch, TRAIN_ORDER]`` (the stream number last, as it always was).
    """
    return np.random.default_rng([seed, step, epoch, int(SeedStream.TRAIN_ORDER)])
