"""One interface suite for every registered tiny policy."""

from __future__ import annotations

import pytest
import torch


POLICY_NAMES = ["deepgen-tiny", "sd3-tiny"]


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policy_interface(build, name, tmp_path):
    policy = build(name)
    assert policy.stage == "rl"
    trainable = policy.trainable_parameters()
    assert trainable and all(n.startswith("transformer.") for n, _ in trainable)
    assert all(p.dtype == torch.float32 for _, p in trainable)

    # encode once, repeat G times cheaply
    enc = policy.encode(["a red square", "a longer prompt about a blue circle"], negative_prompt="")
    assert len(enc.cond) == 2 and len(enc.uncond) == 2
    cond = enc.cond.repeat(3)
    assert len(cond) == 6
    torch.testing.assert_close(cond.tensors["pooled"][0], cond.tensors["pooled"][2])

    # velocity shapes, sigmas, noise, decode / encode_images
    x = policy.init_noise(6, 64, 64, torch.Generator().manual_seed(0))
    assert x.shape == (6, policy.latent_channels, 64 // policy.vae_scale_factor, 64 // policy.vae_scale_factor)
    v = policy.velocity(x, torch.full((6,), 0.7), cond)
    assert v.shape == x.shape and torch.isfinite(v).all()
    s = policy.sigmas(10)
    assert s.shape == (11,) and s[0] == pytest.approx(1.0) and s[-1] == 0 and torch.all(s[1:] < s[:-1])
    img = policy.decode(x[:2])
    assert img.shape == (2, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    assert policy.encode_images(img).shape == x[:2].shape
    with pytest.raises(ValueError, match="multiples of"):
        policy.init_noise(1, 60, 64)

    # flow-matching loss is a differentiable scalar reaching the trained parameters
    loss = policy.flow_matching_loss({"images": img, "prompts": ["a", "b"], "ref_images": None}, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable)
    policy.zero_grad(set_to_none=True)

    # reference() gives the initial velocity after the weights changed
    policy.enable_reference()
    with torch.no_grad():
        v0 = policy.velocity(x, torch.full((6,), 0.7), cond)
        for _, p in trainable:
            p.add_(0.05 * torch.randn_like(p))
        v1 = policy.velocity(x, torch.full((6,), 0.7), cond)
        with policy.reference():
            v_ref = policy.velocity(x, torch.full((6,), 0.7), cond)
    assert not torch.allclose(v0, v1)
    torch.testing.assert_close(v_ref, v0)

    # save / load round trip of the trained weights
    policy.save(str(tmp_path / "saved"))
    fresh = build(name)
    fresh.load(str(tmp_path / "saved"))
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(x, torch.full((6,), 0.7), cond), v1)

    # dispatch through forward (what DDP / DeepSpeed wrappers call)
    with torch.no_grad():
        torch.testing.assert_close(policy("velocity", x, torch.full((6,), 0.7), cond), v1)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_lora_round_trip_and_reference(build, name, tmp_path):
    policy = build(name)
    policy.set_stage("rl", lora={"rank": 4, "alpha": 8})
    names = [n for n, _ in policy.trainable_parameters()]
    assert names and all("lora_" in n for n in names)
    enc = policy.encode(["a red square"])
    x = policy.init_noise(1, 64, 64, torch.Generator().manual_seed(1))
    s = torch.tensor([0.6])
    with torch.no_grad():
        with policy.reference():
            base = policy.velocity(x, s, enc.cond)
        for _, p in policy.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
        tuned = policy.velocity(x, s, enc.cond)
        with policy.reference():
            ref = policy.velocity(x, s, enc.cond)
    assert not torch.allclose(tuned, base)
    torch.testing.assert_close(ref, base)
    policy.save(str(tmp_path / "lora"))
    fresh = build(name)
    fresh.load(str(tmp_path / "lora"))
    assert fresh.dit_lora is not None
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(x, s, enc.cond), tuned)
