"""The quickstart is the toy world's MR-GRPO stage (seed 0) with the held-out evaluation inside the run.

`recipes/quickstart.yaml` extends `recipes/toy_world/rl.yaml` and changes only the starting policy,
the output folder and the evaluation; this test fails if an edit of either makes the quickstart train
differently from the toy world's MR-GRPO stage.
"""

from __future__ import annotations

from pathlib import Path

from mrgrpo.config import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _sources(cfg, sources) -> list[tuple]:
    return [(s.name, s.weight, dict(s.rewards or {}), cfg.resolve_path(s.path).resolve()) for s in sources]


def test_quickstart_trains_exactly_as_the_toy_world_rl_stage():
    quick = load_recipe(RECIPES / "quickstart.yaml")
    toy = load_recipe(RECIPES / "toy_world" / "rl.yaml")
    assert quick.rl.model_dump() == toy.rl.model_dump()
    assert quick.train.model_dump() == toy.train.model_dump()
    assert _sources(quick, quick.data.sources) == _sources(toy, toy.data.sources)
    trained = {name for s in toy.data.sources for name in (s.rewards or {})}
    assert {k: quick.rewards[k] for k in trained} == {k: toy.rewards[k] for k in trained}
    assert quick.policy.name == toy.policy.name
    assert quick.policy.kwargs.get("seed") == toy.policy.kwargs.get("seed")
    # evaluated on the same held-out prompts, with the ODE steps and CFG of the toy world's evaluation
    held_out = [(s.name, quick.resolve_path(s.path).resolve()) for s in quick.eval.sources]
    assert held_out == [(s.name, toy.resolve_path(s.path).resolve()) for s in toy.eval.sources]
    assert (quick.eval.num_steps, quick.eval.cfg_scale) == (toy.eval.num_steps, toy.eval.cfg_scale)
