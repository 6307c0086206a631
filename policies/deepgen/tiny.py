"""A toy-size DeepGen built from configs (no download), saved like the real model set.

``build_tiny_deepgen(out_dir)`` writes ``vlm/`` (Qwen2.5-VL + a byte-level tokenizer built with
``tokenizers`` + the Qwen image processor), ``transformer/`` ``vae/`` ``scheduler/`` (diffusers
pipeline layout) and ``deepgen_init.safetensors`` (think tokens, projectors, connector in the
released key layout). :func:`tiny_deepgen` loads it back through the same code as the real weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mrgrpo.policies.tiny_models import QWEN_SPECIALS, byte_level_tokenizer, publish_dir, tiny_cache_root, tiny_vae

SPECIALS = QWEN_SPECIALS

TINY = {
    "hidden": 64,
    "layers": 12,
    "heads": 4,
    "kv_heads": 2,
    "intermediate": 128,
    "vision_depth": 2,
    "vision_hidden": 32,
    "vision_heads": 2,
    "num_queries": 8,
    "scb_layers": [11, 9, 7, 5, 3, 1],
    "connector_layers": 2,
    "connector_heads": 4,
    "connector_mlp": 128,
    "dit_layers": 2,
    "dit_heads": 2,
    "dit_head_dim": 8,
    "joint_dim": 32,
    "pooled_dim": 32,
    "pos_embed_max_size": 16,
}


def build_tiny_deepgen(out_dir: str | os.PathLike, seed: int = 0, spec: dict | None = None) -> Path:
    """Write a random-init toy DeepGen to ``out_dir`` (atomically) and return it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
    )

    s = {**TINY, **(spec or {})}
    out = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent if out.parent.exists() else None))
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    head_dim = s["hidden"] // s["heads"]
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": s["hidden"],
            "num_hidden_layers": s["layers"],
            "num_attention_heads": s["heads"],
            "num_key_value_heads": s["kv_heads"],
            "intermediate_size": s["intermediate"],
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e4,
                "mrope_section": [
                    head_dim // 8,
                    (head_dim // 2 - head_dim // 8) // 2,
                    head_dim // 2 - head_dim // 8 - (head_dim // 2 - head_dim // 8) // 2,
                ],
            },
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": s["vision_depth"],
            "hidden_size": s["vision_hidden"],
            "num_heads": s["vision_heads"],
            "intermediate_size": 2 * s["vision_hidden"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "out_hidden_size": s["hidden"],
            "fullatt_block_indexes": [s["vision_depth"] - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(tmp / "vlm")
    tokenizer.save_pretrained(tmp / "vlm")
    Qwen2VLImageProcessor(
        min_pixels=28 * 28, max_pixels=1024 * 1024, patch_size=14, merge_size=2, temporal_patch_size=2
    ).save_pretrained(tmp / "vlm")
    SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=s["dit_layers"],
        attention_head_dim=s["dit_head_dim"],
        num_attention_heads=s["dit_heads"],
        joint_attention_dim=s["joint_dim"],
        caption_projection_dim=s["dit_heads"] * s["dit_head_dim"],
        pooled_projection_dim=s["pooled_dim"],
        pos_embed_max_size=s["pos_embed_max_size"],
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    ).save_pretrained(tmp / "transformer")
    tiny_vae().save_pretrained(tmp / "vae")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(tmp / "scheduler")
    # SCB initial weights, written and read in the released checkpoint layout
    from mrgrpo.policies.deepgen.policy import DeepGenPolicy

    policy = DeepGenPolicy(str(tmp / "vlm"), str(tmp), dtype="float32", **_scb_kwargs(s), init_seed=seed)
    from safetensors.torch import save_file

    scb = {
        k: v.contiguous()
        for k, v in policy.state_dict().items()
        if k.split(".")[0] in ("meta_queries", "projector_1", "projector_2", "projector_3", "connector")
    }
    save_file(scb, str(tmp / "deepgen_init.safetensors"))
    (tmp / "tiny_spec.json").write_text(json.dumps({"seed": seed, **s}, indent=2))
    publish_dir(tmp, out)
    return out


def _scb_kwargs(s: dict) -> dict[str, Any]:
    return {
        "scb_layers": s["scb_layers"],
        "num_queries": s["num_queries"],
        "connector_layers": s["connector_layers"],
        "connector_heads": s["connector_heads"],
        "connector_mlp": s["connector_mlp"],
    }


def tiny_cache_dir(seed: int, spec: dict | None) -> Path:
    key = hashlib.sha1(json.dumps({"seed": seed, **TINY, **(spec or {}), "v": 2}, sort_keys=True).encode()).hexdigest()[
        :12
    ]
    return tiny_cache_root() / f"deepgen-{key}"


def tiny_deepgen(seed: int = 0, cache_dir: str | None = None, spec: dict | None = None, **kwargs: Any):
    """Registry factory of ``deepgen-tiny``: build the toy model files once, then load them like real weights.

    Args:
        seed: initialisation seed of the toy weights.
        cache_dir: where the files go (default ``$MRGRPO_CACHE/tiny/deepgen-<hash>``, else ``~/.cache/mrgrpo/...``);
            written atomically, reused when present.
        spec: overrides of :data:`TINY` (``hidden``, ``layers``, ``scb_layers``, ...); TINY keys may also be given
            as keyword arguments (``hidden=32``).
        kwargs: :class:`DeepGenPolicy` options (``mask_padding``, ``checkpoint``, ``pixel_budget``, ...).
    """
    from mrgrpo.policies.deepgen.policy import DeepGenPolicy

    shape = {k: kwargs.pop(k) for k in list(kwargs) if k in TINY}
    if shape:
        spec = {**(spec or {}), **shape}
    path = Path(cache_dir) if cache_dir else tiny_cache_dir(seed, spec)
    if not (path / "deepgen_init.safetensors").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_deepgen(path, seed=seed, spec=spec)
    s = {**TINY, **(spec or {})}
    options = {"dtype": "float32", "pixel_budget": 64, **_scb_kwargs(s), **kwargs}
    checkpoint = options.pop("checkpoint", None)
    policy = DeepGenPolicy(
        str(path / "vlm"),
        str(path),
        checkpoint=str(path / "deepgen_init.safetensors"),
        policy_name="deepgen-tiny",
        policy_kwargs={"seed": seed, "cache_dir": cache_dir, "spec": spec, **kwargs},
        **options,
    )
    if checkpoint:
        policy.load(checkpoint)
    return policy


def _tiny_deepgen_kwargs() -> set[str]:
    """What ``tiny_deepgen(**kwargs)`` accepts: :data:`TINY` keys and :class:`DeepGenPolicy` options."""
    import inspect

    from mrgrpo.policies.deepgen.policy import DeepGenPolicy

    return set(TINY) | (set(inspect.signature(DeepGenPolicy).parameters) - {"policy_name", "policy_kwargs", "modules"})


# read by mrgrpo.preflight to check policy.kwargs before building (mypy does not model attributes set on functions)
tiny_deepgen.mrgrpo_kwargs = _tiny_deepgen_kwargs  # type: ignore[attr-defined]
