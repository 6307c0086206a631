"""How a rollout is cut into optimizer steps (mrgrpo.updates): every (sample, timestep) pair once,
groups whole, equal accumulation per update, and the exact old order for `1`."""

from __future__ import annotations

import numpy as np
import pytest

from mrgrpo.updates import plan_updates, update_layout


def _pairs(plan):
    return sorted((int(s), tp.column) for update in plan for tp in update for s in tp.samples)


@pytest.mark.parametrize("setting", [1, 2, 4, "per_timestep"])
def test_every_sample_timestep_pair_is_trained_once_with_equal_accumulation(setting):
    G, prompts, T = 4, 4, 3
    layout = update_layout(setting, prompts=prompts, group_size=G, timesteps=T, micro_batch_size=4)
    plan = plan_updates(setting, layout, G, np.random.default_rng(0))
    assert len(plan) == layout.updates == {1: 1, 2: 2, 4: 4, "per_timestep": T}[setting]
    assert _pairs(plan) == [(s, j) for s in range(16) for j in range(T)]
    assert all(len(update) == layout.accumulation for update in plan)
    assert all(len(tp.samples) == layout.micro for update in plan for tp in update)


def test_integer_updates_keep_groups_whole():
    G = 4
    layout = update_layout(2, prompts=6, group_size=G, timesteps=2, micro_batch_size=4)
    plan = plan_updates(2, layout, G, np.random.default_rng(3))
    for update in plan:
        samples = {int(s) for tp in update for s in tp.samples}
        groups = {s // G for s in samples}
        assert len(groups) == 3 and samples == {g * G + k for g in groups for k in range(G)}
    # the two updates cover disjoint groups
    first, second = ({int(s) // G for tp in u for s in tp.samples} for u in plan)
    assert not first & second


def test_per_timestep_updates_train_one_column_over_the_whole_batch():
    layout = update_layout("per_timestep", prompts=2, group_size=4, timesteps=3, micro_batch_size=4)
    plan = plan_updates("per_timestep", layout, 4, np.random.default_rng(1))
    assert [{tp.column for tp in update} for update in plan] == [{0}, {1}, {2}]
    assert all(sorted(int(s) for tp in update for s in tp.samples) == list(range(8)) for update in plan)
    assert layout.accumulation == 2 and layout.images == 8


def test_one_update_is_the_historical_order():
    """`1` walks micro-batches of a permutation of the samples, all timesteps of a micro-batch in a row."""
    layout = update_layout(1, prompts=4, group_size=4, timesteps=3, micro_batch_size=8)
    (update,) = plan_updates(1, layout, 4, np.random.default_rng([0, 1, 0, 11]))
    order = np.random.default_rng([0, 1, 0, 11]).permutation(16)
    expected = [(tuple(order[i : i + 8]), j) for i in (0, 8) for j in range(3)]
    assert [(tuple(tp.samples), tp.column) for tp in update] == expected
    assert layout.accumulation == 6


def test_layout_errors_name_the_field_and_the_fix():
    with pytest.raises(
        ValueError, match=r"train.updates_per_rollout=3 must divide the 4 prompts .* Fix: use a divisor of 4"
    ):
        update_layout(3, prompts=4, group_size=4, timesteps=2, micro_batch_size=4)
    with pytest.raises(ValueError, match=r"train.micro_batch_size=3 does not divide the 8 images"):
        update_layout(2, prompts=4, group_size=4, timesteps=2, micro_batch_size=3)
    # a micro-batch larger than an update shrinks to the update
    assert update_layout(4, prompts=4, group_size=4, timesteps=2, micro_batch_size=16).micro == 4
