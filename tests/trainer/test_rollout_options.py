"""Rollout options on the toy policy, and the tiny DeepGen on editing prompts / from an SFT checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mrgrpo.config import load_recipe
from mrgrpo.grpo import GRPOTrainer

REPO = Path(__file__).resolve().parents[2]


def test_sde_window_shared_noise_and_cfg(toy_recipe):
    toy_recipe["rl"].update(num_steps=8, sde_window=[2, 5], shared_noise=True, cfg_scale=3.0)
    tr = GRPOTrainer(load_recipe(data=toy_recipe))
    batch = tr.rollout(1)
    traj = batch.traj
    assert traj.sde_steps.tolist() == [False, False, True, True, True, False, False, False]
    assert list(traj.stored_steps) == [2, 3, 4] and (traj.log_probs != 0).all()  # only the window is stored
    assert batch.uncond is not None  # CFG > 1 encodes the negative prompt in the same call
    x2 = traj.latents[:, 0]  # x before step 2: two ODE steps from the shared initial noise
    assert torch.equal(x2[0], x2[3]) and not torch.equal(x2[0], x2[4])  # one noise per group of 4
    assert not torch.equal(traj.latents[0, 2], traj.latents[1, 2])  # the SDE steps still diverge
    hist = tr.fit()
    assert hist[0]["ratio/mean"] == pytest.approx(1.0, abs=1e-6)
    assert tr.train_steps_per_sample == 2  # round(0.6 * 3 SDE steps)


def test_deepgen_tiny_trains_on_editing_prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    cfg = load_recipe(
        REPO / "recipes" / "smoke_pixel.yaml",
        [
            f"output_dir={tmp_path}/run",
            "train.max_steps=2",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "data.sources.0.path=prompts/edit_sample.jsonl",
            "data.sources.0.kind=edit",
            "data.sources.1.weight=0",
            "eval.sources=[]",
            "train.checkpoint_every=100",
        ],
    )
    tr = GRPOTrainer(cfg)
    batch = tr.rollout(1)
    refs = batch.cond.items["ref_latents"]
    assert len(refs) == 16 and all(len(r) == 1 and tuple(r[0].shape) == (16, 8, 8) for r in refs)
    hist = tr.fit()
    assert len(hist) == 2 and hist[0]["ratio/mean"] == pytest.approx(1.0, abs=1e-5)


def test_sft_checkpoint_is_the_rl_starting_point(tmp_path, monkeypatch):
    from mrgrpo.sft import SFTTrainer
    from mrgrpo.sft_data.synth import synthesize

    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    synthesize(tmp_path / "synth", n=16, size=64, seed=0)
    sft_cfg = load_recipe(
        REPO / "recipes" / "quickstart_sft.yaml",
        [
            f"data.sft_sources.0.path={tmp_path}/synth/t2i.jsonl",
            f"data.sft_sources.1.path={tmp_path}/synth/edit.jsonl",
            f"output_dir={tmp_path}/sft",
            "train.max_steps=2",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
        ],
    )
    sft = SFTTrainer(sft_cfg)
    sft.fit()
    trained = {n: p.detach().clone() for n, p in sft.policy.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trained) and any(n.startswith("transformer.") for n in trained)
    rl_cfg = load_recipe(
        REPO / "recipes" / "smoke_pixel.yaml",
        [
            f"output_dir={tmp_path}/rl",
            f"policy.checkpoint={tmp_path}/sft/final",
            "train.max_steps=1",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "eval.sources=[]",
        ],
    )
    rl = GRPOTrainer(rl_cfg)
    params = dict(rl.policy.named_parameters())
    for name, value in trained.items():
        torch.testing.assert_close(params[name].detach().float().cpu(), value.float().cpu())
    assert [n for n, _ in rl.trainable] and all(n.startswith("transformer.") for n, _ in rl.trainable)


def test_long_prompts_are_truncated_warned_and_counted(toy_recipe, tmp_path, caplog):
    """The rollout and the evaluation encode prompts cut to the policy's limit; the metric counts them."""
    from mrgrpo.config import load_recipe
    from mrgrpo.grpo import GRPOTrainer

    long_file = tmp_path / "long.txt"
    long_file.write_text("x" * 200_000 + " tail\nshort one\n")
    toy_recipe["data"]["sources"][0]["path"] = str(long_file)
    toy_recipe["eval"] = {"sources": [dict(toy_recipe["data"]["sources"][0], name="ev")]}
    toy_recipe["train"]["max_steps"] = 1
    tr = GRPOTrainer(load_recipe(data=toy_recipe))
    tr.policy.max_prompt_tokens = 16
    seen: list[str] = []
    encode = tr.policy.encode
    tr.policy.encode = lambda prompts, *a, **k: seen.extend(prompts) or encode(prompts, *a, **k)
    with caplog.at_level("WARNING", logger="mrgrpo.grpo"):
        hist = tr.fit()
    assert max(map(len, seen)) <= 16 and "x" * 16 in seen
    long_in_step = sum(r.prompt.startswith("xxx") for r in tr.sampler.sources[0].records)
    assert long_in_step == 1 and hist[0]["data/prompts_truncated"] >= 1
    assert "truncated" in caplog.text


def test_rollouts_and_evaluation_ask_for_the_sigmas_of_their_image_size(toy_recipe, tmp_path):
    """Dynamic-shift schedules (FLUX, Qwen-Image) depend on the image size: the trainer must pass it."""
    evals = tmp_path / "eval.txt"
    evals.write_text("held out\n")
    toy_recipe["rl"].update(height=32, width=16)
    toy_recipe["train"]["max_steps"] = 1
    toy_recipe["eval"] = {"every": 1, "sources": [{"name": "h", "path": str(evals), "rewards": {"bright": 1.0}}]}
    tr = GRPOTrainer(load_recipe(data=toy_recipe))
    tr.fit()
    assert len(tr.policy.sigma_sizes) >= 2  # one rollout and one evaluation at least
    assert set(tr.policy.sigma_sizes) == {(32, 16)}
