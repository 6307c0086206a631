"""Qwen-Image policy against diffusers' own QwenImagePipeline / QwenImageEditPipeline (parity on the tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mrgrpo.policies.packed_latents import pack_latents
from mrgrpo.policies.qwen_image import EDIT_DROP, T2I_DROP, edit_size


def test_templates_and_drop_match_the_pipelines(build):
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import QwenImageEditPipeline, calculate_dimensions

    policy = build("qwen_image-tiny")
    # the pipelines set their templates in __init__: build them on the tiny parts and read them back
    t2i = QwenImagePipeline(
        scheduler=policy.scheduler,
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        transformer=policy.transformer,
    )
    from mrgrpo.policies import qwen_image

    assert (qwen_image.T2I_TEMPLATE, T2I_DROP) == (t2i.prompt_template_encode, t2i.prompt_template_encode_start_idx)
    edit = build("qwen_image-edit-tiny")
    e = QwenImageEditPipeline(
        scheduler=edit.scheduler,
        vae=edit.vae,
        text_encoder=edit.text_encoder,
        tokenizer=edit.tokenizer,
        processor=edit.processor,
        transformer=edit.transformer,
    )
    assert (qwen_image.EDIT_TEMPLATE, EDIT_DROP) == (e.prompt_template_encode, e.prompt_template_encode_start_idx)
    for w, h in ((640, 480), (239, 239), (1000, 300)):
        assert edit_size(w, h) == calculate_dimensions(1024 * 1024, w / h)[:2]


def test_context_equals_the_pipelines_encode_prompt(build):
    policy = build("qwen_image-tiny")
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline(
        scheduler=policy.scheduler,
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        transformer=policy.transformer,
    )
    prompts = ["a red square", "a much longer prompt about a blue circle on a table"]
    embeds, mask = pipe.encode_prompt(prompts, device="cpu", max_sequence_length=policy.max_sequence_length)
    cond = policy.encode(prompts).cond
    torch.testing.assert_close(cond.tensors["context"], embeds)
    torch.testing.assert_close(cond.tensors["context_mask"].long(), mask.long())
    assert cond.tensors["context_mask"][0].sum() < cond.tensors["context_mask"][1].sum()  # padding is masked


def _pipeline_images(pipe, prompt, noise, steps, **kw):
    h, w = noise.shape[-2] * 8, noise.shape[-1] * 8
    out = pipe(
        prompt=[prompt],
        num_inference_steps=steps,
        true_cfg_scale=1.0,
        height=h,
        width=w,
        latents=pack_latents(noise),
        output_type="pt",
        **kw,
    )
    return out.images.float()


def test_generation_equals_the_qwen_image_pipeline(build, perturb):
    from diffusers import QwenImagePipeline

    policy = build("qwen_image-tiny")
    perturb(policy, scale=0.02)
    pipe = QwenImagePipeline(
        scheduler=policy.scheduler,
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        transformer=policy.transformer,
    )
    noise = policy.init_noise(1, 64, 48, torch.Generator().manual_seed(4))
    ours = policy.generate(
        ["a red square"], num_steps=3, cfg_scale=1.0, height=64, width=48, generator=torch.Generator().manual_seed(4)
    )
    ref = _pipeline_images(pipe, "a red square", noise, 3)
    mine = torch.from_numpy(np.asarray(ours[0], dtype=np.float32) / 255).permute(2, 0, 1)
    assert (mine - ref[0]).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.slow
def test_edit_generation_equals_the_edit_pipeline(build, perturb):
    """The edit pipeline always resizes the reference to ~1024^2 px: the tiny policy does the same here (slow)."""
    from diffusers import QwenImageEditPipeline

    policy = build("qwen_image-edit-tiny", reference_size=1024)
    perturb(policy, scale=0.02)
    pipe = QwenImageEditPipeline(
        scheduler=policy.scheduler,
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        processor=policy.processor,
        transformer=policy.transformer,
    )
    ref_img = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    noise = policy.init_noise(1, 64, 64, torch.Generator().manual_seed(5))
    ours = policy.generate(
        ["make it blue"],
        [[ref_img]],
        num_steps=2,
        cfg_scale=1.0,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(5),
    )
    ref = _pipeline_images(pipe, "make it blue", noise, 2, image=ref_img)
    mine = torch.from_numpy(np.asarray(ours[0], dtype=np.float32) / 255).permute(2, 0, 1)
    assert (mine - ref[0]).abs().max() <= 1 / 255 + 1e-6


def test_edit_references_reach_the_vlm_and_the_dit_and_mixed_batches_equal_per_sample(build, perturb):
    policy = build("qwen_image-edit-tiny")
    perturb(policy, scale=0.05)
    a, b = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (96, 48), "blue")
    enc = policy.encode(["make it blue", "make it blue", "a tree"], [[a], [b], []]).cond
    assert [[tuple(r.shape) for r in rs] for rs in enc.items["ref_latents"]] == [
        [(16, 8, 8)],
        [(16, 4, 12)],
        [],
    ]  # 96x48 -> 96x32 px
    valid = enc.tensors["context_mask"].sum(1)
    # same instruction, different image: the VLM context differs (the image is in the prompt)
    assert not torch.allclose(enc.tensors["context"][0, : valid[0]], enc.tensors["context"][1, : valid[0]])
    x, s = policy.init_noise(3, 64, 64, torch.Generator().manual_seed(2)), torch.tensor([0.7, 0.5, 0.3])
    with torch.no_grad():
        together = policy.velocity(x, s, enc)
        for i in range(3):
            torch.testing.assert_close(
                together[i : i + 1], policy.velocity(x[i : i + 1], s[i : i + 1], enc.select([i])), atol=2e-5, rtol=1e-4
            )
        # the reference latents reach the DiT on their own
        swapped = policy.velocity(x[:1], s[:1], enc.select([0]), ref_latents=[[enc.items["ref_latents"][1][0]]])
    assert not torch.allclose(swapped, together[:1])
    with pytest.raises(ValueError, match="one reference image"):
        policy.encode(["x"], [[a, a]])


def test_vae_round_trip_and_normalisation(build):
    policy = build("qwen_image-tiny")
    img = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        z = policy.encode_images(img)
        raw = policy.vae.encode((img * 2 - 1)[:, :, None]).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(policy.vae.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(policy.vae.config.latents_std).view(1, -1, 1, 1)
    torch.testing.assert_close(z, (raw - mean) / std)
    assert z.shape == (2, 16, 8, 6) and policy.decode(z).shape == (2, 3, 64, 48)
    with pytest.raises(ValueError, match="text-to-image only"):
        policy.encode(["x"], [[Image.new("RGB", (64, 64))]])
