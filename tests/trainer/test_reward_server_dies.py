"""A real `mrgrpo serve` reward server killed mid-run: retries, then masked and logged; or a clear stop."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reward_servers"))
from serverutil import start_server  # noqa: E402

from mrgrpo.config import load_recipe  # noqa: E402
from mrgrpo.grpo import GRPOTrainer, RewardFailure  # noqa: E402
from mrgrpo.rewards.base import build_reward  # noqa: E402


class KillsServerOnCall:
    """Wraps the real remote reward; kills the server process just before call number `n`."""

    is_remote = True
    name = "remote_brightness"

    def __init__(self, proc, url, n):
        self.inner = build_reward("remote", {"urls": [url], "max_retries": 2, "backoff": 0.01})
        self.proc, self.n, self.calls = proc, n, 0

    def __call__(self, images, prompts, metadata=None):
        self.calls += 1
        if self.calls == self.n:
            self.proc.kill()
            self.proc.wait()
        return self.inner(images, prompts, metadata)


def _recipe(toy_recipe, mode):
    toy_recipe["data"]["sources"] = toy_recipe["data"]["sources"][:1]
    toy_recipe["data"]["sources"][0]["rewards"] = {"bright": 0.5, "red": 0.5}
    toy_recipe["rl"]["reward_failure"] = mode
    toy_recipe["train"]["max_steps"] = 3
    return load_recipe(data=toy_recipe)


def test_server_death_masks_and_training_continues(toy_recipe):
    from toy_rewards import redness

    from mrgrpo.rewards.base import as_reward

    proc, url = start_server("brightness")
    try:
        remote = KillsServerOnCall(proc, url, n=2)
        hist = GRPOTrainer(_recipe(toy_recipe, "mask"), rewards={"bright": remote, "red": as_reward(redness)}).fit()
    finally:
        proc.kill()
    assert hist[0]["reward/bright/invalid_frac"] == 0.0 and 0 < hist[0]["reward/bright"] < 1
    for h in hist[1:]:
        assert h["reward/bright/invalid_frac"] == 1.0 and h["reward/bright/failures"] == 16
        assert h["reward/red/invalid_frac"] == 0.0  # the other reward still drives the advantages
        assert h["advantage/std"] > 0.5
    assert len(hist) == 3


def test_server_death_stops_with_clear_error_when_asked(toy_recipe):
    from toy_rewards import redness

    from mrgrpo.rewards.base import as_reward

    proc, url = start_server("brightness")
    try:
        remote = KillsServerOnCall(proc, url, n=2)
        trainer = GRPOTrainer(_recipe(toy_recipe, "stop"), rewards={"bright": remote, "red": as_reward(redness)})
        with pytest.raises(RewardFailure, match="reward 'bright' could not score 16 image"):
            trainer.fit()
    finally:
        proc.kill()
    assert trainer.step == 1
