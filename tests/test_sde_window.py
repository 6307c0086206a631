"""``rl.sde_window``: the fixed shorthand, Flow-GRPO-Fast's random window and MixGRPO's sliding window
(mrgrpo.sde_window), their validation messages, and the recipe round trip."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from mrgrpo.config import RecipeError, load_recipe, sde_trainable_steps
from mrgrpo.rollout import sde_step_mask
from mrgrpo.sde_window import SDEWindow, window_bounds
from mrgrpo.seeding import SeedStream, derive_seed


def _recipe(tmp_path, **rl):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    return {
        "stage": "rl",
        "output_dir": str(tmp_path / "run"),
        "policy": {"name": "toy"},
        "rewards": {"r": {}},
        "data": {"sources": [{"name": "s", "path": str(prompts), "rewards": {"r": 1.0}}]},
        "rl": {"num_steps": 10, "group_size": 2, "sft_aux_coef": 0.0, **rl},
        "train": {"images_per_step": 4, "micro_batch_size": 4},
        "eval": {"num_steps": 10},
    }


def test_random_window_is_uniform_over_the_allowed_starts_and_a_function_of_seed_and_step():
    w = SDEWindow(mode="random", size=3, starts=(2, 5))
    starts = [w.window_at(step, 12, seed=7)[0] for step in range(1, 401)]
    # the same draw as an independent numpy generator seeded from (seed, SDE_WINDOW, step)
    expected = [
        int(np.random.default_rng(derive_seed(7, SeedStream.SDE_WINDOW, s)).integers(2, 6)) for s in range(1, 401)
    ]
    assert starts == expected
    assert set(starts) == {2, 3, 4, 5}  # every allowed start is used, nothing else
    counts = np.bincount(starts, minlength=6)[2:]
    assert counts.min() > 70  # ~100 each over 400 draws
    assert all(w.window_at(s, 12, seed=7) == (a, a + 3) for s, a in zip(range(1, 401), starts))
    assert [w.window_at(s, 12, seed=8)[0] for s in range(1, 401)] != starts  # another seed, other windows
    # default starts: any window that ends before the last (never trained) step
    dflt = SDEWindow(mode="random", size=4)
    assert dflt.start_range(10) == (0, 5)
    assert max(dflt.window_at(s, 10, seed=0)[1] for s in range(1, 300)) == 9


def test_sliding_window_moves_by_stride_every_shift_every_steps_then_stays_or_wraps():
    w = SDEWindow(mode="sliding", size=2, starts=(1, 6), stride=2, shift_every=3)
    got = [w.window_at(step, 10, seed=0)[0] for step in range(1, 16)]
    assert got == [1, 1, 1, 3, 3, 3, 5, 5, 5, 6, 6, 6, 6, 6, 6]  # clamped at the last start (MixGRPO)
    wrap = SDEWindow(mode="sliding", size=2, starts=(1, 6), stride=2, shift_every=3, wrap=True)
    got = [wrap.window_at(step, 10, seed=0)[0] for step in range(1, 16)]
    assert got == [1, 1, 1, 3, 3, 3, 5, 5, 5, 1, 1, 1, 3, 3, 3]
    assert w.window_at(4, 10, seed=0) == w.window_at(4, 10, seed=99)  # the seed plays no part


def test_fixed_shorthand_and_trainable_steps_agree_with_the_step_mask():
    for window, num_steps in (((0, 3), 6), ((2, 9), 9), ((4, 6), 6), ((0, 6), 6)):
        w = SDEWindow.coerce(list(window))
        assert w.mode == "fixed" and w.compact() == list(window)
        assert window_bounds(w, 5, num_steps, 0) == window
        n_mask = int(sde_step_mask(num_steps, window).sum())
        assert w.trainable_steps(num_steps) == n_mask == sde_trainable_steps(num_steps, window)
    assert window_bounds(None, 3, 8, 0) == (0, 8)
    assert SDEWindow(mode="random", size=3).trainable_steps(20) == 3


def test_recipe_forms_round_trip(tmp_path):
    cfg = load_recipe(data=_recipe(tmp_path, sde_window={"mode": "sliding", "size": 2, "shift_every": 25}))
    w = cfg.rl.sde_window
    assert w is not None and w.mode == "sliding" and w.stride == 1 and w.start_range(10) == (0, 7)
    dumped = cfg.model_dump(mode="json")["rl"]["sde_window"]
    assert dumped == {"mode": "sliding", "size": 2, "shift_every": 25}
    assert load_recipe(data=_recipe(tmp_path, sde_window=dumped)).rl.sde_window == w
    fixed = load_recipe(data=_recipe(tmp_path, sde_window=[1, 4]))
    assert fixed.model_dump(mode="json")["rl"]["sde_window"] == [1, 4]
    over = load_recipe(data=_recipe(tmp_path), overrides=["rl.sde_window={mode: random, size: 3, starts: [0, 4]}"])
    assert over.rl.sde_window is not None and over.rl.sde_window.starts == (0, 4)


@pytest.mark.parametrize(
    "window, field, fix",
    [
        ({"mode": "random", "size": 10}, "rl.sde_window.size", "use a size <= 9"),
        ({"mode": "random", "size": 3, "starts": [2, 7]}, "rl.sde_window.starts", "hi <= 6"),
        ({"mode": "sliding", "size": 9}, "rl.sde_window.size", "use a size <= 9"),
        ([3, 12], "rl.sde_window", "use an end <= 10"),
        ([9, 10], "rl.sde_window", "widen it"),
    ],
)
def test_windows_that_do_not_fit_name_the_field_and_the_fix(tmp_path, window, field, fix):
    if field == "rl.sde_window.size" and window["size"] == 9:  # fits exactly: 9 trainable steps of 10
        assert load_recipe(data=_recipe(tmp_path, sde_window=window)).rl.sde_window.trainable_steps(10) == 9
        return
    with pytest.raises(RecipeError) as err:
        load_recipe(data=_recipe(tmp_path, sde_window=window))
    assert f"`{field}`" in str(err.value) and fix in str(err.value)


@pytest.mark.parametrize(
    "window, words",
    [
        ({"mode": "random", "size": 2, "start": 3}, "sde_window.start is for mode fixed"),
        ({"mode": "fixed", "size": 2, "starts": [0, 3]}, "sde_window.starts is for modes random"),
        ({"mode": "random", "size": 2, "stride": 2}, "sde_window.stride is for mode sliding"),
        ({"mode": "random", "size": 2, "starts": [4, 1]}, "0 <= lo <= hi"),
        ({"mode": "random", "size": 0}, "size"),
        ([5, 2], "0 <= start < end"),
        ([1, 2, 3], "two integers"),
    ],
)
def test_inconsistent_window_fields_are_refused(window, words):
    from mrgrpo.config import RLConfig

    with pytest.raises(ValidationError, match=words):
        RLConfig(sde_window=window)
