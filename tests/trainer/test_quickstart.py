"""The pixel smoke recipe (tiny DeepGen, pixel + OCR rewards; the former quickstart) learns on CPU
(slow: make test-slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrgrpo.config import load_recipe
from mrgrpo.grpo import GRPOTrainer

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smoke_pixel.yaml"  # the former quickstart


def _run(tmp_path, seed: int, flip: bool, steps: int = 40) -> list[float]:
    cfg = load_recipe(
        RECIPE,
        [
            f"output_dir={tmp_path}/s{seed}{int(flip)}",
            f"train.seed={seed}",
            f"train.max_steps={steps}",
            f"rl.flip_advantage_sign={str(flip).lower()}",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "train.checkpoint_every=1000",
            "eval.every=1000",
            "logging.sample_every=1000",
        ],
    )
    return [h["reward/brightness"] for h in GRPOTrainer(cfg).fit()]


@pytest.mark.slow
def test_quickstart_learns_and_flipped_sign_unlearns(tmp_path, monkeypatch):
    """Slow (make test-slow): the default suite makes the same claim, learning direction with the
    advantage sign and its flip on 3 seeds, in tests/trainer/test_grpo.py::test_toy_learning_direction;
    the shipped quickstart recipe itself is trained for 2 steps by test_rollout_options.py."""
    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    ups = [np.mean(r[-10:]) - np.mean(r[:10]) for r in (_run(tmp_path, s, False) for s in range(3))]
    downs = [np.mean(r[-10:]) - np.mean(r[:10]) for r in (_run(tmp_path, s, True) for s in range(2))]
    # measured on 2 seeds at lr 3e-2: +0.057 / +0.054 up, -0.13 / -0.22 with the sign flipped
    assert min(ups) > 0.02, ups
    assert max(downs) < -0.02, downs


@pytest.mark.slow
def test_quickstart_learns_on_five_seeds_over_sixty_steps(tmp_path, monkeypatch):
    """The stronger version of the learning check (make test-slow): every one of 5 seeds improves."""
    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    ups = [np.mean(r[-10:]) - np.mean(r[:10]) for r in (_run(tmp_path, s, False, steps=60) for s in range(5))]
    assert min(ups) > 0.02, ups
