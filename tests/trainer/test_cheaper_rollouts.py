"""Cheaper rollouts on the toy policy: random / sliding SDE windows in the trainer (only the window stored
and trained, resume-exact), rewards scored chunk by chunk in a background thread (same results, same
errors, thread closed), and the reference-device option's recipe checks."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from mrgrpo.config import RecipeError, load_recipe
from mrgrpo.grpo import GRPOTrainer, RewardFailure
from mrgrpo.rewards.base import RewardOutput, as_reward


def _trainer(recipe: dict, **kwargs) -> GRPOTrainer:
    return GRPOTrainer(load_recipe(data=recipe), **kwargs)


def _spy_train_steps(monkeypatch):
    """Record the ``[N, k]`` steps each rollout trains (mrgrpo.grpo.choose_train_steps)."""
    import mrgrpo.grpo as grpo

    chosen: list[torch.Tensor] = []
    real = grpo.choose_train_steps

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        chosen.append(out.clone())
        return out

    monkeypatch.setattr(grpo, "choose_train_steps", spy)
    return chosen


def test_random_window_stores_and_trains_only_its_steps(toy_recipe, monkeypatch):
    toy_recipe["rl"].update(num_steps=10, sde_window={"mode": "random", "size": 3, "starts": [1, 5]})
    toy_recipe["rl"]["timestep_fraction"] = 0.67
    toy_recipe["train"]["max_steps"] = 6
    chosen = _spy_train_steps(monkeypatch)
    tr = _trainer(toy_recipe)
    assert tr.train_steps_per_sample == 2  # round(0.67 * 3): the fraction applies within the window
    w = tr.cfg.rl.sde_window
    batch = tr.rollout(3)
    start, end = w.window_at(3, 10, seed=0)
    assert batch.sde_window == (start, end) and list(batch.traj.stored_steps) == list(range(start, end))
    assert batch.traj.latents.shape[1] == 4 and batch.traj.log_probs.shape == (len(batch), 3)
    assert batch.traj.sde_steps.nonzero().flatten().tolist() == list(range(start, end))
    hist = tr.fit()
    assert hist[0]["ratio/mean"] == pytest.approx(1.0, abs=1e-6)
    starts = [int(h["rollout/sde_window_start"]) for h in hist]
    assert starts == [w.window_at(s, 10, seed=0)[0] for s in range(1, 7)]
    assert len(set(starts)) > 1 and all(1 <= s <= 5 for s in starts)
    for s, steps in zip(starts, chosen):  # every trained step lies in that rollout's window
        assert steps.shape == (16, 2) and bool(((steps >= s) & (steps < s + 3)).all())


def test_sliding_window_follows_the_schedule_and_resume_is_exact(toy_recipe, tmp_path):
    window = {"mode": "sliding", "size": 2, "starts": [0, 4], "stride": 2, "shift_every": 2}
    toy_recipe["rl"].update(num_steps=8, sde_window=window, beta=0.1)
    toy_recipe["train"].update(max_steps=6, checkpoint_every=3)
    full = _trainer(dict(toy_recipe, output_dir=str(tmp_path / "full"))).fit()
    assert [int(h["rollout/sde_window_start"]) for h in full] == [0, 0, 2, 2, 4, 4]
    # stop after step 3, resume from its checkpoint: the same windows and the same numbers
    part = dict(toy_recipe, output_dir=str(tmp_path / "part"))
    part["train"] = dict(toy_recipe["train"], max_steps=3)
    _trainer(part).fit()
    part["train"] = dict(toy_recipe["train"], max_steps=6, resume="auto")
    rest = _trainer(part).fit()
    assert len(rest) == 3
    for ref, got in zip(full[3:], rest):
        for key in ("rollout/sde_window_start", "reward/mean", "loss/policy", "loss/kl", "grad_norm"):
            assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key


class _Slow:
    """A per-image reward with latency (a remote reward's round trip); records the threads that called it."""

    def __init__(self, delay: float):
        self.delay = delay
        self.threads: list[str] = []
        self.calls: list[tuple[float, float]] = []

    def __call__(self, images, prompts, metadata=None):
        t0 = time.perf_counter()
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        import numpy as np

        scores = torch.tensor([float(np.asarray(im, dtype=np.float32).mean() / 255.0) for im in images])
        self.calls.append((t0, time.perf_counter()))
        return RewardOutput(scores)


def _overlap_recipe(toy_recipe, overlap: bool, chunks: int = 4) -> dict:
    toy_recipe["rl"].update(rollout_chunks=chunks, overlap_rewards=overlap)
    toy_recipe["train"]["max_steps"] = 2
    return toy_recipe


@pytest.mark.parametrize("chunks", [2, 4])
def test_overlapped_rewards_equal_the_sequential_ones_bit_for_bit(toy_recipe, chunks):
    from toy_rewards import brightness, redness

    results = {}
    for overlap in (False, True):
        recipe = _overlap_recipe(dict(toy_recipe, rl=dict(toy_recipe["rl"])), overlap, chunks)
        tr = _trainer(recipe, rewards={"bright": as_reward(brightness), "red": as_reward(redness)})
        batch, scored, adv, _ = tr.run_phases(1)
        results[overlap] = (batch, scored, adv)
        tr.close()
    (b0, s0, a0), (b1, s1, a1) = results[False], results[True]
    assert torch.equal(b0.pixels, b1.pixels) and torch.equal(a0, a1)
    for name in s0.names:
        assert torch.equal(s0.scores[name], s1.scores[name]) and torch.equal(s0.valid[name], s1.valid[name])
    assert torch.equal(s0.weights, s1.weights)
    # chunking the rollout draws the same noise per sample: the images match the one-batch rollout
    one = _trainer(dict(toy_recipe, rl=dict(toy_recipe["rl"], rollout_chunks=1, overlap_rewards=False)))
    torch.testing.assert_close(one.rollout(1).pixels, b0.pixels, rtol=0, atol=1e-5)


def test_rewards_are_scored_in_the_background_while_later_chunks_sample(toy_recipe):
    slow = _Slow(0.15)
    recipe = _overlap_recipe(toy_recipe, True, chunks=4)
    recipe["data"]["sources"] = recipe["data"]["sources"][:1]
    tr = _trainer(recipe, rewards={"bright": slow, "red": _Slow(0.0)})
    sampled_at: list[float] = []
    real_decode = tr._decode

    def decode(final):
        out = real_decode(final)
        sampled_at.append(time.perf_counter())
        return out

    tr._decode = decode
    _, scored, _, m = tr.run_phases(1)
    assert set(slow.threads) == {"mrgrpo-rewards_0"}  # never the trainer's thread
    assert len(slow.calls) == 4 and scored.scores["bright"].shape == (16,)
    assert slow.calls[0][0] < sampled_at[-1]  # chunk 1 was being scored before the last chunk was decoded
    assert m["time/reward_busy"] >= 4 * 0.15 and m["time/reward"] < m["time/reward_busy"]
    tr.close()


class _Fails:
    is_remote = False

    def __call__(self, images, prompts, metadata=None):
        raise ConnectionError("reward server at 127.0.0.1:9 is gone")


def _live_reward_threads() -> list[str]:
    deadline = time.time() + 5
    while time.time() < deadline:
        names = [t.name for t in threading.enumerate() if t.name.startswith("mrgrpo-rewards")]
        if not names:
            return []
        time.sleep(0.02)
    return names


def test_reward_errors_in_the_thread_surface_and_the_thread_is_shut(toy_recipe):
    from toy_rewards import brightness

    recipe = _overlap_recipe(toy_recipe, True, chunks=2)
    recipe["data"]["sources"] = recipe["data"]["sources"][:1]
    recipe["data"]["sources"][0]["rewards"] = {"bright": 0.5, "red": 0.5}
    recipe["rl"]["reward_failure"] = "stop"
    tr = _trainer(recipe, rewards={"bright": as_reward(brightness), "red": _Fails()})
    with pytest.raises(RewardFailure, match="reward 'red' failed: reward server at 127.0.0.1:9 is gone"):
        tr.fit()
    assert tr._reward_pool is None and tr.rewards.closed
    assert _live_reward_threads() == []


def test_masked_failures_with_overlap_and_the_thread_closes_after_a_run(toy_recipe):
    from toy_rewards import brightness

    recipe = _overlap_recipe(toy_recipe, True, chunks=2)
    recipe["data"]["sources"] = recipe["data"]["sources"][:1]
    recipe["data"]["sources"][0]["rewards"] = {"bright": 0.5, "red": 0.5}
    tr = _trainer(recipe, rewards={"bright": as_reward(brightness), "red": _Fails()})
    hist = tr.fit()
    assert hist[0]["reward/red/invalid_frac"] == 1.0 and hist[0]["reward/red/failures"] == 16
    assert hist[0]["reward/bright/invalid_frac"] == 0.0
    assert tr._reward_pool is None and _live_reward_threads() == []


@pytest.mark.parametrize(
    "rl, field, fix",
    [
        ({"overlap_rewards": True}, "rl.overlap_rewards", "rl.rollout_chunks to 2 or more"),
        ({"rollout_chunks": 5}, "rl.rollout_chunks", "use at most 4"),
    ],
)
def test_rollout_option_checks(toy_recipe, rl, field, fix):
    toy_recipe["rl"].update(rl)
    with pytest.raises(RecipeError) as err:
        load_recipe(data=toy_recipe)
    assert f"`{field}`" in str(err.value) and fix in str(err.value)


def test_reference_device_cpu_checks(toy_recipe):
    toy_recipe["rl"].update(reference_device="cpu", beta=0.1)
    toy_recipe["train"]["lora"] = {"enabled": True}
    with pytest.raises(RecipeError, match="`rl.reference_device`.*adapters disabled"):
        load_recipe(data=toy_recipe)
    toy_recipe["train"].pop("lora")
    with pytest.raises(RecipeError, match="ToyPolicy policy keeps its reference on its own device"):
        _trainer(toy_recipe)
