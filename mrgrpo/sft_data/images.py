"""Images of the SFT data: decoding (EXIF orientation applied) and resizing to the pixel budget.

The sizing rule itself (:func:`fit_to_budget`, :func:`resize_to_budget`) lives in
:mod:`mrgrpo.imaging`, shared with the policies, so an image is sized alike in SFT batches and in
RL rollouts; it is re-exported here as part of the SFT data API.
"""

from __future__ import annotations

import os

from PIL import Image

from mrgrpo.imaging import fit_to_budget, load_image, resize_to_budget, to_tensor

#: image entries of a WebDataset sample, in the order they are looked for
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


def open_image(src: str | os.PathLike | bytes, budget: int, multiple: int) -> Image.Image:
    """Decode a file path or encoded bytes, apply the EXIF orientation, resize to the budget (RGB)."""
    return resize_to_budget(load_image(src), budget, multiple)


def failure_reason(exc: BaseException) -> str:
    """The skip reason of an image that could not be read: ``missing`` or ``corrupt``."""
    return "missing" if isinstance(exc, (FileNotFoundError, NotADirectoryError)) else "corrupt"


__all__ = ["IMAGE_EXTS", "failure_reason", "fit_to_budget", "open_image", "resize_to_budget", "to_tensor"]
