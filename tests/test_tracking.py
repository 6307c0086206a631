"""Run tracking (mrgrpo.tracking): metrics.jsonl records, resume truncation, torn lines, curves and grids."""

from __future__ import annotations

import json

import torch
from PIL import Image

from mrgrpo.tracking import Tracker, read_metrics, save_image_grid, truncate_metrics


def test_log_writes_one_record_per_step_with_numbers_only(tmp_path):
    tr = Tracker(tmp_path, tensorboard=False)
    tr.log(1, {"reward/mean": 0.5, "loss": torch.tensor(2.0), "optimizer_steps": 3, "note": "text"})
    tr.log(2, {"reward/mean": 0.75})
    tr.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert recs == [
        {"step": 1, "reward/mean": 0.5, "loss": 2.0, "optimizer_steps": 3.0},
        {"step": 2, "reward/mean": 0.75},
    ]


def test_resume_truncates_to_the_resumed_step_and_a_fresh_run_starts_empty(tmp_path):
    tr = Tracker(tmp_path, tensorboard=False)
    for step in range(1, 6):
        tr.log(step, {"x": float(step)})
    # resumed from the step-3 checkpoint: steps 4 and 5 are logged again by the resumed run
    Tracker(tmp_path, tensorboard=False, resume_step=3).log(4, {"x": 40.0})
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]
    Tracker(tmp_path, tensorboard=False)  # not a resume: the old file goes
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_torn_last_line_is_ignored_and_truncate_keeps_earlier_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        json.dumps({"step": 1, "a": 1.0}) + "\n" + json.dumps({"step": 2, "a": 2.0}) + "\n" + '{"step": 3, "a"'
    )
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    truncate_metrics(path, 1)
    assert read_metrics(path) == [{"step": 1, "a": 1.0}]
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_disabled_tracker_writes_nothing(tmp_path):
    tr = Tracker(tmp_path / "rank1", enabled=False)
    tr.log(1, {"x": 1.0})
    assert tr.save_samples(1, torch.rand(2, 3, 8, 8), nrow=2) is None
    tr.plot()
    assert not (tmp_path / "rank1").exists()


def test_sample_grid_and_reward_curve(tmp_path):
    tr = Tracker(tmp_path, tensorboard=False)
    pixels = torch.zeros(4, 3, 8, 8)
    pixels[1] = 1.0
    path = tr.save_samples(7, pixels, nrow=2, captions=["a", "b", "c", "d"])
    assert path == tmp_path / "samples" / "step-000007.png"
    assert path.with_suffix(".txt").read_text().splitlines() == ["a", "b", "c", "d"]
    img = Image.open(path)
    assert img.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)  # 2x2 grid with 2-pixel padding
    # the second image (white) sits in the top-right cell
    assert img.getpixel((2 + 8 + 2 + 4, 2 + 4)) == (255, 255, 255) and img.getpixel((2 + 4, 2 + 4)) == (0, 0, 0)
    for step in range(1, 4):
        tr.log(step, {"reward/mean": step / 10, "eval/mean": step / 5})
    tr.plot()
    assert (tmp_path / "reward_curve.png").stat().st_size > 1000
    save_image_grid(torch.full((1, 3, 4, 4), 2.0), tmp_path / "clamped.png", nrow=1)
    assert Image.open(tmp_path / "clamped.png").getpixel((3, 3)) == (255, 255, 255)


def test_curves_leave_out_the_diagnostics():
    from mrgrpo.tracking import curve_keys

    records = [
        {"step": 1, "reward/mean": 0.1, "reward/ocr": 0.2, "reward/ocr/zero_std_frac": 0.5, "reward/ocr/std": 0.1},
        {"step": 2, "reward/ocr/invalid_frac": 0.0, "reward/ocr/failures": 1, "eval/ocr": 0.3, "loss": 1.0},
    ]
    assert curve_keys(records) == ["eval/ocr", "reward/mean", "reward/ocr"]
    assert curve_keys(records, ("loss",)) == ["loss"]


def test_running_mean_is_the_trailing_window_mean():
    import numpy as np

    from mrgrpo.tracking import running_mean

    rng = np.random.default_rng(0)
    ys = rng.random(12).tolist()
    xs, means = running_mean(list(range(1, 13)), ys, 5)
    assert xs == list(range(5, 13))
    assert np.allclose(means, [sum(ys[i : i + 5]) / 5 for i in range(8)])  # each window's own mean
    assert running_mean([1, 2], [0.5, 0.7], 5) == ([1, 2], [0.5, 0.7])  # shorter than the window: as it is
