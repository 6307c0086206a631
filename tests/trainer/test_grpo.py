"""MR-GRPO trainer behaviour on the toy policy (fast): on-policy ratio, one optimizer step per
rollout, exact resume after SIGKILL, reward failures, learning direction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mrgrpo.config import load_recipe
from mrgrpo.grpo import GRPOTrainer, RewardFailure
from mrgrpo.tracking import read_metrics

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def _trainer(recipe: dict, **kwargs) -> GRPOTrainer:
    return GRPOTrainer(load_recipe(data=recipe), **kwargs)


def test_first_update_is_on_policy_ratio_exactly_one(toy_recipe):
    toy_recipe["train"]["max_steps"] = 1
    toy_recipe["logging"]["dump_rollouts"] = True
    tr = _trainer(toy_recipe)
    hist = tr.fit()
    assert hist[0]["ratio/mean"] == 1.0
    assert hist[0]["ratio/min"] == 1.0 and hist[0]["ratio/max"] == 1.0
    assert hist[0]["clip_frac"] == 0.0
    dump = torch.load(Path(toy_recipe["output_dir"]) / "rollouts" / "step-000001.rank-0.pt", weights_only=False)
    # trained log-probs are float32 and real (SDE steps have non-zero log-probs)
    assert dump["log_probs"].dtype == torch.float32
    assert (dump["log_probs"] != 0).all() and dump["log_prob_steps"] == [0, 1, 2, 3, 4]  # not the last (ODE) step


@pytest.mark.parametrize("inner_epochs", [1, 2])
def test_exactly_one_optimizer_step_per_rollout_pass(toy_recipe, inner_epochs):
    toy_recipe["train"]["max_steps"] = 2
    toy_recipe["rl"]["inner_epochs"] = inner_epochs
    tr = _trainer(toy_recipe)
    calls = []
    base = tr.optimizer.optimizer if hasattr(tr.optimizer, "optimizer") else tr.optimizer
    base.register_step_post_hook(lambda *a: calls.append(1))
    tr.fit()
    # 16 images, micro-batch 8, 3 trained timesteps each -> 6 backward passes, but one step per pass
    assert tr.accum == 2 * 3
    assert len(calls) == 2 * inner_epochs


def test_velocity_kl_and_reference(toy_recipe):
    toy_recipe["rl"]["beta"] = 0.5
    toy_recipe["train"]["max_steps"] = 3
    hist = _trainer(toy_recipe).fit()
    assert hist[0]["loss/kl"] == 0.0  # reference == policy before the first update
    assert hist[-1]["loss/kl"] > 0.0


def test_resolved_config_and_artifacts(toy_recipe):
    tr = _trainer(toy_recipe)
    tr.fit()
    out = Path(toy_recipe["output_dir"])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["rl"]["group_size"] == 4 and saved["train"]["lr"] == pytest.approx(3e-3)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in (
        "reward/mean",
        "reward/bright",
        "reward/bright/invalid_frac",
        "advantage/std",
        "loss/policy",
        "ratio/mean",
        "clip_frac",
        "lr",
        "time/rollout",
        "time/reward",
        "time/train",
    ):
        assert key in records[0], key
    assert (out / "reward_curve.png").stat().st_size > 1000
    assert (out / "samples" / "step-000001.png").exists()
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-000002", "step-000003"]
    assert (out / "final" / "net.pt").exists()


def test_mixture_weights_route_rewards(toy_recipe):
    """`red` is only in source b's mixture: images of source-a prompts are never scored by it."""
    toy_recipe["train"]["max_steps"] = 1
    toy_recipe["logging"]["dump_rollouts"] = True
    _trainer(toy_recipe).fit()
    dump = torch.load(Path(toy_recipe["output_dir"]) / "rollouts" / "step-000001.rank-0.pt", weights_only=False)
    from_b = torch.tensor([p.startswith("another") for p in dump["prompts"] for _ in range(4)])
    assert torch.equal(dump["valid"]["red"], from_b)
    assert dump["valid"]["bright"].all()


class _Flaky:
    """A reward that fails on its 2nd call (a server that died)."""

    name = "flaky"
    is_remote = True

    def __init__(self):
        self.calls = 0

    def __call__(self, images, prompts, metadata=None):
        from mrgrpo.rewards.base import RewardOutput

        self.calls += 1
        if self.calls == 2:
            raise ConnectionError("reward server at 127.0.0.1:9 is gone")
        return RewardOutput(torch.ones(len(images)) * 0.5 + torch.arange(len(images)) * 0.01)


def test_failed_reward_is_masked_and_logged(toy_recipe):
    from toy_rewards import brightness

    from mrgrpo.rewards.base import as_reward

    toy_recipe["data"]["sources"] = toy_recipe["data"]["sources"][:1]
    toy_recipe["data"]["sources"][0]["rewards"] = {"bright": 0.5, "red": 0.5}
    toy_recipe["train"]["max_steps"] = 3
    tr = _trainer(toy_recipe, rewards={"bright": as_reward(brightness), "red": _Flaky()})
    hist = tr.fit()
    assert hist[1]["reward/red/invalid_frac"] == 1.0 and hist[1]["reward/red/failures"] == 16
    assert hist[2]["reward/red/invalid_frac"] == 0.0
    assert all(np.isfinite(h["advantage/std"]) for h in hist)


def test_failed_reward_stops_when_asked(toy_recipe):
    from toy_rewards import brightness

    from mrgrpo.rewards.base import as_reward

    toy_recipe["data"]["sources"] = toy_recipe["data"]["sources"][:1]
    toy_recipe["data"]["sources"][0]["rewards"] = {"bright": 0.5, "red": 0.5}
    toy_recipe["rl"]["reward_failure"] = "stop"
    tr = _trainer(toy_recipe, rewards={"bright": as_reward(brightness), "red": _Flaky()})
    with pytest.raises(RewardFailure, match="reward 'red' failed: reward server at 127.0.0.1:9 is gone"):
        tr.fit()


def _run_cli(recipe_path: Path, *extra: str, env=None) -> subprocess.Popen:
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.Popen(
        [sys.executable, "-m", "mrgrpo.cli", "train", str(recipe_path), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_exact_resume_after_sigkill(toy_recipe, tmp_path):
    toy_recipe["train"].update(max_steps=8, checkpoint_every=2)
    toy_recipe["rl"]["beta"] = 0.1
    # uninterrupted reference run
    full = dict(toy_recipe, output_dir=str(tmp_path / "full"))
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(full))
    p = _run_cli(tmp_path / "full.yaml")
    assert p.wait(timeout=120) == 0, p.stdout.read()
    ref = {r["step"]: r for r in read_metrics(tmp_path / "full" / "metrics.jsonl")}

    # killed run: SIGKILL as soon as the step-2 checkpoint is complete
    killed = dict(toy_recipe, output_dir=str(tmp_path / "killed"))
    (tmp_path / "killed.yaml").write_text(yaml.safe_dump(killed))
    p = _run_cli(tmp_path / "killed.yaml")
    marker = tmp_path / "killed" / "checkpoints" / "step-000002" / "COMPLETE"
    deadline = time.time() + 120
    while not marker.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    done = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert done and max(r["step"] for r in done) < 8, "the run finished before it could be killed"

    p = _run_cli(tmp_path / "killed.yaml", "--resume")
    assert p.wait(timeout=120) == 0, p.stdout.read()
    got = {r["step"]: r for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")}
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        for key in ("reward/mean", "loss/policy", "loss/kl", "advantage/std", "ratio/mean", "grad_norm", "lr"):
            assert got[step][key] == pytest.approx(ref[step][key], rel=1e-6, abs=1e-9), (step, key)


@pytest.mark.parametrize("flip", [False, True])
def test_toy_learning_direction(toy_recipe, flip):
    """Brightness rises (or falls with the advantage sign flipped) on every one of 3 seeds."""
    deltas = []
    for seed in range(3):
        recipe = json.loads(json.dumps(toy_recipe))
        recipe["output_dir"] = f"{toy_recipe['output_dir']}-{seed}"
        recipe["data"]["sources"] = recipe["data"]["sources"][:1]
        recipe["train"].update(max_steps=25, seed=seed, checkpoint_every=1000)
        recipe["rl"]["flip_advantage_sign"] = flip
        hist = _trainer(recipe).fit()
        r = [h["reward/bright"] for h in hist]
        deltas.append(np.mean(r[-5:]) - np.mean(r[:5]))
    if flip:
        assert max(deltas) < -0.01, deltas
    else:
        assert min(deltas) > 0.01, deltas


def _heldout_eval(tmp_path: Path, lines: list[str], **fields) -> dict:
    """An ``eval`` section over a held-out prompt file of ``lines``, scored by ``bright``."""
    evals = tmp_path / "eval.txt"
    evals.write_text("".join(f"{line}\n" for line in lines))
    return {"sources": [{"name": "heldout", "path": str(evals), "rewards": {"bright": 1.0}}], "num_steps": 4, **fields}


def test_periodic_evaluation_is_deterministic(toy_recipe, tmp_path):
    """eval/<reward> is logged every eval.every steps with fixed seeds: at lr=0 it never changes."""
    toy_recipe["eval"] = _heldout_eval(tmp_path, ["held out one", "held out two", "held out three"], every=1, prompts=2)
    toy_recipe["train"]["max_steps"] = 2
    toy_recipe["train"]["lr"] = 1e-12
    hist = _trainer(toy_recipe).fit()
    assert "eval/bright" in hist[0] and "eval/red" not in hist[0]
    assert hist[0]["eval/bright"] == pytest.approx(hist[1]["eval/bright"], abs=1e-6)
    assert 0.0 < hist[0]["eval/bright"] < 1.0
    assert (Path(toy_recipe["output_dir"]) / "eval" / "step-000001.png").exists()


def test_curve_figure_is_redrawn_every_plot_every_steps_and_at_the_end(toy_recipe):
    toy_recipe["train"]["max_steps"] = 5
    toy_recipe["logging"]["plot_every"] = 2
    tr = _trainer(toy_recipe)
    drawn: list[int] = []
    redraw = tr.tracker_plot

    def spy() -> None:
        drawn.append(tr.step)
        redraw()

    tr.tracker_plot = spy  # type: ignore[method-assign]
    tr.fit()
    assert drawn == [2, 4, 5]
    assert (Path(toy_recipe["output_dir"]) / "reward_curve.png").stat().st_size > 1000


def test_eval_on_start_logs_the_starting_policy_as_step_zero(toy_recipe, tmp_path):
    """eval.on_start: one evaluation before the first update, logged as step 0; it equals what the same
    policy scores later at lr ~ 0 (same fixed noise), and a resumed run does not log it again."""
    toy_recipe["eval"] = _heldout_eval(tmp_path, ["held out one", "held out two"], every=2, prompts=2, on_start=True)
    toy_recipe["train"].update(max_steps=2, lr=1e-12, checkpoint_every=1)
    hist = _trainer(toy_recipe).fit()
    metrics = Path(toy_recipe["output_dir"]) / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert records[0]["step"] == 0 and {"eval/bright", "eval/mean"} <= set(records[0])
    assert all(k == "step" or k.startswith("eval/") for k in records[0])
    assert records[0]["eval/bright"] == pytest.approx(hist[1]["eval/bright"], abs=1e-6)
    assert len(hist) == 2  # the returned history holds the training steps only
    toy_recipe["train"]["max_steps"] = 3
    toy_recipe["train"]["resume"] = "auto"
    _trainer(toy_recipe).fit()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps.count(0) == 1 and steps[-1] == 3


def test_evaluation_samples_each_prompt_from_distinct_noise(toy_recipe, tmp_path):
    """eval.samples_per_prompt = k scores k images a prompt, each from its own noise: the logged mean is the
    mean over all of them (not k copies of one image), and the first image of each prompt is the k = 1 image."""
    scores: dict[int, list[float]] = {}

    def run(k: int) -> float:
        recipe = json.loads(json.dumps(toy_recipe))
        recipe["output_dir"] = f"{toy_recipe['output_dir']}-k{k}"
        recipe["eval"] = _heldout_eval(
            tmp_path, ["held out one", "held out two"], every=1, prompts=2, samples_per_prompt=k
        )
        recipe["train"].update(max_steps=1, lr=1e-12)
        tr = _trainer(recipe)
        score = tr.score

        def spy(pixels, records, *args, **kwargs):
            if records[0].prompt.startswith("held out"):  # the evaluation's call (rollouts score too)
                scores[k] = pixels.float().mean(dim=(1, 2, 3)).tolist()
                assert [r.prompt for r in records] == [p for p in ("held out one", "held out two") for _ in range(k)]
            return score(pixels, records, *args, **kwargs)

        tr.score = spy
        return tr.fit()[0]["eval/bright"]

    one, three = run(1), run(3)
    assert len(scores[1]) == 2 and len(scores[3]) == 6
    assert scores[3][0] == pytest.approx(scores[1][0], abs=1e-6)  # prompt 1, copy 0 = the k = 1 image
    assert len({round(v, 6) for v in scores[3][:3]}) == 3  # the copies of one prompt differ (own noise)
    assert three != pytest.approx(one, abs=1e-6)


def test_ema_tracks_trained_weights(toy_recipe):
    toy_recipe["train"]["ema"] = {"enabled": True, "decay": 0.5}
    toy_recipe["train"]["max_steps"] = 3
    tr = _trainer(toy_recipe)
    before = [p.detach().clone() for _, p in tr.trainable]
    tr.fit()
    out = Path(toy_recipe["output_dir"])
    final = torch.load(out / "final" / "net.pt", weights_only=True)
    ema = torch.load(out / "final_ema" / "net.pt", weights_only=True)
    key = "inp.weight"
    # the EMA differs from both the initial and the final weights, and is closer to the final ones
    assert not torch.equal(final[key], ema[key]) and not torch.equal(before[0], ema[key])
    assert (ema[key] - final[key]).norm() < (before[0] - final[key]).norm()
    trained = dict(tr.policy.net.state_dict())
    assert torch.equal(trained[key], final[key])  # the live weights are restored after the EMA save
    assert (Path(out) / "checkpoints" / "step-000002" / "ema.pt").exists()


def test_ema_follows_the_documented_decay_warmup(toy_recipe):
    """final_ema == the EMA of the weights after each optimizer step, computed by hand with the decay that
    `train.ema.decay` documents: a copy at step 1, then min(decay, k / (k + 9)) at step k."""
    toy_recipe["train"]["ema"] = {"enabled": True, "decay": 0.2}
    toy_recipe["train"]["max_steps"] = 4
    tr = _trainer(toy_recipe)
    seen: list[torch.Tensor] = []
    step = tr.ema.step

    def record(params):
        seen.append(tr.policy.net.state_dict()["inp.weight"].detach().clone())
        step(params)

    tr.ema.step = record
    tr.fit()
    expected = seen[0]
    for k, w in enumerate(seen[1:], start=2):
        d = min(0.2, k / (k + 9))
        expected = d * expected + (1 - d) * w
    assert len(seen) == 4 and not torch.equal(seen[-1], expected)  # decay 0.2 binds from step 3 on
    ema = torch.load(Path(toy_recipe["output_dir"]) / "final_ema" / "net.pt", weights_only=True)
    torch.testing.assert_close(ema["inp.weight"], expected, rtol=0, atol=1e-6)


class _Closing:
    """A reward that counts its close() calls."""

    name = "closing"

    def __init__(self):
        self.closed = 0

    def __call__(self, images, prompts, metadata=None):
        from mrgrpo.rewards.base import RewardOutput

        return RewardOutput(torch.linspace(0, 1, len(images)))

    def close(self):
        self.closed += 1


@pytest.mark.parametrize("fails", [False, True])
def test_rewards_are_closed_when_the_run_ends(toy_recipe, fails):
    """The trainer closes every reward (clients, pools) once at the end of a run, also when it fails."""
    from mrgrpo.rewards.base import as_reward

    toy_recipe["train"]["max_steps"] = 1
    bright, red = _Closing(), _Closing()
    tr = _trainer(toy_recipe, rewards={"bright": bright, "red": red})
    if fails:
        tr.rewards.rewards["red"] = as_reward(lambda images, prompts: 1 / 0)
        tr.rewards.failure = "stop"
        with pytest.raises(RewardFailure):
            tr.fit()
        assert bright.closed == 1
    else:
        tr.fit()
        assert bright.closed == 1 and red.closed == 1
    assert tr.rewards.closed and tr.rewards._pool._shutdown


def _record_step_losses(monkeypatch, tr):
    """Wrap the trainer's step loss: (optimizer steps taken so far, ratios, clip masks) of every backward pass."""
    import mrgrpo.grpo as grpo

    calls = []
    real = grpo.mrgrpo_step_loss

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((tr.optimizer_steps, out.ratio.clone(), (out.clipped_low | out.clipped_high).clone()))
        return out

    monkeypatch.setattr(grpo, "mrgrpo_step_loss", spy)
    return calls


@pytest.mark.parametrize("setting, updates", [(2, 2), (4, 4), ("per_timestep", 3)])
def test_several_updates_per_rollout_first_on_policy_then_clipped(toy_recipe, monkeypatch, setting, updates):
    """k updates per rollout: the first update's ratio is exactly 1, later ones move and the clip acts."""
    toy_recipe["train"].update(max_steps=1, updates_per_rollout=setting, lr=3e-2)
    toy_recipe["rl"]["clip_range"] = 1e-4
    tr = _trainer(toy_recipe)
    calls = _record_step_losses(monkeypatch, tr)
    steps = []
    base = tr.optimizer.optimizer if hasattr(tr.optimizer, "optimizer") else tr.optimizer
    base.register_step_post_hook(lambda *a: steps.append(1))
    hist = tr.fit()
    assert len(steps) == updates and hist[0]["optimizer_steps"] == updates
    assert len(calls) == updates * tr.accum
    first = [c for c in calls if c[0] == 0]
    later = [c for c in calls if c[0] > 0]
    assert len(first) == tr.accum and all(torch.equal(r, torch.ones_like(r)) and not m.any() for _, r, m in first)
    later_ratios = torch.cat([r for _, r, _ in later])
    assert (later_ratios != 1).all()
    assert torch.cat([m for _, _, m in later]).float().mean() > 0.5  # clip range 1e-4: most ratios leave it
    assert hist[0]["clip_frac"] > 0 and hist[0]["ratio/max"] > 1 and hist[0]["ratio/min"] < 1


def test_lr_schedule_counts_rollouts_whatever_the_updates(toy_recipe):
    toy_recipe["train"].update(max_steps=3, updates_per_rollout="per_timestep", warmup_steps=4, lr=1e-3)
    hist = _trainer(toy_recipe).fit()
    # the lr logged after rollout s is the warm-up factor of the next rollout: (s + 1) / 4
    assert [h["lr"] for h in hist] == pytest.approx([1e-3 * 2 / 4, 1e-3 * 3 / 4, 1e-3 * 4 / 4])
    assert [h["optimizer_steps"] for h in hist] == [3, 6, 9]


def test_resume_is_exact_with_several_updates_per_rollout(toy_recipe, tmp_path):
    toy_recipe["train"].update(max_steps=4, checkpoint_every=2, updates_per_rollout=2, warmup_steps=3)
    toy_recipe["rl"].update(beta=0.1, clip_range=1e-3)
    full = _trainer(dict(toy_recipe, output_dir=str(tmp_path / "full"))).fit()
    part = dict(toy_recipe, output_dir=str(tmp_path / "part"))
    _trainer(json.loads(json.dumps(part)) | {"train": dict(toy_recipe["train"], max_steps=2)}).fit()
    resumed = _trainer(json.loads(json.dumps(part)) | {"train": dict(toy_recipe["train"], resume="auto")}).fit()
    assert len(resumed) == 2  # steps 3 and 4 only: it resumed from the step-2 checkpoint
    got = read_metrics(tmp_path / "part" / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(full, got):
        for key in (
            "reward/mean",
            "loss/policy",
            "loss/kl",
            "ratio/mean",
            "clip_frac",
            "grad_norm",
            "lr",
            "optimizer_steps",
        ):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    assert got[-1]["optimizer_steps"] == 8


def test_updates_per_rollout_that_splits_groups_is_refused(toy_recipe):
    from mrgrpo.config import RecipeError

    toy_recipe["train"]["updates_per_rollout"] = 3  # 4 prompts a step
    with pytest.raises(RecipeError, match=r"train.updates_per_rollout.*does not divide the 4 prompts"):
        load_recipe(data=toy_recipe)


def test_diagnostics_zero_std_frac_ratio_spread_and_ms_per_image(toy_recipe):
    """zero_std_frac counts the groups whose rewards are all equal; per-phase ms per image; ratio spread."""
    from mrgrpo.rewards.base import as_reward

    def per_prompt(images, prompts):  # the same value for every image of a prompt: no signal in any group
        return [float(len(p)) / 20 for p in prompts]

    toy_recipe["train"].update(max_steps=2, updates_per_rollout=2)
    tr = _trainer(
        toy_recipe, rewards={"bright": as_reward(per_prompt), "red": as_reward(lambda im, p: [0.5] * len(im))}
    )
    hist = tr.fit()
    assert hist[0]["zero_std_frac"] == 1.0 and hist[0]["reward/bright/zero_std_frac"] == 1.0
    toy_recipe["output_dir"] += "-b"
    hist = _trainer(toy_recipe).fit()
    h = hist[1]
    assert h["zero_std_frac"] == 0.0 and h["reward/bright/zero_std_frac"] == 0.0
    for phase in ("encode", "rollout", "decode", "reward", "train", "step"):
        assert h[f"ms_per_image/{phase}"] == pytest.approx(1000 * h[f"time/{phase}"] / 16)
    assert h["ratio/std"] > 0 and h["clip_frac"] == pytest.approx(h["clip_frac/low"] + h["clip_frac/high"])
    records = read_metrics(Path(toy_recipe["output_dir"]) / "metrics.jsonl")
    for key in ("zero_std_frac", "ratio/std", "clip_frac/low", "clip_frac/high", "ms_per_image/train"):
        assert key in records[-1], key
