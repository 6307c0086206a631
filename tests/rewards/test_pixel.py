"""Pixel rewards: exact values, determinism, invalid without a colour word, smooth in the pixels."""

import numpy as np
import pytest
from PIL import Image

from mrgrpo.rewards.base import build_reward


def solid(rgb, size=16):
    return Image.new("RGB", (size, size), rgb)


def test_brightness_is_mean_luminance():
    out = build_reward("brightness")([solid("white"), solid("black"), solid((255, 0, 0))], ["a"] * 3)
    assert out.scores.tolist() == pytest.approx([1.0, 0.0, 0.299], abs=1e-3)
    half = Image.fromarray(np.concatenate([np.zeros((8, 16, 3), np.uint8), np.full((8, 16, 3), 255, np.uint8)]))
    assert build_reward("brightness")([half], ["x"]).scores.item() == pytest.approx(0.5, abs=1e-3)


def test_color_match():
    r = build_reward("color_match")
    out = r(
        [solid((255, 0, 0)), solid((0, 0, 255)), solid((255, 0, 0)), solid((0, 0, 255))],
        ["a red square", "a RED square", "a square", "Blue sky"],
    )
    assert out.scores[0] == pytest.approx(1.0) and out.scores[1] == pytest.approx(1 - np.sqrt(2) / np.sqrt(3), abs=1e-4)
    assert out.valid.tolist() == [True, True, False, True]  # no colour named: invalid, not 0
    assert out.details["colors"] == ["red", "red", None, "blue"]
    # smooth and monotone: moving the image toward the named colour raises the score step by step
    steps = [r([solid((v, 0, 255 - v))], ["something red"]).scores.item() for v in range(0, 256, 32)]
    assert all(b > a for a, b in zip(steps, steps[1:]))
    assert r([solid((0, 153, 0))], ["x"], [{"color": "green"}]).scores.item() == pytest.approx(1.0, abs=1e-3)


def test_jpeg_compressibility_and_determinism():
    noisy = Image.effect_noise((64, 64), 100).convert("RGB")
    r = build_reward("jpeg_compressibility")
    a = r([solid("gray", 64), noisy], ["a", "b"])
    b = r([solid("gray", 64), noisy], ["a", "b"])
    assert a.scores[0] > a.scores[1] and a.scores.tolist() == b.scores.tolist()
    assert a.details["jpeg_bytes"][0] < a.details["jpeg_bytes"][1]
