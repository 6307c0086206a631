"""Recipe schema: every bad-input case gives one message naming field, value and fix."""

from __future__ import annotations

import copy

import pytest
import yaml

from mrgrpo.config import RecipeError, RunConfig, load_recipe, save_resolved_config, schema_rows


@pytest.fixture
def recipe(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red square\na blue circle\n")
    return {
        "policy": {"name": "deepgen-tiny"},
        "rewards": {"ocr": {}, "clip": {}},
        "data": {"sources": [{"name": "t", "path": "prompts.txt", "rewards": {"ocr": 0.7, "clip": 0.3}}]},
        "rl": {"sft_aux_coef": 0.0},
        "train": {"images_per_step": 16},
    }


def write(tmp_path, data, name="r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def fails(tmp_path, data, *needles, overrides=()):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, data), list(overrides))
    msg = str(err.value)
    for n in needles:
        assert n in msg, msg
    assert "Fix" in msg, msg
    return msg


def test_good_recipe_loads_with_paper_defaults(tmp_path, recipe):
    cfg = load_recipe(write(tmp_path, recipe))
    assert cfg.rl.group_size == 8 and cfg.rl.num_steps == 50 and cfg.rl.beta == 5e-7 and cfg.rl.clip_range == 1e-4
    assert cfg.train.lr == 2e-6 and cfg.rl.timestep_fraction == 0.6 and cfg.rl.adv_mode == "gdpo"
    # relative prompt paths resolve against the recipe's folder, not the CWD
    assert cfg.resolve_path(cfg.data.sources[0].path) == tmp_path / "prompts.txt"


def test_unknown_key(tmp_path, recipe):
    recipe["rl"]["grop_size"] = 4
    fails(tmp_path, recipe, "rl.grop_size", "unknown key")


def test_wrong_type(tmp_path, recipe):
    recipe["rl"]["group_size"] = "eight"
    fails(tmp_path, recipe, "rl.group_size", "'eight'", "integer")


def test_mixture_names_undefined_reward(tmp_path, recipe):
    recipe["data"]["sources"][0]["rewards"]["aesthetic"] = 0.5
    fails(tmp_path, recipe, "data.sources.0.rewards", "aesthetic", "does not define")


def test_batch_not_divisible_by_group(tmp_path, recipe):
    recipe["train"]["images_per_step"] = 20
    fails(tmp_path, recipe, "train.images_per_step", "20", "rl.group_size=8", "multiple of 8")


def test_all_zero_mixture_weights(tmp_path, recipe):
    recipe["data"]["sources"][0]["rewards"] = {"ocr": 0.0, "clip": 0.0}
    fails(tmp_path, recipe, "data.sources.0.rewards", "only zero weights")


def test_all_zero_source_weights(tmp_path, recipe):
    recipe["data"]["sources"][0]["weight"] = 0.0
    fails(tmp_path, recipe, "data.sources.*.weight", "all zero")


def test_missing_prompt_file(tmp_path, recipe):
    recipe["data"]["sources"][0]["path"] = "nope.txt"
    fails(tmp_path, recipe, "data.sources.0.path", "nope.txt", "does not exist")


def test_height_not_multiple_of_16(tmp_path, recipe):
    recipe["rl"]["height"] = 500
    fails(tmp_path, recipe, "rl.height", "500", "multiple of 16", "use 512")


def test_several_problems_reported_together(tmp_path, recipe):
    recipe["rl"]["height"] = 500
    recipe["train"]["images_per_step"] = 20
    msg = fails(tmp_path, recipe, "2 problem(s)", "rl.height", "train.images_per_step")
    assert msg.count("Fix:") == 2


def test_overrides_are_typed(tmp_path, recipe):
    p = write(tmp_path, recipe)
    cfg = load_recipe(p, ["rl.group_size=4", "train.lr=1e-5", "data.sources.0.weight=2.5",
                          "rl.shared_noise=true", "rl.sde_window=[0,3]", "rl.clip_range=[1e-4,2e-4]"])
    assert cfg.rl.group_size == 4 and isinstance(cfg.rl.group_size, int)
    assert cfg.train.lr == 1e-5 and cfg.data.sources[0].weight == 2.5
    assert cfg.rl.shared_noise is True and cfg.rl.sde_window == (0, 3) and cfg.rl.clip_range == (1e-4, 2e-4)


def test_override_of_unknown_key_fails(tmp_path, recipe):
    fails(tmp_path, recipe, "train.learning_rate", "unknown key", overrides=["train.learning_rate=1e-5"])
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe(write(tmp_path, recipe), ["train.lr"])
    with pytest.raises(RecipeError, match="list index below 1"):
        load_recipe(write(tmp_path, recipe), ["data.sources.3.weight=1"])


def test_resolved_config_round_trip(tmp_path, recipe):
    cfg = load_recipe(write(tmp_path, recipe), ["rl.group_size=4"])
    path = save_resolved_config(cfg, tmp_path / "out")
    again = load_recipe(path, check_files=False)
    assert again.model_dump() == cfg.model_dump()


def test_env_expansion_in_paths(tmp_path, recipe, monkeypatch):
    monkeypatch.setenv("PROMPT_DIR", str(tmp_path))
    recipe["data"]["sources"][0]["path"] = "${PROMPT_DIR}/prompts.txt"
    cfg = load_recipe(write(tmp_path, copy.deepcopy(recipe)))
    assert cfg.resolve_path(cfg.data.sources[0].path) == tmp_path / "prompts.txt"


def test_every_field_is_documented():
    rows = schema_rows(RunConfig)
    assert len(rows) > 60
    undocumented = [r[0] for r in rows if not r[3].strip()]
    assert not undocumented, undocumented
