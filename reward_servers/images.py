"""Decoding the images of a score request: base64 -> PNG/JPEG header check -> RGB.

Two passes, so the pixel limits hold before anything big is allocated:

1. :func:`open_images` base64-decodes every image and reads only its header (format, size):
   per-image and per-request pixel limits are checked here, from the headers.
2. :func:`decode_opened` decodes the pixels and converts every mode PIL can open from a PNG or
   JPEG to 8-bit RGB (:func:`to_rgb`), freeing each compressed buffer as it goes.

Errors are :class:`ImageError` with an HTTP status (400 malformed, 413 too large, 415 a format
or mode we do not take) and a one-line message naming the image.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

#: formats accepted; MPO is the multi-picture JPEG many phones write (its first frame is the photo)
FORMATS = ("PNG", "JPEG", "MPO")
#: background that transparent pixels are composited over (what a viewer on a white page shows)
BACKGROUND = (255, 255, 255)
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(ValueError):
    """A request image we cannot take: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class OpenedImage:
    """One image after pass 1: its compressed bytes, format and size in pixels (width x height)."""

    raw: bytes | None
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _open_header(raw: bytes, index: int, max_pixels: int) -> OpenedImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: our own limit decides
            im = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise ImageError(413, f"images[{index}] is too large to decode") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ImageError(400, f"images[{index}] is not a PNG or JPEG image (or it is truncated)") from None
    with im:
        fmt, (w, h) = im.format, im.size
    if fmt not in FORMATS:
        raise ImageError(415, f"images[{index}] is {fmt}; send PNG or JPEG")
    if w < 1 or h < 1:
        raise ImageError(400, f"images[{index}] has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(413, f"images[{index}] has {w}x{h} pixels, over the limit of {max_pixels} per image")
    return OpenedImage(raw, fmt, w, h)


def open_images(texts: list[Any], max_pixels: int, max_request_pixels: int) -> list[OpenedImage]:
    """Pass 1: base64-decode and read the header of every image; nothing is decoded yet.

    Raises :class:`ImageError` for bad base64 (400), a non-image (400), a format other than
    PNG/JPEG (415), an image over ``max_pixels`` or a request over ``max_request_pixels`` (413).
    """
    opened, total = [], 0
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ImageError(400, f"images[{i}] must be a base64 string")
        if text.startswith("data:"):
            text = text.split(",", 1)[-1]
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(400, f"images[{i}] is not valid base64") from None
        im = _open_header(raw, i, max_pixels)
        total += im.pixels
        if total > max_request_pixels:
            raise ImageError(
                413,
                f"the images of this request have over {max_request_pixels} pixels in all "
                f"(the limit per request, reached at images[{i}]); send fewer or smaller images "
                "per request",
            )
        opened.append(im)
    return opened


def _composite(im: Any) -> Any:
    from PIL import Image

    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(im: Any) -> Any:
    """8-bit RGB of a PIL image of any mode a PNG or JPEG can decode to.

    * 16-bit greyscale (``I;16*``, and ``I`` as PIL reads 16-bit PNGs) is scaled by 255/65535
      (a plain ``convert`` clips it: mid-grey 32896 would become white).
    * Transparency (an alpha channel, or a ``transparency`` key for ``P``/``L``/``RGB``) is
      composited over white.
    * ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr`` are converted by PIL.
    * Anything else (``F``, ``LAB``, ``HSV``, ...) raises :class:`ImageError` (415).
    """
    from PIL import Image

    mode = im.mode
    if mode in _SIXTEEN_BIT:
        arr = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)  # 65535 * 255 + 32767 fits in 32 bits
        arr *= 255
        arr += 32767
        arr //= 65535
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        return _composite(im)
    if mode == "RGB":
        return im
    if mode in _PLAIN_MODES:
        return im.convert("RGB")
    raise ImageError(415, f"image mode {mode!r} is not supported; send 8-bit or 16-bit PNG, or JPEG")


def decode_one(item: OpenedImage, index: int) -> Any:
    """Pass 2 for one image: decode, apply the EXIF orientation of JPEGs, convert to RGB."""
    from PIL import Image, ImageOps

    if item.raw is None:
        raise ValueError(f"images[{index}] was already decoded: decode_opened drops its bytes, decode each image once")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(item.raw))
            im.load()
        if item.format in ("JPEG", "MPO"):
            im = ImageOps.exif_transpose(im)
        return to_rgb(im)
    except ImageError as exc:
        raise ImageError(exc.status, f"images[{index}]: {exc}") from None
    except Image.DecompressionBombError:
        raise ImageError(413, f"images[{index}] is too large to decode") from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, KeyError, IndexError, struct.error):
        raise ImageError(400, f"images[{index}] is not a PNG or JPEG image (or it is truncated)") from None


def decode_opened(opened: list[OpenedImage]) -> list[Any]:
    """Pass 2: RGB PIL images, one per opened image; each compressed buffer is dropped once decoded."""
    out = []
    for i, item in enumerate(opened):
        out.append(decode_one(item, i))
        item.raw = None
    return out
