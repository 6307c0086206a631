"""Images of the SFT data: the sizing rule, decoding with EXIF orientation, PIL -> tensor.

Every image (targets and editing inputs) is resized to a pixel budget keeping its aspect ratio
(:func:`fit_to_budget`), so batches of one size need no padding.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, ImageOps

#: image entries of a WebDataset sample, in the order they are looked for
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


def fit_to_budget(w: int, h: int, budget: int = 512, multiple: int = 32) -> tuple[int, int]:
    """Target size ``(W, H)`` of a ``w x h`` image for a pixel budget of ``budget x budget``.

    The image is scaled by ``s = budget / sqrt(w * h)`` (aspect ratio kept, ``W * H`` about
    ``budget**2``), then each side is rounded UP to a multiple of ``multiple`` (as DeepGen does):
    ``W = multiple * ceil(w * s / multiple)``, same for ``H``, and at least ``multiple``. Rounding
    up changes each side by less than ``multiple`` pixels, so the aspect ratio is kept to within
    ``multiple / side`` and the pixel count is ``budget**2`` to ``(1 + multiple/W)(1 + multiple/H)``
    times it. A square image gives ``(budget, budget)`` when ``budget`` is a multiple.

    Args:
        w, h: source width and height in pixels (> 0).
        budget: side of the square pixel budget (512 in DeepGen).
        multiple: sides are multiples of this (32: VAE x8, DiT patch 2, ViT merge 2 x 14 -> 28/32).

    Returns:
        ``(W, H)``, both positive multiples of ``multiple``.
    """
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    scale = budget / math.sqrt(float(w) * float(h))

    def side(x: float) -> int:
        # the epsilon absorbs float error: 512.0000000001 must not round up to 544
        return max(multiple, multiple * math.ceil(x * scale / multiple - 1e-6))

    return side(w), side(h)


def resize_to_budget(img: Image.Image, budget: int = 512, multiple: int = 32) -> Image.Image:
    """``img`` as RGB (transparency composited on white), resized to :func:`fit_to_budget` (bicubic)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("RGB")
    size = fit_to_budget(img.width, img.height, budget, multiple)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float32 tensor ``[3, H, W]`` in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def open_image(src: str | bytes, budget: int, multiple: int) -> Image.Image:
    """Decode a file path or encoded bytes fully, fix EXIF orientation and resize to the budget."""
    with Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return resize_to_budget(im, budget, multiple)


def failure_reason(exc: BaseException) -> str:
    """The skip reason of an image that could not be read: ``missing`` or ``corrupt``."""
    return "missing" if isinstance(exc, (FileNotFoundError, NotADirectoryError)) else "corrupt"


__all__ = ["IMAGE_EXTS", "failure_reason", "fit_to_budget", "open_image", "resize_to_budget", "to_tensor"]
