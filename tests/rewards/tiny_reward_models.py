"""Tiny random-init reward models saved to disk in the released layouts (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def tiny_clip_tokenizer():
    """A CLIP BPE tokenizer over the 256 byte symbols (no merges): real tokenisation, tiny vocabulary."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in alphabet:
            vocab[c + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def save_tiny_hf_clip(folder: Path, seed: int = 0, projection_dim: int = 16, image_size: int = 32) -> Path:
    """A random ``CLIPModel`` + ``CLIPProcessor`` saved with ``save_pretrained`` (the hub layout)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    cfg = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=projection_dim,
        logit_scale_init_value=3.0,
    )
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return folder


def reference_clip_embeds(folder: Path, images, texts=None):
    """Unit-norm image (and text) embeddings computed independently with the public transformers API."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder).eval()
    proc = CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        out = model(
            **proc(
                images=[im.convert("RGB") for im in images],
                text=texts or ["x"] * len(images),
                padding=True,
                truncation=True,
                max_length=77,
                return_tensors="pt",
            )
        )
    return out.image_embeds, out.text_embeds, model.logit_scale.exp().item()
