"""Shared pieces of the transformers-CLIP based rewards (PickScore, aesthetic, image similarity, GenEval colour).

Loads a ``transformers.CLIPModel`` and its processor from a hub id or a local folder, resolves the
``device`` / ``dtype`` keyword arguments every model reward takes, and embeds images and texts in
batches. Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, who: str) -> torch.dtype:
    """A torch dtype from ``"float32" | "float16" | "bfloat16"`` (or a dtype).

    Default: float32 on CPU, float16 on CUDA.
    """
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in _DTYPES:
        raise ValueError(f"{who}: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[str(dtype)]


def rgb(images: Sequence[Any]) -> list[Any]:
    """PIL images converted to RGB (palette / alpha / grey inputs are common in prompts sets)."""
    return [im.convert("RGB") for im in images]


def load_clip(model: str, processor: str | None, device: torch.device, dtype: torch.dtype, who: str) -> tuple[Any, Any]:
    """``(CLIPModel in eval mode without grads, processor)`` from a hub id or local folder.

    ``processor`` defaults to ``model``. A missing or wrong path gives one clear error naming the argument.
    """
    from transformers import AutoProcessor, CLIPModel

    try:
        net = CLIPModel.from_pretrained(model, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"{who}: cannot load the CLIP model {model!r} ({exc}). Fix: pass `model` as a hub id or a "
            "local folder saved with save_pretrained (offline: download it first)."
        ) from exc
    try:
        proc = AutoProcessor.from_pretrained(processor or model)
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"{who}: cannot load the CLIP processor {processor or model!r} ({exc}). Fix: pass "
            "`processor` as a hub id or a local folder with the tokenizer and image processor."
        ) from exc
    return net.to(device).eval().requires_grad_(False), proc


@torch.no_grad()
def image_embeds(
    model: Any, processor: Any, images: Sequence[Any], batch_size: int, normalize: bool = True
) -> torch.Tensor:
    """Projected CLIP image embeddings ``[N, D]`` float32 on the model's device (unit norm when ``normalize``)."""
    device, dtype = model.device, model.dtype
    parts = []
    for i in range(0, len(images), batch_size):
        pix = processor(images=rgb(images[i : i + batch_size]), return_tensors="pt")["pixel_values"]
        pooled = model.vision_model(pixel_values=pix.to(device, dtype)).pooler_output
        parts.append(model.visual_projection(pooled).float())
    out = torch.cat(parts) if parts else torch.zeros(0, model.config.projection_dim, device=device)
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


@torch.no_grad()
def text_embeds(
    model: Any, processor: Any, texts: Sequence[str], batch_size: int, max_length: int = 77
) -> torch.Tensor:
    """Unit-norm projected CLIP text embeddings ``[N, D]`` float32 (texts truncated to ``max_length`` tokens)."""
    device = model.device
    parts = []
    for i in range(0, len(texts), batch_size):
        tok = processor(
            text=list(texts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        pooled = model.text_model(
            input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
        ).pooler_output
        parts.append(model.text_projection(pooled).float())
    out = torch.cat(parts) if parts else torch.zeros(0, model.config.projection_dim, device=device)
    return torch.nn.functional.normalize(out, dim=-1)
