"""RL rollouts and SFT batches size the same reference image alike (one rule, applied once)."""

from __future__ import annotations

import json
import random

import numpy as np
import torch
from PIL import Image

from mrgrpo.imaging import fit_to_budget
from mrgrpo.sft_data import ImageRecordDataset

# squares where the two old copies of the rule disagreed, sizes where the released float rounding
# adds a step, sizes where the rule is not idempotent (a second sizing would change them), extremes
SPECIAL = [
    (239, 239),
    (478, 478),
    (1019, 1019),
    (39, 351),
    (351, 624),
    (539, 176),
    (64, 194),
    (66, 116),
    (512, 512),
    (1024, 768),
    (768, 1024),
    (2048, 512),
    (300, 1200),
    (33, 33),
    (1, 1),
]


def _sizes() -> list[tuple[int, int]]:
    rng = random.Random(0)
    return SPECIAL + [(rng.randint(16, 1600), rng.randint(16, 1600)) for _ in range(25)]


def test_rl_and_sft_paths_size_references_alike(build, tmp_path):
    budget = 512
    policy = build("deepgen-tiny", pixel_budget=budget)
    sizes = _sizes()
    records = []
    for i, (w, h) in enumerate(sizes):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"in_{i}.png")
        Image.new("RGB", (w, h), (i % 256, 0, 0)).save(tmp_path / f"out_{i}.png")
        records.append({"input_image": [f"in_{i}.png"], "output_image": f"out_{i}.png", "instruction": f"edit {i}"})
    (tmp_path / "edit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data = ImageRecordDataset(tmp_path / "edit.jsonl", "edit", pixel_budget=budget)
    for i, (w, h) in enumerate(sizes):
        W, H = fit_to_budget(w, h, budget)
        with Image.open(tmp_path / f"in_{i}.png") as im:  # RL: the trainer hands the policy the file's image
            rl_pixels, rl_counts, _, rl_grids = policy._ref_inputs([im.convert("RGB")])
        sample = data[i]  # SFT: the data reader sizes it, then the policy reads the batch's reference
        sft_pixels, sft_counts, _, sft_grids = policy._ref_inputs(sample.refs)
        assert sample.image.size == (W, H), (w, h)
        assert tuple(rl_pixels[0].shape) == tuple(sft_pixels[0].shape) == (3, H, W), (w, h)
        assert torch.equal(rl_pixels[0], sft_pixels[0]), (w, h)  # same resampling from the same original
        assert rl_counts == sft_counts == [(H // 32) * (W // 32)]
        assert torch.equal(rl_grids[0], sft_grids[0])
