"""Ideal images of toy-world scenes, and the ideal shape masks the graders compare against.

Shapes are drawn without anti-aliasing on a white background, so every object pixel has exactly
its palette colour. A shape fills its square box: ``circle`` the inscribed disc, ``square`` the box,
``triangle`` the isosceles triangle with its base on the box's bottom edge.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from mrgrpo.toy_world.grammar import COLORS, Scene

BACKGROUND = (255, 255, 255)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    """Draw ``shape`` filling ``box = (x0, y0, x1, y1)`` (inclusive pixel corners)."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """``[height, width]`` bool: ``shape`` drawn to fill a ``width x height`` box (the graders' ideal)."""
    im = Image.new("L", (width, height), 0)
    draw_shape(ImageDraw.Draw(im), shape, (0, 0, width - 1, height - 1), 255)
    return np.asarray(im) > 0


def _boxes(
    rng: random.Random, n: int, size: int, lo: int, hi: int, gap: int = 2, tries: int = 200
) -> list[tuple[int, int, int, int]]:
    """``n`` non-overlapping square boxes (side in [lo, hi]) at least ``gap`` px apart."""
    for _ in range(tries):
        boxes = []
        for _ in range(n):
            s = rng.randint(lo, hi)
            x, y = rng.randint(1, size - s - 1), rng.randint(1, size - s - 1)
            boxes.append((x, y, x + s - 1, y + s - 1))
        if all(
            a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]
            for i, a in enumerate(boxes)
            for b in boxes[i + 1 :]
        ):
            return boxes
    raise RuntimeError(f"could not place {n} boxes of {lo}-{hi} px in {size} px")


def _slot_boxes(rng: random.Random, n: int, size: int) -> list[tuple[int, int, int, int]]:
    """``n`` (1-3) square boxes on the world's layout, each jittered by up to ``size / 16`` px.

    * one object: side 7/16-9/16 of the image, near the centre;
    * two: side 1/4-5/16, side by side (centres at 1/4 and 3/4 of the width, half the height);
    * three: side 1/4-5/16, in a triangle (two above at 1/4 and 3/4 of the width, one below in the middle).

    Boxes stay at least 2 px apart (separate components). A fixed layout, not free positions, is what
    lets the 4-layer toy DiT learn to draw the world in minutes on a CPU (free positions: blobs of
    scattered patches after the same training).
    """
    if n == 1:
        side = rng.randint(size * 7 // 16, size * 9 // 16)
        centres = [(size / 2, size / 2)]
    else:
        side = rng.randint(size // 4, size * 5 // 16)
        q = size / 4
        centres = [(q, size / 2), (3 * q, size / 2)] if n == 2 else [(q, q), (3 * q, q), (size / 2, 3 * q)]
    jitter = max(1, size // 16)
    boxes = []
    for cx, cy in centres[:n]:
        x = int(round(cx - side / 2)) + rng.randint(-jitter, jitter)
        y = int(round(cy - side / 2)) + rng.randint(-jitter, jitter)
        x, y = min(max(x, 1), size - side - 1), min(max(y, 1), size - side - 1)
        boxes.append((x, y, x + side - 1, y + side - 1))
    return boxes


def _position_boxes(rng: random.Random, relation: str, size: int, lo: int, hi: int) -> list[tuple[int, int, int, int]]:
    """Two boxes with A clearly ``relation`` B (A's far edge before B's near edge along the axis)."""
    while True:
        a, b = _boxes(rng, 2, size, lo, hi)
        axis = 0 if relation == "left of" else 1
        if a[axis + 2] + 1 < b[axis]:
            return [a, b]
        if b[axis + 2] + 1 < a[axis]:
            return [b, a]


def render_scene(scene: Scene, size: int = 32, rng: random.Random | None = None) -> Image.Image:
    """An ideal RGB image (``size x size``) of ``scene``; positions and sizes drawn from ``rng``."""
    rng = rng or random.Random(0)
    im = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(im)
    if scene.category == "single":
        o = scene.objects[0]
        (box,) = _slot_boxes(rng, 1, size)
        draw_shape(draw, o.shape, box, COLORS[o.color])
    elif scene.category == "count":
        o = scene.objects[0]
        for box in _slot_boxes(rng, scene.count, size):
            draw_shape(draw, o.shape, box, COLORS[o.color])
    elif scene.category == "position":
        for o, box in zip(scene.objects, _position_boxes(rng, scene.relation, size, size // 4, size * 3 // 8)):
            draw_shape(draw, o.shape, box, COLORS[o.color])
    elif scene.category == "word":
        from mrgrpo.sft_data.synth import _font

        font = _font(max(8, size // 3))
        left, top, right, bottom = draw.textbbox((0, 0), scene.word, font=font)
        x = (size - (right - left)) // 2 - left
        y = (size - (bottom - top)) // 2 - top
        draw.text((x, y), scene.word, fill=(0, 0, 0), font=font)
    else:
        raise ValueError(f"unknown category {scene.category!r}")
    return im
