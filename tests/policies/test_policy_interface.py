"""ONE interface suite over every registered policy (each built-in runs here through its tiny twin)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mrgrpo.registry import POLICIES
from mrgrpo.sft_data import SFTBatch

TINY = sorted(n for n in POLICIES.names() if n.endswith("-tiny"))


def test_every_builtin_policy_has_a_tiny_twin_in_the_suite():
    builtins = {n for n, h in POLICIES.describe().items() if not h.startswith("plug-in")}
    assert {"deepgen", "sd3", "flux", "qwen_image"} <= builtins
    # toy-size policies (`-tiny` twins, `deepgen-toy` of the toy world: tests/toy_world/) need no twin
    real_size = {n for n in builtins if not n.endswith(("-tiny", "-toy"))}
    assert {f"{n}-tiny" for n in real_size} <= set(TINY)


def expected_sigmas(policy, n: int) -> torch.Tensor:
    """The first ``n`` sigmas, computed here from the published schedules (not through the scheduler).

    SD3 / DeepGen: ``t`` from 1 to the shifted ``sigma_min`` of 1000 training steps; FLUX / Qwen-Image
    (dynamic shift): ``t = linspace(1, 1/n, n)``. Both: ``s = k t / (1 + (k - 1) t)`` with the policy's shift
    ``k`` at its default resolution, then (Qwen-Image) ``1 - s`` stretched so the last sigma is ``shift_terminal``.
    """
    k = policy.timestep_shift
    config = policy.scheduler.config
    if config.get("use_dynamic_shifting", False):
        t = torch.linspace(1.0, 1.0 / n, n)
    else:
        t = torch.linspace(1.0, k * 1e-3 / (1 + (k - 1) * 1e-3), n)
    s = k * t / (1 + (k - 1) * t)
    if config.get("shift_terminal"):
        s = 1 - (1 - s) / ((1 - s[-1]) / (1 - config["shift_terminal"]))
    return s


@pytest.mark.parametrize("name", TINY)
def test_encode_velocity_sigmas_vae(build, name):
    policy = build(name)
    assert policy.stage == "rl"
    trainable = policy.trainable_parameters()
    assert trainable and all(n.startswith("transformer.") for n, _ in trainable)
    assert all(p.dtype == torch.float32 for _, p in trainable)

    enc = policy.encode(["a red square", "a longer prompt about a blue circle"], negative_prompt="")
    assert len(enc.cond) == 2 and len(enc.uncond) == 2
    cond = enc.cond.repeat(3)
    assert len(cond) == 6
    for k, t in cond.tensors.items():  # [a, b] -> [a, a, a, b, b, b]
        torch.testing.assert_close(t[0], t[2])
        torch.testing.assert_close(t[3], enc.cond.tensors[k][1])

    x = policy.init_noise(6, 64, 64, torch.Generator().manual_seed(0))
    assert x.shape == (6, policy.latent_channels, 8, 8) and x.dtype == torch.float32
    with torch.no_grad():
        v = policy.velocity(x, torch.full((6,), 0.7), cond)
        v2 = policy.velocity(x, torch.full((6,), 0.2), cond)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert not torch.allclose(v, v2)  # the timestep reaches the DiT
    # the uncond of a prompt acts as the negative prompt encoded on its own (padding never matters)
    alone = policy.encode([""]).cond
    with torch.no_grad():
        torch.testing.assert_close(
            policy.velocity(x[:1], torch.full((1,), 0.5), enc.uncond.select([0])),
            policy.velocity(x[:1], torch.full((1,), 0.5), alone),
            atol=2e-5,
            rtol=1e-4,
        )
    with pytest.raises(ValueError, match="samples"):
        policy.velocity(x[:2], torch.full((2,), 0.5), cond)

    s = policy.sigmas(10)
    assert s.shape == (11,) and s.dtype == torch.float32 and s[-1] == 0
    torch.testing.assert_close(s[:-1], expected_sigmas(policy, 10), atol=1e-4, rtol=0)

    with torch.no_grad():
        img = policy.decode(x[:2])
        assert img.shape == (2, 3, 64, 64) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
        assert policy.encode_images(img).shape == x[:2].shape
    for h, w in ((60, 64), (64, 40)):
        with pytest.raises(ValueError, match="multiples of 16"):
            policy.init_noise(1, h, w)


@pytest.mark.parametrize("name", TINY)
def test_flow_matching_loss_reaches_exactly_the_trainable_parameters(build, name, latents):
    policy = build(name)
    with torch.no_grad():
        img = policy.decode(latents(2))
    batch = SFTBatch(img, ["a", "b"])
    loss = policy.flow_matching_loss(batch, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and loss.dtype == torch.float32
    loss.backward()
    grads = {n for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, _ in policy.trainable_parameters()}
    assert grads and grads <= trainable
    # same generator -> same noise and sigma -> same loss
    again = policy.flow_matching_loss(batch, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, loss)


@pytest.mark.parametrize("name", TINY)
def test_reference_and_full_dit_save_load(build, name, perturb, tmp_path):
    policy = build(name)
    cond = policy.encode(["a red square"]).cond.repeat(2)
    x, s = policy.init_noise(2, 64, 64, torch.Generator().manual_seed(0)), torch.tensor([0.7, 0.4])
    policy.enable_reference()
    assert policy._ref_transformer is not None
    with torch.no_grad():
        v0 = policy.velocity(x, s, cond)
        perturb(policy)
        v1 = policy.velocity(x, s, cond)
        with policy.reference():
            v_ref = policy.velocity(x, s, cond)
        assert torch.equal(policy.velocity(x, s, cond), v1)  # the context restored the trained DiT
    assert not torch.allclose(v0, v1)
    torch.testing.assert_close(v_ref, v0)
    # the frozen copy is not a submodule: not in parameters / state dicts / optimizers
    assert not any("_ref_transformer" in n for n, _ in policy.named_parameters())

    policy.save(str(tmp_path / "saved"))
    info = json.loads((tmp_path / "saved" / "policy.json").read_text())
    assert info["name"] == name and info["components"] == ["transformer"] and info["stage"] == "rl"
    assert (tmp_path / "saved" / "transformer" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.joinpath("saved").iterdir()) == ["policy.json", "transformer"]
    fresh = build(name)
    fresh.load(str(tmp_path / "saved"))
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(x, s, cond), v1)
        torch.testing.assert_close(policy("velocity", x, s, cond), v1)  # dispatch through forward (DDP / DeepSpeed)


@pytest.mark.parametrize("name", TINY)
def test_dit_lora_reference_and_round_trip(build, name, perturb, tmp_path):
    policy = build(name)
    policy.set_stage("rl", lora={"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["to_q", "to_v"]})
    names = [n for n, _ in policy.trainable_parameters()]
    assert names and all("lora_" in n for n in names) and not any("to_k" in n for n in names)
    policy.enable_reference()
    assert policy._ref_transformer is None  # no copy: the reference disables the adapter
    cond = policy.encode(["a red square"]).cond
    x, s = policy.init_noise(1, 64, 64, torch.Generator().manual_seed(1)), torch.tensor([0.6])
    with torch.no_grad():
        base = policy.velocity(x, s, cond)
        perturb(policy, scale=0.2)
        tuned = policy.velocity(x, s, cond)
        with policy.reference():
            ref = policy.velocity(x, s, cond)
    assert not torch.allclose(tuned, base)
    torch.testing.assert_close(ref, base)

    policy.save(str(tmp_path / "lora"))
    files = sorted(p.name for p in (tmp_path / "lora" / "transformer_lora").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (tmp_path / "lora" / "transformer").exists()  # only the adapter, never the base DiT
    fresh = build(name)
    fresh.load(str(tmp_path / "lora"))
    assert fresh.dit_lora["rank"] == 4 and fresh.dit_lora["alpha"] == 8
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(x, s, cond), tuned)


@pytest.mark.parametrize("name", TINY)
def test_generate_is_seeded_and_checks_sizes(build, name):
    policy = build(name)
    kw = {"num_steps": 3, "cfg_scale": 3.0, "height": 64, "width": 48}
    a = policy.generate(["a red square", "a tree"], generator=torch.Generator().manual_seed(3), **kw)
    b = policy.generate(["a red square", "a tree"], generator=torch.Generator().manual_seed(3), **kw)
    assert [im.size for im in a] == [(48, 64), (48, 64)]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    with pytest.raises(ValueError, match="multiples of 16"):
        policy.generate(["x"], num_steps=2, height=72, width=64)
    red = Image.new("RGB", (64, 64), "red")
    if policy.supports_editing:
        out = policy.generate(["make it blue"], [[red]], num_steps=2, height=64, width=64)
        assert out[0].size == (64, 64)
    else:
        with pytest.raises(ValueError, match="reference images"):
            policy.encode(["make it blue"], [[red]])
