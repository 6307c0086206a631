"""Parameter counts of the REAL-size DeepGen policy, built on the `meta` device (no weights, no download).

    python benchmarks/policy_params.py      # prints JSON

The policy object itself (``DeepGenPolicy`` with real-size Qwen2.5-VL-3B, SCB and SD3.5-M-shaped DiT
configs) is built on ``meta``, and ``set_stage`` is called for each stage to count what trains.
Expected from the paper: SCB trainable in pre-training ~0.43B (connector 394M, projector_1 25M,
projector_3 8.4M, projector_2 4.2M, think tokens 0.26M).
"""

from __future__ import annotations

import json

QWEN25_VL_3B = {
    "text_config": {
        "hidden_size": 2048,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "intermediate_size": 11008,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "max_position_embeddings": 128000,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "num_heads": 16,
        "intermediate_size": 3420,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}
SD35M_DIT = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
SD3_VAE = {
    "latent_channels": 16,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
}


def build_meta_policy(**kwargs):
    """The real-size :class:`DeepGenPolicy` with every tensor on the ``meta`` device (a local toy tokenizer)."""
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mrgrpo.policies.deepgen.policy import DeepGenPolicy
    from mrgrpo.policies.tiny_models import byte_level_tokenizer

    tok = byte_level_tokenizer()
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    cfg = Qwen2_5_VLConfig(
        **QWEN25_VL_3B,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.device("meta"):
        modules = {
            "lmm": Qwen2_5_VLForConditionalGeneration(cfg),
            "tokenizer": tok,
            "transformer": SD3Transformer2DModel(**SD35M_DIT),
            "vae": AutoencoderKL(**SD3_VAE),
        }
        return DeepGenPolicy("meta", "meta", dtype="bfloat16", modules=modules, **kwargs)


def real_size_counts() -> dict[str, dict[str, int]]:
    """``{"modules": {name: params}, "trainable": {stage: params}}`` of the real-size policy."""
    policy = build_meta_policy()

    def n(module) -> int:
        return sum(p.numel() for p in module.parameters())

    modules = {
        "vlm": n(policy.lmm),
        "vlm_vision": n(policy.lmm.model.visual),
        "meta_queries": policy.meta_queries.numel(),
        "projector_1": n(policy.projector_1),
        "connector": n(policy.connector),
        "projector_2": n(policy.projector_2),
        "projector_3": n(policy.projector_3),
        "transformer": n(policy.transformer),
        "vae": n(policy.vae),
    }
    modules["scb_total"] = sum(
        modules[k] for k in ("meta_queries", "projector_1", "connector", "projector_2", "projector_3")
    )
    trainable = {}
    for stage in ("pretrain", "rl", "sft"):  # sft last: it adds the VLM LoRA
        policy.set_stage(stage)
        trainable[stage] = sum(p.numel() for _, p in policy.trainable_parameters())
    trainable["sft_vlm_lora"] = sum(p.numel() for n_, p in policy.lmm.named_parameters() if "lora_" in n_)
    return {"modules": modules, "trainable": trainable}


if __name__ == "__main__":
    counts = real_size_counts()
    print(
        json.dumps(
            {
                group: {k: {"params": v, "millions": round(v / 1e6, 2)} for k, v in d.items()}
                for group, d in counts.items()
            },
            indent=2,
        )
    )
