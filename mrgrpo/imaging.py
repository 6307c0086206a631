"""The one sizing rule for images that enter a model, shared by the RL and the SFT paths.

Every image a model reads (SFT targets, editing references in SFT batches and in RL rollouts) is
resized to a pixel budget of ``budget x budget`` keeping its aspect ratio, each side rounded UP
to a multiple of 32, as the released DeepGen data pipeline does (its ``fix_pixels`` mode):

    s = budget / sqrt(w * h);   W = 32 * ceil(w * s / 32);   H = 32 * ceil(h * s / 32)

computed in double precision in exactly that order, so the sizes are the released ones bit for
bit (including the few cases where float rounding of ``w * s`` lands just above a multiple of
32 and the side goes up by one more step).

The rule is not idempotent: ``fit_to_budget(*fit_to_budget(w, h))`` can differ from
``fit_to_budget(w, h)`` (e.g. 64x194 -> 320x896 -> 320x864 at 512). An image must therefore be
sized ONCE, from its original size. :func:`resize_to_budget` marks the images it produces (in
``Image.info``) and returns an image it already sized for the same budget unchanged, so a
reference sized by the SFT data reader is not sized a second time by the policy.

This module imports only PIL, numpy and torch (no model code): policies and data readers use it.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import torch
from PIL import Image, ImageOps

#: ``Image.info`` key holding ``(budget, multiple)`` on images made by :func:`resize_to_budget`
FITTED_KEY = "mrgrpo.fit_to_budget"


def fit_to_budget(w: int, h: int, budget: int = 512, multiple: int = 32) -> tuple[int, int]:
    """Target size ``(W, H)`` in pixels of a ``w x h`` image for a pixel budget of ``budget x budget``.

    The image is scaled by ``s = budget / sqrt(w * h)`` (aspect ratio kept, ``W * H`` about
    ``budget**2``), then each side is rounded UP to a multiple of ``multiple``:
    ``W = multiple * ceil(w * s / multiple)``, same for ``H`` (so at least ``multiple``). Rounding
    up changes each side by less than ``multiple`` pixels (plus float rounding), so the aspect
    ratio is kept to within about ``multiple / side`` and the pixel count is ``budget**2`` to
    ``(1 + multiple/W)(1 + multiple/H)`` times it. A square image gives ``(budget, budget)``
    when ``budget`` is a multiple of ``multiple``.

    Args:
        w, h: source width and height in pixels (> 0).
        budget: side of the square pixel budget in pixels (512 in DeepGen).
        multiple: sides are multiples of this (32: VAE x8, DiT patch 2, ViT 28/32 resize and 2x2 merge).

    Returns:
        ``(W, H)``, both positive multiples of ``multiple``.

    Raises:
        ValueError: a side is not positive.
    """
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    scale = budget / math.sqrt(float(w) * float(h))
    return math.ceil(w * scale / multiple) * multiple, math.ceil(h * scale / multiple) * multiple


def resize_to_budget(img: Image.Image, budget: int = 512, multiple: int = 32) -> Image.Image:
    """``img`` as RGB (transparency composited on white), resized to :func:`fit_to_budget` (bicubic).

    The result is a new image marked as sized for ``(budget, multiple)``; an image that already
    carries that mark is returned as is (the rule is applied once, to the original size). The
    input image is never modified.
    """
    if img.info.get(FITTED_KEY) == (budget, multiple):
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("RGB")  # a copy even when img is RGB already
    size = fit_to_budget(img.width, img.height, budget, multiple)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    img.info[FITTED_KEY] = (budget, multiple)
    return img


def load_image(src: str | os.PathLike | bytes) -> Image.Image:
    """Decode a file path or encoded bytes fully and apply the EXIF orientation (size as displayed)."""
    with Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src) as im:
        im.load()
        return ImageOps.exif_transpose(im)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float32 tensor ``[3, H, W]`` in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


__all__ = ["FITTED_KEY", "fit_to_budget", "load_image", "resize_to_budget", "to_tensor"]
