"""How one rollout is cut into optimizer steps (``train.updates_per_rollout``).

A rollout of one process holds ``N = B * G`` samples, each with ``T`` trained timesteps (its own
random subset of the SDE steps). Training visits every (sample, timestep) pair once per pass
over the rollout, as backward passes over micro-batches; the setting decides how many of those
backward passes accumulate into one optimizer step:

* ``1``: all of them, one optimizer step per pass (the importance ratio is then exactly 1 on
  every sample: the clip never acts);
* ``k`` (an integer): the rollout's groups are split into ``k`` parts, groups kept whole, and each
  part is one optimizer step (over all its samples' trained timesteps), as Flow-GRPO's 2 steps per
  epoch; from the second step on the ratio moves away from 1 and the clip acts;
* ``per_timestep``: one optimizer step per trained timestep column ``j`` over the whole batch
  (every sample's ``j``-th trained step), the released DeepGen-RL schedule (where every backward is
  an AdamW step), without its separate policy-only and KL-only steps.

Every optimizer step has the same number of backward passes, so accelerate's gradient
accumulation (a fixed ``gradient_accumulation_steps``) steps exactly at the end of each update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

UpdatesPerRollout = int | Literal["per_timestep"]


@dataclass(frozen=True)
class TrainPass:
    """One backward pass: the samples of a micro-batch at their ``column``-th trained timestep.

    Attributes:
        micro_batch: id of the micro-batch (the same samples share an id across timesteps).
        samples: ``[m]`` int64 positions in the rollout.
        column: which trained timestep of each sample (``0 <= column < T``).
    """

    micro_batch: int
    samples: np.ndarray
    column: int


@dataclass(frozen=True)
class UpdateLayout:
    """Sizes of one update (optimizer step) for a rollout of one process.

    Attributes:
        updates: optimizer steps per pass over the rollout.
        images: samples each update trains on.
        timesteps: trained timesteps per sample in each update.
        micro: samples per backward pass.
        accumulation: backward passes per optimizer step (``images / micro * timesteps``).
    """

    updates: int
    images: int
    timesteps: int
    micro: int
    accumulation: int


def update_layout(
    setting: UpdatesPerRollout, *, prompts: int, group_size: int, timesteps: int, micro_batch_size: int
) -> UpdateLayout:
    """The :class:`UpdateLayout` of ``setting`` for ``prompts`` groups of ``group_size`` on one process.

    Raises ``ValueError`` (the message names the field and the fix) when the groups or the
    micro-batches do not divide evenly.
    """
    n = prompts * group_size
    if setting == "per_timestep":
        updates, images, steps = timesteps, n, 1
    else:
        k = int(setting)
        if k < 1 or prompts % k:
            raise ValueError(
                f"train.updates_per_rollout={setting} must divide the {prompts} prompts (groups) each process "
                f"trains on (groups are kept whole). Fix: use a divisor of {prompts}, or per_timestep."
            )
        updates, images, steps = k, n // k, timesteps
    micro = min(micro_batch_size, images)
    if images % micro:
        raise ValueError(
            f"train.micro_batch_size={micro_batch_size} does not divide the {images} images of each optimizer step "
            f"(train.updates_per_rollout={setting}). Fix: use a divisor of {images}."
        )
    return UpdateLayout(updates, images, steps, micro, (images // micro) * steps)


def plan_updates(
    setting: UpdatesPerRollout, layout: UpdateLayout, group_size: int, rng: np.random.Generator
) -> list[list[TrainPass]]:
    """The backward passes of one pass over a rollout, grouped by optimizer step.

    ``rng`` orders the samples (``1`` and ``per_timestep``: a permutation of the samples; ``k``: a
    permutation of the groups, cut into ``k`` consecutive parts). Within an update the passes go
    micro-batch by micro-batch, all trained timesteps of a micro-batch in a row (``1`` and ``k``).
    Every returned update holds ``layout.accumulation`` passes.
    """
    n = layout.images if setting == "per_timestep" else layout.images * layout.updates
    micro = layout.micro
    if setting == "per_timestep" or int(setting) == 1:
        order = rng.permutation(n)
        batches = [order[i : i + micro] for i in range(0, n, micro)]
        if setting == "per_timestep":
            return [[TrainPass(m, mb, j) for m, mb in enumerate(batches)] for j in range(layout.updates)]
        return [[TrainPass(m, mb, j) for m, mb in enumerate(batches) for j in range(layout.timesteps)]]
    groups = rng.permutation(n // group_size)
    per_update = len(groups) // layout.updates
    plan, m = [], 0
    for u in range(layout.updates):
        part = groups[u * per_update : (u + 1) * per_update]
        samples = (part[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)
        passes = []
        for i in range(0, len(samples), micro):
            passes += [TrainPass(m, samples[i : i + micro], j) for j in range(layout.timesteps)]
            m += 1
        plan.append(passes)
    return plan
