"""The `mrgrpo` command line: help, recipes, registries, clear errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mrgrpo.cli import main
from mrgrpo.recipe_files import apply_extends, read_recipe_yaml

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_help_is_fast_and_lists_commands():
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "mrgrpo.cli", "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t
    assert res.returncode == 0
    for cmd in ("train", "sample", "serve", "rewards", "recipes", "data"):
        assert cmd in res.stdout
    assert "torch" not in sys.modules or elapsed < 30  # informative: --help must not import the ML stack
    mods = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from mrgrpo.cli import build_parser; build_parser(); "
            "print(int('torch' in sys.modules), int('transformers' in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert mods.stdout.split() == ["0", "0"], mods.stdout + mods.stderr


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(recipe):
    from mrgrpo.config import load_recipe

    cfg = load_recipe(recipe)
    assert cfg.stage in ("rl", "pretrain", "sft")
    for src in cfg.data.sources:
        if cfg.stage == "rl":
            assert src.rewards and set(src.rewards) <= set(cfg.rewards)


def test_recipes_validate_command(capsys):
    assert main(["recipes", "validate"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == len(RECIPES)


def test_recipes_validate_reports_bad_recipe(tmp_path, capsys):
    quick = REPO / "recipes" / "quickstart.yaml"
    bad = apply_extends(read_recipe_yaml(quick), quick.parent, str(quick))  # the quickstart with its base merged in
    bad["rl"]["group_size"] = 5
    bad["data"]["sources"][0]["path"] = str(REPO / "recipes" / "prompts" / "quickstart_colors.txt")
    bad["data"]["sources"][1]["path"] = str(REPO / "recipes" / "prompts" / "quickstart_text.txt")
    bad["eval"]["sources"] = []
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["recipes", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "train.images_per_step" in err and "rl.group_size=5" in err and "Fix:" in err


def test_recipes_list_schema_show(capsys):
    assert main(["recipes", "list"]) == 0
    listed = capsys.readouterr().out
    assert "quickstart.yaml" in listed and "deepgen_text_render.yaml" in listed
    assert main(["recipes", "schema"]) == 0
    schema = capsys.readouterr().out
    assert "| `rl.group_size` | `int` | `8` |" in schema
    assert main(["recipes", "show", str(REPO / "recipes" / "quickstart.yaml"), "--set", "rl.group_size=4"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["rl"]["group_size"] == 4 and shown["rl"]["beta"] == 0.0


def test_train_with_bad_override_fails_before_building_anything(capsys):
    code = main(["train", str(REPO / "recipes" / "quickstart.yaml"), "--set", "rl.grop_size=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "rl.grop_size" in err and "unknown key" in err


def test_train_with_missing_recipe(capsys):
    assert main(["train", "no/such/recipe.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_registry_listings(capsys):
    assert main(["rewards", "list"]) == 0
    rewards = capsys.readouterr().out
    assert main(["policies", "list"]) == 0
    policies = capsys.readouterr().out
    for name in ("ocr", "clip", "unifiedreward_think", "brightness", "remote"):
        assert name in rewards
    for name in ("deepgen", "deepgen-tiny", "sd3"):
        assert name in policies
