"""FLUX.1 policy against diffusers' own FluxPipeline / FluxKontextPipeline (parity on the tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mrgrpo.policies.packed_latents import pack_latents, patch_ids, unpack_latents
from mrgrpo.sft_data.batch import SFTBatch


def test_packing_and_ids_match_the_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 6, 10)
    packed = pack_latents(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 16, 6, 10), rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(packed, 6, 10), x, rtol=0, atol=0)
    torch.testing.assert_close(patch_ids(6, 10), FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32))
    assert (patch_ids(6, 10, index=1)[:, 0] == 1).all()
    with pytest.raises(ValueError, match="even sides"):
        pack_latents(torch.zeros(1, 16, 5, 4))


@pytest.mark.parametrize("side", [64, 512, 1024])
def test_sigmas_are_the_pipelines_dynamic_shift(build, side):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    policy = build("flux-tiny")
    cfg = policy.scheduler.config
    mu = calculate_shift(
        (side // 16) ** 2, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift
    )
    t = np.linspace(1.0, 1 / 6, 6)
    k = np.exp(mu)
    expected = torch.tensor(np.append(k * t / (1 + (k - 1) * t), 0.0), dtype=torch.float32)
    torch.testing.assert_close(policy.sigmas(6, side, side), expected, atol=1e-6, rtol=0)
    # the default size is the policy's resolution (64 for the tiny model), as is the SFT noise law's shift
    if side == 64:
        torch.testing.assert_close(policy.sigmas(6), expected)
        assert policy.timestep_shift == pytest.approx(k)


def _pipeline_images(policy, prompt, noise, steps, image=None):
    h, w = noise.shape[-2] * 8, noise.shape[-1] * 8
    kw = {"image": image, "_auto_resize": False, "max_area": h * w} if image is not None else {}
    out = policy.pipe(
        prompt=[prompt],
        num_inference_steps=steps,
        guidance_scale=policy.guidance_scale,
        height=h,
        width=w,
        latents=pack_latents(noise),
        max_sequence_length=policy.max_sequence_length,
        output_type="pt",
        **kw,
    )
    return out.images.float()


def test_generation_equals_the_flux_pipeline(build, perturb):
    policy = build("flux-tiny")
    perturb(policy, scale=0.02)  # non-trivial weights everywhere the DiT trains
    noise = policy.init_noise(1, 64, 48, torch.Generator().manual_seed(4))
    ours = policy.generate(
        ["a red square"], num_steps=3, cfg_scale=1.0, height=64, width=48, generator=torch.Generator().manual_seed(4)
    )
    ref = _pipeline_images(policy, "a red square", noise, 3)
    mine = torch.from_numpy(np.asarray(ours[0], dtype=np.float32) / 255).permute(2, 0, 1)
    assert (mine - ref[0]).abs().max() <= 1 / 255 + 1e-6
    # the guidance embedding reaches the DiT; the prompt too
    cond = policy.encode(["a red square", "a tree"]).cond
    x, s = policy.init_noise(2, 64, 64, torch.Generator().manual_seed(1)), torch.tensor([0.6, 0.6])
    with torch.no_grad():
        v = policy.velocity(x, s, cond)
        policy.guidance_scale = 1.0
        assert not torch.allclose(policy.velocity(x, s, cond), v)
        assert not torch.allclose(policy.velocity(x[:1], s[:1], cond.select([1])), v[:1])


def test_kontext_generation_equals_the_kontext_pipeline(build, perturb):
    policy = build("flux-kontext-tiny")
    assert policy.supports_editing and policy.guidance_scale == 2.5
    perturb(policy, scale=0.02)
    red = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    noise = policy.init_noise(1, 64, 64, torch.Generator().manual_seed(5))
    ours = policy.generate(
        ["make it blue"],
        [[red]],
        num_steps=2,
        cfg_scale=1.0,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(5),
    )
    ref = _pipeline_images(policy, "make it blue", noise, 2, image=red)
    mine = torch.from_numpy(np.asarray(ours[0], dtype=np.float32) / 255).permute(2, 0, 1)
    assert (mine - ref[0]).abs().max() <= 1 / 255 + 1e-6


def test_kontext_references_matter_and_mixed_batches_equal_per_sample(build, perturb):
    policy = build("flux-kontext-tiny")
    perturb(policy, scale=0.05)
    a, b = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (96, 48), "blue")
    enc = policy.encode(["make it blue", "make it red", "a tree"], [[a], [b], []]).cond
    assert [[tuple(r.shape) for r in rs] for rs in enc.items["ref_latents"]] == [
        [(16, 8, 8)],
        [(16, 4, 10)],
        [],
    ]  # 96x48 -> 80x32 px
    x, s = policy.init_noise(3, 64, 64, torch.Generator().manual_seed(2)), torch.tensor([0.7, 0.5, 0.3])
    with torch.no_grad():
        together = policy.velocity(x, s, enc)
        for i in range(3):
            torch.testing.assert_close(
                together[i : i + 1], policy.velocity(x[i : i + 1], s[i : i + 1], enc.select([i]))
            )
        other = policy.velocity(x[:1], s[:1], policy.encode(["make it blue"], [[b]]).cond)
    assert not torch.allclose(other, together[:1])
    with pytest.raises(ValueError, match="one reference image"):
        policy.encode(["x"], [[a, a]])


def test_text_to_image_flux_refuses_references_and_pretrain(build):
    policy = build("flux-tiny")
    with pytest.raises(ValueError, match="text-to-image only"):
        policy.encode(["x"], [[Image.new("RGB", (64, 64))]])
    with pytest.raises(ValueError, match="no pre-training stage"):
        policy.set_stage("pretrain")


def test_flow_matching_loss_with_references_trains_the_lora(build, latents):
    policy = build("flux-kontext-tiny")
    policy.set_stage("sft", lora={"rank": 4, "alpha": 4, "target_modules": ["to_q", "ff.net.2"]})
    with torch.no_grad():
        img = policy.decode(latents(2))
    batch = SFTBatch(img, ["make it blue", "a tree"], [[Image.new("RGB", (64, 64), "red")], []], kind="edit")
    loss = policy.flow_matching_loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = {n for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("lora_" in n for n in grads) and any("ff.net.2" in n for n in grads)
