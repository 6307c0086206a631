"""Parameter counts of the real-size DeepGen built on the `meta` device (no weights, no download).

    python benchmarks/policy_params.py      # prints JSON
"""

from __future__ import annotations

import json


def real_size_counts() -> dict[str, int]:
    import torch
    from diffusers import SD3Transformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mrgrpo.policies.deepgen.scb import Connector

    hidden = 2048
    with torch.device("meta"):
        vlm = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config={"hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
                         "intermediate_size": 11008, "vocab_size": 151936, "tie_word_embeddings": True,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
            vision_config={"depth": 32, "hidden_size": 1280, "num_heads": 16, "intermediate_size": 3420, "out_hidden_size": 2048,
                           "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                           "fullatt_block_indexes": [7, 15, 23, 31]}))
        connector = Connector(hidden, 32, 11946, 6)
        proj1 = torch.nn.Linear(6 * hidden, hidden)
        proj2 = torch.nn.Linear(hidden, 2048)
        proj3 = torch.nn.Linear(hidden, 4096)
        dit = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
                                    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                    pooled_projection_dim=2048, pos_embed_max_size=384, dual_attention_layers=tuple(range(13)),
                                    qk_norm="rms_norm")

    def n(m):
        return sum(p.numel() for p in m.parameters())

    counts = {"vlm": n(vlm), "vlm_vision": n(vlm.model.visual), "connector": n(connector), "projector_1": n(proj1),
              "projector_2": n(proj2), "projector_3": n(proj3), "meta_queries": 128 * hidden, "transformer": n(dit)}
    counts["scb_pretrain_trainable"] = sum(counts[k] for k in ("connector", "projector_1", "projector_2", "projector_3", "meta_queries"))
    return counts


if __name__ == "__main__":
    print(json.dumps({k: f"{v / 1e6:.1f}M" for k, v in real_size_counts().items()}, indent=2))
