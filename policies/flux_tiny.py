"""Toy-size random-init FLUX.1 pipelines (dev-shaped and Kontext-shaped), built from configs, loaded like real ones.

Tiny CLIP text model (pooled 32) + tiny T5 encoder (d_model 32) with a byte-level tokenizer built
locally, a 1 + 1 block ``FluxTransformer2DModel`` with the guidance embedding, a tiny 16-channel VAE
with FLUX's scaling / shift factors, and FLUX.1-dev's scheduler config (dynamic shift 0.5 -> 1.15).
Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mrgrpo.policies.flux import FluxPolicy
from mrgrpo.policies.tiny_models import build_once, byte_level_tokenizer, tiny_cache_root, tiny_vae

#: FLUX.1-dev's scheduler config (scheduler/scheduler_config.json of the released pipeline)
FLUX_SCHEDULER = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
#: FLUX's VAE latent normalisation
FLUX_VAE_SCALING, FLUX_VAE_SHIFT = 0.3611, 0.1159


def build_tiny_flux(out: Path, seed: int = 0, kontext: bool = False) -> None:
    """Write a random-init toy FLUX (``FluxKontextPipeline`` when ``kontext``) pipeline folder to ``out``."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip_tok = byte_level_tokenizer(model_max_length=77)
    t5_tok = byte_level_tokenizer(model_max_length=512)
    pad = clip_tok.pad_token_id
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            eos_token_id=pad,
            pad_token_id=pad,
        )
    )
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2))
    dit = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    vae = tiny_vae(FLUX_VAE_SCALING, FLUX_VAE_SHIFT)
    cls = FluxKontextPipeline if kontext else FluxPipeline
    extra = {"image_encoder": None, "feature_extractor": None}
    pipe = cls(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=dit,
        **extra,
    )
    pipe.save_pretrained(out)


def _tiny(seed: int, cache_dir: str | None, kontext: bool, name: str, kwargs: dict[str, Any]) -> FluxPolicy:
    path = Path(cache_dir) if cache_dir else tiny_cache_root() / f"{name}-v1-seed{seed}"
    build_once(path, "model_index.json", lambda tmp: build_tiny_flux(tmp, seed, kontext))
    options = {"dtype": "float32", "max_sequence_length": 32, "resolution": 64, **kwargs}
    if kontext:
        options.setdefault("reference_size", 64)
    return FluxPolicy(
        str(path), policy_name=name, policy_kwargs={"seed": seed, "cache_dir": cache_dir, **kwargs}, **options
    )


def tiny_flux(seed: int = 0, cache_dir: str | None = None, **kwargs: Any) -> FluxPolicy:
    """Registry factory of ``flux-tiny``: a toy FLUX.1-dev, built once into the tiny cache, loaded like the real one."""
    return _tiny(seed, cache_dir, False, "flux-tiny", kwargs)


def tiny_flux_kontext(seed: int = 0, cache_dir: str | None = None, **kwargs: Any) -> FluxPolicy:
    """Registry factory of ``flux-kontext-tiny``: a toy FLUX.1-Kontext (editing with one reference image)."""
    return _tiny(seed, cache_dir, True, "flux-kontext-tiny", kwargs)
