"""Toy-size random-init Qwen-Image pipelines (text-to-image and edit), built from configs, loaded like real ones.

A tiny Qwen2.5-VL (hidden 64, 2 layers, ViT 2 blocks) with a byte-level tokenizer built locally and
Qwen2-VL's image processor, a 2-block ``QwenImageTransformer2DModel``, a tiny 3-D
``AutoencoderKLQwenImage`` (8x down, 16 channels, the released latent mean / std) and Qwen-Image's
scheduler config (dynamic shift 0.5 -> 0.9, terminal 0.02). Nothing is downloaded.

The byte-level tokenizer splits the chat template into many more tokens than Qwen's BPE does, so the
pipeline's template drop (34 / 64 tokens) leaves part of the template in the tiny model's context; the
prompt itself still reaches the DiT (``max_sequence_length`` 512 holds it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mrgrpo.policies.qwen_image import QwenImagePolicy
from mrgrpo.policies.tiny_models import QWEN_SPECIALS, build_once, byte_level_tokenizer, tiny_cache_root

#: Qwen-Image's scheduler config (scheduler/scheduler_config.json of the released pipeline)
QWEN_IMAGE_SCHEDULER = {
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}


def build_tiny_qwen_image(out: Path, seed: int = 0, edit: bool = False) -> None:
    """Write a random-init toy Qwen-Image (``QwenImageEditPipeline`` when ``edit``) pipeline folder to ``out``."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    torch.manual_seed(seed)
    tok = byte_level_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    hidden, heads = 64, 4
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "vocab_size": len(tok),
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "num_heads": 2,
            "intermediate_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    vlm = Qwen2_5_VLForConditionalGeneration(config)
    dit = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=hidden,
        axes_dims_rope=(2, 2, 4),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    parts = {
        "scheduler": FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER),
        "vae": vae,
        "text_encoder": vlm,
        "tokenizer": tok,
        "transformer": dit,
    }
    if edit:
        images = Qwen2VLImageProcessor(
            min_pixels=28 * 28, max_pixels=64 * 64 * 4, patch_size=14, merge_size=2, temporal_patch_size=2
        )
        videos = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
        parts["processor"] = Qwen2VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos)
        QwenImageEditPipeline(**parts).save_pretrained(out)
    else:
        QwenImagePipeline(**parts).save_pretrained(out)


def _tiny(seed: int, cache_dir: str | None, edit: bool, name: str, kwargs: dict[str, Any]) -> QwenImagePolicy:
    path = Path(cache_dir) if cache_dir else tiny_cache_root() / f"{name}-v1-seed{seed}"
    build_once(path, "model_index.json", lambda tmp: build_tiny_qwen_image(tmp, seed, edit))
    options = {"dtype": "float32", "resolution": 64, "reference_size": 64, **kwargs}
    return QwenImagePolicy(
        str(path), policy_name=name, policy_kwargs={"seed": seed, "cache_dir": cache_dir, **kwargs}, **options
    )


def tiny_qwen_image(seed: int = 0, cache_dir: str | None = None, **kwargs: Any) -> QwenImagePolicy:
    """Registry factory of ``qwen_image-tiny``: a toy Qwen-Image, built once, loaded like the real one."""
    return _tiny(seed, cache_dir, False, "qwen_image-tiny", kwargs)


def tiny_qwen_image_edit(seed: int = 0, cache_dir: str | None = None, **kwargs: Any) -> QwenImagePolicy:
    """Registry factory of ``qwen_image-edit-tiny``: a toy Qwen-Image-Edit (editing with one reference image)."""
    return _tiny(seed, cache_dir, True, "qwen_image-edit-tiny", kwargs)
