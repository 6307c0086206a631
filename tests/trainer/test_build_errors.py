"""Values a factory refuses (issue 15, class 3): a policy or reward kwarg of the right name but a wrong
value fails with one message naming the recipe field, not a traceback from inside the factory."""

from __future__ import annotations

import pytest
import yaml

from mrgrpo.cli import main
from mrgrpo.registry import POLICIES, REWARDS


def _picky_policy(seed: int = 0, size: int = 8):
    from toy_policy import ToyPolicy

    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return ToyPolicy(seed=seed)


class _PickyReward:
    def __init__(self, mode: str = "mean"):
        if mode not in ("mean", "max"):
            raise ValueError(f"mode must be mean or max, got {mode!r}")

    def __call__(self, images, prompts, metadata=None):
        return [0.0 for _ in images]


@pytest.fixture(autouse=True)
def _registered():
    POLICIES.register("picky-policy-15", _picky_policy, override=True)
    REWARDS.register("picky-reward-15", _PickyReward, override=True)


CASES = {
    "policy kwarg value": ({"policy": {"name": "picky-policy-15", "kwargs": {"size": -1}}}, "policy.kwargs", "size"),
    "policy kwarg type": (
        {"policy": {"name": "toy_policy:ToyPolicy", "kwargs": {"dim": "eight"}}},
        "policy.kwargs",
        "eight",
    ),
    "reward kwarg value": (
        {"rewards": {"bright": {"name": "picky-reward-15", "kwargs": {"mode": "median"}}}},
        "rewards.bright",
        "median",
    ),
    "starting weights that do not load": (
        {"policy": {"name": "toy_policy:ToyPolicy", "checkpoint": "/nonexistent/w"}},
        "policy.checkpoint",
        "/nonexistent/w",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_factory_refusals_name_the_recipe_field(case, toy_recipe, tmp_path, capsys):
    changes, field, word = CASES[case]
    recipe = dict(toy_recipe)
    for key, value in changes.items():
        recipe[key] = {**recipe[key], **value}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = main(["train", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"field `{field}`" in err and word in err, err
