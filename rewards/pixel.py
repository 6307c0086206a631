"""Cheap deterministic rewards for smoke runs and tests (no model, no network).

They are smooth functions of the pixels, so a tiny random-init policy can show learning on CPU.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import torch

from mrgrpo.rewards.base import Reward, RewardOutput

#: colour words recognised in prompts (RGB in [0, 1])
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 0.6, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "orange": (1.0, 0.55, 0.0),
    "purple": (0.5, 0.0, 0.5),
    "pink": (1.0, 0.75, 0.8),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
    "grey": (0.5, 0.5, 0.5),
    "brown": (0.55, 0.27, 0.07),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
_COLOR_RE = re.compile(r"\b(" + "|".join(COLORS) + r")\b", re.IGNORECASE)


def _rgb(image: Any) -> np.ndarray:
    """``[H, W, 3]`` float32 in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


class Brightness(Reward):
    """Mean luminance (Rec. 601) in [0, 1]."""

    name = "brightness"

    def score(self, images, prompts, metadata):
        lum = [float((_rgb(im) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean()) for im in images]
        return RewardOutput(torch.tensor(lum))


class ColorMatch(Reward):
    """``1 - |mean colour - named colour| / sqrt(3)`` for the first colour word of the prompt.

    A prompt naming no known colour is invalid (masked), not 0. ``metadata[i]["color"]`` (a colour
    word, any case) overrides; a ``color`` that is not a known colour word (another word, a list, a
    number) makes that image invalid, with the reason in ``details["invalid_reason"]``.
    """

    name = "color_match"

    def score(self, images, prompts, metadata):
        scores, valid, targets, reasons = [], [], [], []
        for im, prompt, meta in zip(images, prompts, metadata):
            word, reason = _target_color(prompt, meta)
            if word is None:
                scores.append(0.0)
                valid.append(False)
                targets.append(None)
                reasons.append(reason)
                continue
            mean = _rgb(im).reshape(-1, 3).mean(axis=0)
            dist = float(np.linalg.norm(mean - np.array(COLORS[word], dtype=np.float32)))
            scores.append(1.0 - dist / np.sqrt(3.0))
            valid.append(True)
            targets.append(word)
            reasons.append(None)
        return RewardOutput(torch.tensor(scores), torch.tensor(valid), {"colors": targets, "invalid_reason": reasons})


def _target_color(prompt: Any, meta: Any) -> tuple[str | None, str | None]:
    """(colour word, None) or (None, why there is none) for one image."""
    word = meta.get("color") if isinstance(meta, dict) else None
    if word is not None:
        if isinstance(word, str) and word.strip().lower() in COLORS:
            return word.strip().lower(), None
        return None, f"metadata color {str(word)[:40]!r} is not one of the known colour words"
    m = _COLOR_RE.search(prompt) if isinstance(prompt, str) else None
    return (m.group(1).lower(), None) if m else (None, "no colour word in the prompt")


class JPEGCompressibility(Reward):
    """``-size / budget`` of the image saved as JPEG (quality 95): simpler images score higher.

    ``budget_kb`` scales the score (default 100 kB -> a 100 kB JPEG scores -1).
    """

    name = "jpeg_compressibility"

    def __init__(self, quality: int = 95, budget_kb: float = 100.0):
        if not 1 <= quality <= 100:
            raise ValueError(f"jpeg_compressibility: quality must be in 1..100, got {quality}")
        self.quality = quality
        self.budget = budget_kb * 1000.0

    def score(self, images, prompts, metadata):
        sizes = []
        for im in images:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=self.quality)
            sizes.append(buf.tell())
        return RewardOutput(torch.tensor([-s / self.budget for s in sizes]), details={"jpeg_bytes": sizes})
