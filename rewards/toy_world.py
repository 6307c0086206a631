"""Deterministic graders of the toy world (no learned model), as ordinary rewards.

Every grader parses the prompt with :func:`mrgrpo.toy_world.grammar.parse_prompt` and analyses
the image the same way:

1. each pixel is classified to the nearest palette colour, or white (background), or ``other``
   (farther than ``max_dist`` from every palette colour); non-white pixels are foreground;
2. foreground pixels form 4-connected components; components smaller than ``min_area``
   (``size^2 / 256``, 4 px at 32x32) are noise and ignored;
3. a component's colour is the majority palette colour of its pixels; its shape is the one whose
   ideal mask, fitted to the component's bounding box, has the highest IoU with it.

Clauses (``strict=True``: 1 right / 0 wrong; ``strict=False``: a soft score in [0, 1] for RL):

* ``color``: single: the largest component has the colour (soft: its purity in that colour);
  count: every component has it; position: a component of each object's colour exists.
* ``shape``: the component(s) of the clause above have the shape with IoU >= ``min_iou`` (0.6) and
  an aspect ratio <= 1.5 (soft: the IoU with the ideal mask of the asked shape).
* ``shape_margin`` (soft only, for RL): ``(1 + IoU(asked) - max IoU(other shapes)) / 2`` of those
  component(s): above 0.5 exactly when the asked shape fits best. The plain soft IoU rewards a square
  drawn for a circle (IoU pi/4 = 0.79), so a policy can raise it by drawing squares for everything;
  the margin cannot be raised that way. Not a clause of ``toy_geneval``.
* ``count``: the number of components equals the asked count (soft: ``1 - |k - n| / n``, >= 0);
  single prompts count as "one".
* ``position``: the centroid of object A's component is at least ``size / 16`` px left of (above)
  B's (soft: ``sigmoid(gap / 2px)``).
* ``word``: the OCR reward (RapidOCR) on the image upscaled to 128 px (strict: score 1).

``toy_geneval`` is 1 when every clause of the prompt's category is right (GenEval-style), else 0.
A grader that does not apply to a prompt (``position`` on a single-object prompt, any grader on text
outside the grammar) returns ``valid=False``: masked in training, left out of evaluation means.
Ideal shapes are those of :func:`mrgrpo.toy_world.render.shape_mask`: a fragmented blob or a
smear of colour cannot pass the strict shape clause.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from mrgrpo.rewards.base import Reward, RewardOutput
from mrgrpo.toy_world.grammar import CLAUSES, COLORS, SHAPES, Scene, parse_prompt

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _NAMES] + [(255, 255, 255)], dtype=np.float32)
_WHITE = len(_NAMES)
_OTHER = -1
ALL_CLAUSES = ("color", "shape", "count", "position", "word")
SOFT_ONLY = ("shape_margin",)


@dataclass
class Component:
    """A connected foreground region: ``mask [H, W]`` bool, area (px), bbox (x0, y0, x1, y1 inclusive),
    centroid (x, y), majority colour name (None if mostly unclassified), colour fractions."""

    mask: np.ndarray
    area: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    color: str | None
    fractions: dict[str, float]

    def shape_iou(self, shape: str) -> float:
        x0, y0, x1, y1 = self.bbox
        crop = self.mask[y0 : y1 + 1, x0 : x1 + 1]
        ideal = _ideal(shape, x1 - x0 + 1, y1 - y0 + 1)
        union = np.logical_or(crop, ideal).sum()
        return float(np.logical_and(crop, ideal).sum() / union) if union else 0.0

    def best_shape(self) -> tuple[str, float]:
        return max(((s, self.shape_iou(s)) for s in SHAPES), key=lambda t: t[1])

    @property
    def aspect(self) -> float:
        x0, y0, x1, y1 = self.bbox
        w, h = x1 - x0 + 1, y1 - y0 + 1
        return max(w, h) / min(w, h)


@lru_cache(maxsize=4096)
def _ideal_cached(shape: str, w: int, h: int) -> np.ndarray:
    from mrgrpo.toy_world.render import shape_mask

    return shape_mask(shape, w, h)


def _ideal(shape: str, w: int, h: int) -> np.ndarray:
    return _ideal_cached(shape, w, h)


def classify_pixels(rgb: np.ndarray, max_dist: float = 100.0) -> np.ndarray:
    """``[H, W]`` int: palette index of each pixel of ``rgb [H, W, 3]`` (0-255), ``_WHITE`` for background,
    ``_OTHER`` (-1) for pixels farther than ``max_dist`` from every palette colour and white."""
    d = np.linalg.norm(rgb[:, :, None, :].astype(np.float32) - _PALETTE[None, None], axis=-1)
    idx = d.argmin(-1)
    idx[d.min(-1) > max_dist] = _OTHER
    return idx


def components(labels: np.ndarray, min_area: int) -> list[Component]:
    """4-connected components of the foreground (``labels != _WHITE``), largest first, those of at
    least ``min_area`` pixels."""
    fg = labels != _WHITE
    seen = np.zeros_like(fg)
    h, w = fg.shape
    out: list[Component] = []
    for y in range(h):
        for x in range(w):
            if not fg[y, x] or seen[y, x]:
                continue
            pix, queue = [], deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                pix.append((cy, cx))
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < h and 0 <= nx < w and fg[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            if len(pix) < min_area:
                continue
            ys, xs = np.array(pix).T
            mask = np.zeros_like(fg)
            mask[ys, xs] = True
            lab = labels[ys, xs]
            fr = {c: float((lab == i).mean()) for i, c in enumerate(_NAMES)}
            best = max(fr, key=lambda c: fr[c])
            out.append(
                Component(
                    mask,
                    len(pix),
                    (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                    (float(xs.mean()), float(ys.mean())),
                    best if fr[best] >= 0.5 else None,
                    fr,
                )
            )
    out.sort(key=lambda c: -c.area)
    return out


def analyse(image: Any, max_dist: float = 100.0, min_area: int | None = None) -> list[Component]:
    """Components of a PIL image (see the module docstring)."""
    rgb = np.asarray(image.convert("RGB"))
    area = min_area if min_area is not None else max(2, rgb.shape[0] * rgb.shape[1] // 256)
    return components(classify_pixels(rgb, max_dist), area)


def shape_margin(c: Component, shape: str) -> float:
    """``(1 + IoU(shape) - max IoU(other shapes)) / 2`` in [0, 1] (> 0.5 when ``shape`` fits best)."""
    ious = {s: c.shape_iou(s) for s in SHAPES}
    return (1.0 + ious[shape] - max(v for s, v in ious.items() if s != shape)) / 2.0


def _shape_ok(c: Component, shape: str, min_iou: float) -> bool:
    best, iou = c.best_shape()
    return best == shape and iou >= min_iou and c.aspect <= 1.5


def grade(
    image: Any, scene: Scene, *, size: int | None = None, min_iou: float = 0.6, max_dist: float = 100.0
) -> dict[str, tuple[float, bool]]:
    """``{clause: (soft score in [0, 1], strict pass)}`` for the object clauses of ``scene``
    (``color``, ``shape``, ``count`` (single and count), ``position``); the word clause is OCR's."""
    comps = analyse(image, max_dist)
    side = size or image.size[0]
    out: dict[str, tuple[float, bool]] = {}
    if scene.category in ("single", "count"):
        o, n = scene.objects[0], scene.count
        k = len(comps)
        out["count"] = (max(0.0, 1.0 - abs(k - n) / n), k == n)
        if scene.category == "single":
            chosen = comps[:1]
        else:
            chosen = comps[:n]
        if not chosen:
            out["color"] = out["shape"] = out["shape_margin"] = (0.0, False)
            return out
        color_soft = float(np.mean([c.fractions[o.color] for c in chosen]))
        color_ok = all(c.color == o.color for c in (comps[:1] if scene.category == "single" else comps))
        shape_soft = float(np.mean([c.shape_iou(o.shape) for c in chosen]))
        shape_ok = all(_shape_ok(c, o.shape, min_iou) for c in (comps[:1] if scene.category == "single" else comps))
        out["color"] = (color_soft, color_ok)
        out["shape"] = (shape_soft, shape_ok)
        out["shape_margin"] = (float(np.mean([shape_margin(c, o.shape) for c in chosen])), shape_ok)
        return out
    if scene.category == "position":
        found = []
        for o in scene.objects:
            mine = [c for c in comps if c.color == o.color]
            found.append(mine[0] if mine else None)
        color_soft = float(
            np.mean(
                [
                    max((c.fractions[o.color] for c in comps), default=0.0) if f is None else 1.0
                    for o, f in zip(scene.objects, found)
                ]
            )
        )
        out["color"] = (color_soft, all(f is not None for f in found))
        out["shape"] = (
            float(np.mean([f.shape_iou(o.shape) if f is not None else 0.0 for o, f in zip(scene.objects, found)])),
            all(f is not None and _shape_ok(f, o.shape, min_iou) for o, f in zip(scene.objects, found)),
        )
        margins = [shape_margin(f, o.shape) if f is not None else 0.0 for o, f in zip(scene.objects, found)]
        out["shape_margin"] = (float(np.mean(margins)), out["shape"][1])
        a, b = found
        if a is None or b is None:
            out["position"] = (0.0, False)
        else:
            axis = 0 if scene.relation == "left of" else 1
            gap = b.centroid[axis] - a.centroid[axis]
            out["position"] = (float(1.0 / (1.0 + np.exp(-gap / 2.0))), gap >= side / 16)
        return out
    return out


class ToyGrader(Reward):
    """One clause of the toy world's grader (see the module docstring) as a reward.

    Args:
        clause: ``color``, ``shape``, ``count``, ``position``, ``word``, ``shape_margin`` (soft only), or
            ``all`` (GenEval-style: 1 when every clause of the prompt's category is right).
        strict: 0/1 pass-fail scores (evaluation) instead of soft scores in [0, 1] (RL).
        min_iou: IoU with the ideal shape mask the strict shape clause needs.
        max_dist: RGB distance (0-255) beyond which a pixel matches no palette colour.
    """

    def __init__(self, clause: str = "all", strict: bool = False, min_iou: float = 0.6, max_dist: float = 100.0):
        if clause not in ALL_CLAUSES + SOFT_ONLY + ("all",):
            raise ValueError(f"toy grader: clause must be one of {ALL_CLAUSES + SOFT_ONLY + ('all',)}, got {clause!r}")
        if strict and clause in SOFT_ONLY:
            raise ValueError(f"toy grader: {clause} is a soft score only; use toy_shape_strict for pass/fail")
        self.clause, self.strict, self.min_iou, self.max_dist = clause, bool(strict), float(min_iou), float(max_dist)
        self.name = "toy_geneval" if clause == "all" else f"toy_{clause}" + ("_strict" if strict else "")
        self._ocr: Any = None  # the OCR reward, built on the first word clause

    def _word_scores(self, images: list[Any], words: list[str]) -> list[float]:
        from PIL import Image

        from mrgrpo.rewards.ocr import OCRReward

        if self._ocr is None:
            self._ocr = OCRReward()
        big = [im.convert("RGB").resize((128, 128), Image.NEAREST) for im in images]
        out = self._ocr(big, [f'"{w}"' for w in words])
        return out.scores.tolist()

    def score(self, images, prompts, metadata):
        scenes = [parse_prompt(p) for p in prompts]
        scores, valid, clauses = [0.0] * len(images), [False] * len(images), [None] * len(images)
        word_idx = [
            i for i, s in enumerate(scenes) if s is not None and s.category == "word" and self.clause in ("word", "all")
        ]
        words = self._word_scores([images[i] for i in word_idx], [scenes[i].word for i in word_idx]) if word_idx else []
        word_score = dict(zip(word_idx, words))
        for i, (im, scene) in enumerate(zip(images, scenes)):
            if scene is None:
                continue
            if scene.category == "word":
                if i in word_score:
                    w = word_score[i]
                    ok = w >= 1.0
                    scores[i], valid[i] = (float(ok) if self.strict or self.clause == "all" else w), True
                    clauses[i] = {"word": ok}
                continue
            graded = grade(im, scene, min_iou=self.min_iou, max_dist=self.max_dist)
            clauses[i] = {k: v[1] for k, v in graded.items() if k in CLAUSES[scene.category]}
            if self.clause == "all":
                scores[i], valid[i] = float(all(clauses[i].values())), True
            elif self.clause in graded:
                soft, ok = graded[self.clause]
                scores[i], valid[i] = (float(ok) if self.strict else soft), True
        return RewardOutput(torch.tensor(scores), torch.tensor(valid), {"clauses": clauses})


def _factory(clause: str, strict: bool):
    def build(**kwargs: Any) -> ToyGrader:
        return ToyGrader(clause, strict=strict, **kwargs)

    build.__name__ = f"toy_{clause}{'_strict' if strict else ''}"
    build._mrgrpo_factory = True  # type: ignore[attr-defined]  # marks a factory for build_reward
    return build


toy_color = _factory("color", False)
toy_shape = _factory("shape", False)
toy_count = _factory("count", False)
toy_position = _factory("position", False)
toy_word = _factory("word", False)
toy_shape_margin = _factory("shape_margin", False)
toy_color_strict = _factory("color", True)
toy_shape_strict = _factory("shape", True)
toy_count_strict = _factory("count", True)
toy_position_strict = _factory("position", True)
toy_word_strict = _factory("word", True)
toy_geneval = _factory("all", True)
