"""Image-image CLIP similarity for editing: how much of the source image survives the edit.

``r = cos(E_img(source), E_img(result))`` in [-1, 1] with a transformers CLIP model (default
``openai/clip-vit-large-patch14``, as Flow-GRPO's editing consistency reward). The source image is
read from ``metadata[i]``: ``source_image`` (a PIL image or a path), else the first of ``images``
(the editing inputs: paths or PIL images), else ``image``. An image without a source is invalid.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from mrgrpo.rewards import hf_clip
from mrgrpo.rewards.base import Reward, RewardOutput

SOURCE_KEYS = ("source_image", "images", "image")


def source_of(meta: dict[str, Any]) -> Any | None:
    """The source image of one record (PIL image or path), or None when the record has none."""
    for key in SOURCE_KEYS:
        value = (meta or {}).get(key)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return value
    return None


def open_image(value: Any) -> Any:
    """A PIL image from a PIL image or a path (raises FileNotFoundError / PIL errors)."""
    if hasattr(value, "convert"):
        return value
    from PIL import Image

    with Image.open(value) as im:
        return im.convert("RGB")


class ImageSimilarity(Reward):
    """CLIP cosine between each result and its source image.

    Args:
        model, processor: CLIP model and processor (hub id or local folder; default ``openai/clip-vit-large-patch14``).
        device, dtype: torch device and ``float32 | float16 | bfloat16``.
        batch_size: images per forward pass.
    """

    name = "image_similarity"

    def __init__(
        self,
        model: str = "openai/clip-vit-large-patch14",
        processor: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 32,
    ):
        if batch_size < 1:
            raise ValueError(f"image_similarity: batch_size must be >= 1, got {batch_size}")
        self.device = hf_clip.resolve_device(device)
        self.dtype = hf_clip.resolve_dtype(dtype, self.device, self.name)
        self.model, self.processor = hf_clip.load_clip(model, processor, self.device, self.dtype, self.name)
        self.batch_size = batch_size
        self.lock = threading.Lock()

    def score(self, images, prompts, metadata):
        sources, keep, errors = [], [], []
        for i, meta in enumerate(metadata):
            src = source_of(meta)
            if src is None:
                continue
            try:
                sources.append(open_image(src))
                keep.append(i)
            except (OSError, ValueError) as exc:
                errors.append(f"image {i}: cannot open source {src!r}: {exc}"[:300])
        scores = torch.zeros(len(images))
        valid = torch.zeros(len(images), dtype=torch.bool)
        if keep:
            with self.lock:
                a = hf_clip.image_embeds(self.model, self.processor, [images[i] for i in keep], self.batch_size)
                b = hf_clip.image_embeds(self.model, self.processor, sources, self.batch_size)
            scores[keep] = (a * b).sum(-1).cpu()
            valid[keep] = True
        missing = len(images) - len(keep) - len(errors)
        return RewardOutput(scores, valid, {"no_source": missing, "failures": len(errors), "errors": errors[:20]})
