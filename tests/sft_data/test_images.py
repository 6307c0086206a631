"""SFT images: the sizing rule, resizing, PIL -> tensor."""

from __future__ import annotations

import math
import random

import pytest
import torch
from PIL import Image

from mrgrpo.sft_data import fit_to_budget, resize_to_budget, to_tensor

from sft_util import BUDGET, img


def test_fit_to_budget_properties():
    rng = random.Random(0)
    for _ in range(2000):
        budget = rng.choice([64, 256, 512, 768, 1024])
        w = rng.randint(16, 4000)
        h = max(1, min(8000, int(w * math.exp(rng.uniform(-math.log(4), math.log(4))))))
        W, H = fit_to_budget(w, h, budget)
        assert W % 32 == 0 and H % 32 == 0 and W >= 32 and H >= 32
        s = budget / math.sqrt(w * h)
        # each side is the scaled side rounded UP to the next multiple of 32
        assert w * s - 1e-6 <= W < w * s + 32 or W == 32
        assert h * s - 1e-6 <= H < h * s + 32 or H == 32
        # aspect kept within the rounding; pixel count at or a little above the budget
        # (rounding up adds less than 32 px to a side of w*s, h*s pixels)
        ws, hs = w * s, h * s
        assert abs(math.log((W / H) / (w / h))) <= math.log1p(32 / min(ws, hs)) + 1e-9
        assert budget**2 * (1 - 1e-9) <= W * H <= budget**2 * (1 + 32 / ws) * (1 + 32 / hs) + 1e-6
        if budget >= 512:  # at the real budget the aspect error is a few percent at most
            assert abs(W / H / (w / h) - 1) < 0.13


def test_fit_to_budget_examples():
    assert fit_to_budget(512, 512) == (512, 512)
    assert fit_to_budget(1024, 1024) == (512, 512)
    assert fit_to_budget(100, 100) == (512, 512)  # small images are upscaled to the budget
    assert fit_to_budget(1024, 768) == (608, 448)  # 591.2 -> 608, 443.4 -> 448
    assert fit_to_budget(768, 1024) == (448, 608)
    assert fit_to_budget(1000, 10, budget=64) == (640, 32)  # the short side never goes below 32
    assert fit_to_budget(60, 40, budget=64, multiple=16) == (80, 64)
    with pytest.raises(ValueError):
        fit_to_budget(0, 10)


def test_resize_and_tensor():
    rgba = Image.new("RGBA", (60, 40), (255, 0, 0, 0))  # fully transparent -> white
    out = resize_to_budget(rgba, BUDGET)
    assert out.mode == "RGB" and out.size == (96, 64)
    t = to_tensor(out)
    assert t.shape == (3, 64, 96) and t.dtype == torch.float32
    assert torch.allclose(t, torch.ones_like(t))
    t2 = to_tensor(img(40, 40, 0))
    assert 0.0 <= float(t2.min()) and float(t2.max()) <= 1.0
