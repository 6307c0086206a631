"""Every generator, noise tensor and model input the trainers make is on the policy's device.

The audit (tests/device_audit.py) applies CUDA's rule "a generator fills tensors on its own device
only" on any device, so this CPU test fails on the class of bug that stopped every GPU run at the
first rollout. The same checks run on CUDA under the `gpu` marker (tests/gpu/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from device_audit import DeviceAudit

from mrgrpo.config import load_recipe
from mrgrpo.devices import rand, randn
from mrgrpo.rollout import sample_generators
from mrgrpo.seeding import SeedStream

REPO = Path(__file__).resolve().parents[1]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def test_audit_catches_a_draw_on_the_default_device_with_a_policy_device_generator():
    g = torch.Generator(device="cpu").manual_seed(0)
    with DeviceAudit("cpu") as audit:
        torch.randn(2, 3, generator=g)  # the bug: no device, so the draw lands on the default device
    assert audit.violations and "default device" in audit.violations[0]
    with DeviceAudit("cpu") as audit:
        randn((2, 3), g, device="cpu")
        rand((4,), g, device="cpu")
    assert audit.violations == [] and audit.draws == 2


def test_noise_is_a_function_of_the_generator_seed_whatever_the_target_device():
    a = randn((3, 4), torch.Generator().manual_seed(7), device="meta")
    assert a.device.type == "meta" and a.shape == (3, 4)
    b = randn((3, 4), torch.Generator().manual_seed(7), device="cpu")
    c = randn((3, 4), torch.Generator().manual_seed(7), device="cpu")
    assert torch.equal(b, c)
    gens = sample_generators(0, 5, [0, 1, 2], stream=SeedStream.ROLLOUT_NOISE)
    again = sample_generators(0, 5, [2], stream=SeedStream.ROLLOUT_NOISE)
    assert torch.equal(randn((4,), gens[2]), randn((4,), again[0]))


def _quickstart_dict(tmp_path: Path, synth_dir: Path) -> dict:
    recipe = yaml.safe_load((REPO / "recipes" / "smoke_pixel.yaml").read_text())
    for src in recipe["data"]["sources"] + recipe["eval"]["sources"]:
        src["path"] = str(REPO / "recipes" / src["path"])
    recipe["rewards"] = {"brightness": {}, "color_match": {}}
    recipe["data"]["sources"] = recipe["data"]["sources"][:1]
    recipe["data"]["sft_sources"] = [{"name": "t", "path": f"{synth_dir}/t2i.jsonl", "format": "t2i"}]
    recipe["output_dir"] = str(tmp_path / "run")
    recipe["sft"] = {"pixel_budget": 64}
    recipe["rl"].update(beta=0.1, sft_aux_coef=0.1, sft_aux_batch_size=2, num_steps=4, cfg_scale=2.0)
    recipe["eval"].update(every=1, prompts=2, num_steps=3)
    recipe["train"].update(max_steps=2, checkpoint_every=1, ema={"enabled": True, "decay": 0.9})
    recipe["logging"] = {"sample_every": 1, "tensorboard": False, "progress_bar": False}
    return recipe


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from mrgrpo.sft_data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n=8, size=64, seed=0)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_mrgrpo_steps_keep_every_draw_and_input_on_the_policy_device(device, tmp_path, synth_dir, monkeypatch):
    """Rollout (SDE noise, CFG), reference KL, aux SFT loss, EMA, eval, sample grid, checkpoint and resume."""
    from mrgrpo.grpo import GRPOTrainer

    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    if device == "cpu":
        monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    recipe = _quickstart_dict(tmp_path, synth_dir)
    if device == "cuda":
        recipe["train"]["mixed_precision"] = "bf16"
    trainer = GRPOTrainer(load_recipe(data=recipe))
    assert trainer.device.type == device
    with DeviceAudit(trainer.device) as audit:
        audit.watch(trainer.policy)
        hist = trainer.fit()
    assert audit.violations == [], audit.violations[:5]
    assert audit.draws > 10 and audit.checked_inputs > 10
    assert hist[0]["ratio/mean"] == 1.0
    assert all(h["loss/sft"] > 0 for h in hist)
    recipe["train"]["max_steps"] = 3
    recipe["train"]["resume"] = "auto"
    resumed = GRPOTrainer(load_recipe(data=recipe))
    with DeviceAudit(resumed.device) as audit:
        audit.watch(resumed.policy)
        more = resumed.fit()
    assert audit.violations == [], audit.violations[:5]
    assert len(more) == 1  # steps 1-2 restored from the checkpoint, step 3 trained


@pytest.mark.parametrize("device", DEVICES)
def test_sft_steps_and_generation_keep_draws_on_the_policy_device(device, tmp_path, synth_dir, monkeypatch):
    from mrgrpo.sft import SFTTrainer

    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    if device == "cpu":
        monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    precision = "bf16" if device == "cuda" else '"no"'  # quoted: YAML reads a bare no as false
    cfg = load_recipe(
        REPO / "recipes" / "quickstart_sft.yaml",
        [
            f"data.sft_sources.0.path={synth_dir}/t2i.jsonl",
            f"data.sft_sources.1.path={synth_dir}/edit.jsonl",
            f"output_dir={tmp_path}/sft",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "train.max_steps=2",
            "logging.sample_every=1",
            f"train.mixed_precision={precision}",
        ],
    )
    trainer = SFTTrainer(cfg)
    with DeviceAudit(trainer.device) as audit:
        audit.watch(trainer.policy)
        hist = trainer.fit()
        images = trainer.policy.generate(
            ["a red square"],
            num_steps=3,
            cfg_scale=2.0,
            height=64,
            width=64,
            generator=torch.Generator(device=trainer.device).manual_seed(0),
        )
    assert audit.violations == [], audit.violations[:5]
    assert len(hist) == 2 and images[0].size == (64, 64)


def test_speed_levers_resolve_on_cpu(tmp_path, monkeypatch):
    """`auto` levers stay off on the CPU (fused AdamW and auto checkpointing are CUDA-only); explicit ones apply."""
    from mrgrpo.config import RecipeError
    from mrgrpo.registry import POLICIES
    from mrgrpo.trainer_base import build_optimizer, static_training_bytes, want_gradient_checkpointing

    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    assert want_gradient_checkpointing("auto", torch.device("cpu"), 10**15) is False
    assert want_gradient_checkpointing(True, torch.device("cpu"), 0) is True
    torch.manual_seed(0)
    policy = POLICIES.build("sd3-tiny").eval()
    policy.set_stage("rl")
    trainable = policy.trainable_parameters()
    n_trained = sum(p.numel() for _, p in trainable)
    weights = sum(p.numel() * p.element_size() for p in policy.parameters())
    assert static_training_bytes(policy, trainable) == weights + 12 * n_trained
    cfg = load_recipe(
        data={**yaml.safe_load((REPO / "recipes" / "smoke_pixel.yaml").read_text()), "output_dir": str(tmp_path / "o")},
        check_files=False,
    )
    opt = build_optimizer(trainable, cfg)
    assert not opt.defaults.get("fused")
    cfg.train.fused_optimizer = True
    with pytest.raises(RecipeError, match="fused_optimizer"):
        build_optimizer(trainable, cfg)


@pytest.mark.slow
def test_compiled_dit_blocks_give_the_eager_velocity(tmp_path, monkeypatch):
    """train.compile_dit (regional torch.compile): same velocity as eager (inductor compiles C++ on CPU: minutes)."""
    from mrgrpo.registry import POLICIES

    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    policy = POLICIES.build("sd3-tiny").eval()
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 0.8])
    enc = policy.encode(["a red square", "a blue circle"])
    with torch.no_grad():
        eager = policy.velocity(x, sigma, enc.cond)
        policy.compile_blocks()
        compiled = policy.velocity(x, sigma, enc.cond)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
