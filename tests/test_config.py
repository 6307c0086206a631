"""Recipes (mrgrpo.config): every bad input is one RecipeError naming the field (dotted path), the
bad value and a fix; typed --set overrides; paths relative to the recipe; resolved-config round
trip; a documented schema. Small recipes written in tmp_path only (not the shipped recipes/)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from mrgrpo.config import RecipeError, RunConfig, load_recipe, save_resolved_config, schema_markdown


@pytest.fixture
def recipe(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "text.txt").write_text('a sign saying "hi"\na poster saying "sale"\n')
    (tmp_path / "prompts" / "general.txt").write_text("a red square\na blue circle\n")
    return {
        "policy": {"name": "deepgen-tiny"},
        "rewards": {"ocr": {}, "clip": {}, "unifiedreward_think": {}},
        "data": {
            "sources": [
                {
                    "name": "text",
                    "path": "prompts/text.txt",
                    "weight": 3.0,
                    "rewards": {"unifiedreward_think": 0.2, "clip": 0.1, "ocr": 0.7},
                },
                {
                    "name": "general",
                    "path": "prompts/general.txt",
                    "rewards": {"unifiedreward_think": 0.7, "clip": 0.3},
                },
            ]
        },
        "rl": {"sft_aux_coef": 0.0},
        "train": {"images_per_step": 16},
    }


def write(folder: Path, data, name="r.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def fails(tmp_path, data, field, value, *needles, overrides=()):
    """Load must raise RecipeError naming `field` (backquoted dotted path), showing `value`, with a Fix."""
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, data), list(overrides))
    msg = str(err.value)
    assert f"`{field}`" in msg, msg
    assert value in msg, msg
    assert "Fix" in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_good_recipe_loads(tmp_path, recipe):
    cfg = load_recipe(write(tmp_path, recipe))
    assert cfg.rl.group_size == 8 and cfg.rl.num_steps == 50 and cfg.rl.beta == 5e-7 and cfg.rl.clip_range == 1e-4
    assert cfg.train.lr == 2e-6 and cfg.rl.timestep_fraction == 0.6 and cfg.rl.adv_mode == "gdpo"
    assert cfg.rl.adv_eps == 1e-4 and cfg.rl.adv_clip == 5.0 and cfg.prompts_per_step == 2
    assert cfg.data.sources[0].rewards == {"unifiedreward_think": 0.2, "clip": 0.1, "ocr": 0.7}


def test_unknown_key(tmp_path, recipe):
    recipe["rl"]["grop_size"] = 4
    fails(tmp_path, recipe, "rl.grop_size", "4", "unknown key")


def test_unknown_nested_key(tmp_path, recipe):
    recipe["data"]["sources"][1]["wieght"] = 2.5
    fails(tmp_path, recipe, "data.sources.1.wieght", "2.5", "unknown key")


def test_wrong_type(tmp_path, recipe):
    recipe["rl"]["group_size"] = "eight"
    fails(tmp_path, recipe, "rl.group_size", "'eight'", "integer")


def test_wrong_type_in_a_list_item(tmp_path, recipe):
    recipe["data"]["sources"][0]["weight"] = "heavy"
    fails(tmp_path, recipe, "data.sources.0.weight", "'heavy'")


def test_mixture_names_an_undefined_reward(tmp_path, recipe):
    recipe["data"]["sources"][1]["rewards"]["aesthetic"] = 0.5
    fails(tmp_path, recipe, "data.sources.1.rewards", "aesthetic", "does not define")


def test_images_per_step_not_divisible_by_group_size(tmp_path, recipe):
    recipe["train"]["images_per_step"] = 20
    fails(tmp_path, recipe, "train.images_per_step", "20", "rl.group_size=8", "multiple of 8")


def test_all_zero_mixture_weights(tmp_path, recipe):
    recipe["data"]["sources"][1]["rewards"] = {"unifiedreward_think": 0.0, "clip": 0.0}
    fails(tmp_path, recipe, "data.sources.1.rewards", "{'unifiedreward_think': 0.0, 'clip': 0.0}", "zero")


def test_all_zero_source_weights(tmp_path, recipe):
    for src in recipe["data"]["sources"]:
        src["weight"] = 0.0
    fails(tmp_path, recipe, "data.sources.*.weight", "[0.0, 0.0]", "all zero")
    # one positive source weight is enough
    recipe["data"]["sources"][1]["weight"] = 1.0
    load_recipe(write(tmp_path, recipe))


def test_prompt_file_that_does_not_exist(tmp_path, recipe):
    recipe["data"]["sources"][0]["path"] = "prompts/nope.txt"
    fails(
        tmp_path,
        recipe,
        "data.sources.0.path",
        "prompts/nope.txt",
        "does not exist",
        str(tmp_path / "prompts" / "nope.txt"),
    )
    # an optional source may be missing
    recipe["data"]["sources"][0]["required"] = False
    load_recipe(write(tmp_path, recipe))


def test_height_not_a_multiple_of_16(tmp_path, recipe):
    recipe["rl"]["height"] = 500
    fails(tmp_path, recipe, "rl.height", "500", "multiple of 16", "use 512")


def test_several_problems_are_reported_together(tmp_path, recipe):
    recipe["rl"]["height"] = 500
    recipe["train"]["images_per_step"] = 20
    msg = fails(tmp_path, recipe, "rl.height", "500", "2 problem(s)", "`train.images_per_step`")
    assert msg.count("Fix:") == 2


def test_overrides_are_typed(tmp_path, recipe):
    cfg = load_recipe(
        write(tmp_path, recipe),
        [
            "rl.group_size=4",
            "train.lr=1e-5",
            "data.sources.0.weight=2.5",
            "rl.shared_noise=true",
            "logging.tensorboard=false",
            "rl.sde_window=[0,3]",
            "rl.clip_range=[1e-4,2e-4]",
            "policy.kwargs.dtype=bf16",
        ],
    )
    assert type(cfg.rl.group_size) is int and cfg.rl.group_size == 4
    assert type(cfg.train.lr) is float and cfg.train.lr == 1e-5
    assert type(cfg.data.sources[0].weight) is float and cfg.data.sources[0].weight == 2.5
    assert cfg.data.sources[1].weight == 1.0
    assert cfg.rl.shared_noise is True and cfg.logging.tensorboard is False
    assert cfg.rl.sde_window is not None and cfg.rl.sde_window.compact() == [0, 3]
    assert cfg.rl.clip_range == (1e-4, 2e-4)
    assert cfg.policy.kwargs == {"dtype": "bf16"}
    assert cfg.prompts_per_step == 4


def test_bad_overrides_fail(tmp_path, recipe):
    p = write(tmp_path, recipe)
    fails(tmp_path, recipe, "train.learning_rate", "1e-05", "unknown key", overrides=["train.learning_rate=1e-5"])
    fails(tmp_path, recipe, "rl.group_size", "'four'", overrides=["rl.group_size=four"])
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe(p, ["train.lr"])
    with pytest.raises(RecipeError, match="list index below 2"):
        load_recipe(p, ["data.sources.3.weight=1"])
    # a key below a plain value is a RecipeError, not an AttributeError
    recipe["rl"]["group_size"] = 8
    with pytest.raises(RecipeError, match="rl.group_size is a value"):
        load_recipe(write(tmp_path, recipe), ["rl.group_size.a.b=1"])


def test_overrides_do_not_modify_the_callers_dict(tmp_path, recipe, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = copy.deepcopy(recipe)
    cfg = load_recipe(data=recipe, overrides=["rl.group_size=4", "data.sources.0.weight=9"])
    assert cfg.rl.group_size == 4 and cfg.data.sources[0].weight == 9.0
    assert recipe == before


def test_relative_prompt_paths_resolve_against_the_recipe_folder(tmp_path, recipe, monkeypatch):
    folder = tmp_path / "recipes" / "mine"
    (folder / "prompts").mkdir(parents=True)
    (folder / "prompts" / "text.txt").write_text("x\n")
    (folder / "prompts" / "general.txt").write_text("y\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the CWD has no prompts/ folder
    cfg = load_recipe(write(folder, recipe))
    assert cfg.resolve_path(cfg.data.sources[0].path) == folder.resolve() / "prompts" / "text.txt"
    # tmp_path/prompts exists too (the fixture): the recipe's own folder wins, not its parent
    assert cfg.resolve_path("prompts/general.txt").read_text() == "y\n"
    # absolute paths are kept as they are
    assert cfg.resolve_path(str(tmp_path / "prompts" / "text.txt")) == tmp_path / "prompts" / "text.txt"


def test_resolved_config_round_trip(tmp_path, recipe, monkeypatch):
    # absolute paths: the reloaded recipe is the same, field for field
    absolute = copy.deepcopy(recipe)
    for src in absolute["data"]["sources"]:
        src["path"] = str(tmp_path / src["path"])
    cfg = load_recipe(
        write(tmp_path, absolute), ["rl.group_size=4", "rl.sde_window=[0,3]", "rl.clip_range=[1e-4,2e-4]"]
    )
    path = save_resolved_config(cfg, tmp_path / "out")
    assert path == tmp_path / "out" / "config.yaml"
    again = load_recipe(path)
    assert again.model_dump() == cfg.model_dump()
    assert again.rl.sde_window == cfg.rl.sde_window and again.rl.clip_range == (1e-4, 2e-4)


def test_resolved_config_with_relative_paths_loads_back(tmp_path, recipe, monkeypatch):
    # the written config.yaml lives in the run folder: recipe-relative paths must still name the
    # same files when it is loaded from there (with the file checks on), from any CWD
    folder = tmp_path / "recipes"
    (folder / "prompts").mkdir(parents=True)
    (folder / "prompts" / "text.txt").write_text("x\n")
    (folder / "prompts" / "general.txt").write_text("y\n")
    cfg = load_recipe(write(folder, recipe), ["rl.group_size=4"])
    path = save_resolved_config(cfg, tmp_path / "runs" / "one")
    monkeypatch.chdir(tmp_path / "runs")
    again = load_recipe(path)  # check_files on
    for a, b in zip(again.data.sources, cfg.data.sources):
        assert again.resolve_path(a.path) == cfg.resolve_path(b.path)
        assert Path(a.path).is_absolute()
    dump_a, dump_b = again.model_dump(), cfg.model_dump()
    for d in (dump_a, dump_b):
        for src in d["data"]["sources"]:
            src.pop("path")
    assert dump_a == dump_b
    # saving the reloaded config gives the same file (a fixed point)
    path2 = save_resolved_config(again, tmp_path / "runs" / "two")
    assert path2.read_text() == path.read_text()


def _fields(model: type[BaseModel], prefix=""):
    """Every field of every schema model reachable from RunConfig, as (dotted name, FieldInfo)."""
    for name, info in model.model_fields.items():
        yield prefix + name, info
        sub = [
            a
            for a in (info.annotation, *getattr(info.annotation, "__args__", ()))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        for s in sub:
            yield from _fields(s, prefix + name + ".")


def test_schema_markdown_lists_every_field_with_a_description():
    fields = list(_fields(RunConfig))
    assert len(fields) > 80
    assert [name for name, info in fields if not (info.description or "").strip()] == []
    md = schema_markdown()
    rows = [line for line in md.splitlines()[2:] if line.startswith("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert all(len(c) >= 4 for c in cells)
    empty = [c[0] for c in cells if not c[-1]]
    assert empty == []
    listed = {re.sub(r"\.<name>\.|\[\]\.", ".", c[0].strip("`")) for c in cells}
    # every field that is not itself a section appears as a row (list/dict items as `a[].b` / `a.<name>.b`)
    sections = {"policy", "data", "rl", "sft", "train", "distributed", "eval", "logging", "train.ema", "train.lora"}
    leaves = [name for name, _ in fields if name not in sections]
    missing = [name for name in leaves if name not in listed]
    assert missing == []
    for key, row in (("rl.group_size", "G: images sampled per prompt"), ("train.lr", "Peak learning rate")):
        assert any(c[0] == f"`{key}`" and row in c[-1] for c in cells), key
    # docs/recipe_schema.md is this generator's output (`mrgrpo recipes schema > docs/recipe_schema.md`)
    doc = Path(__file__).resolve().parents[1] / "docs" / "recipe_schema.md"
    assert doc.read_text().strip() == md.strip(), (
        "docs/recipe_schema.md is stale: regenerate it with `mrgrpo recipes schema`"
    )


def test_moved_eval_fields_name_their_new_place():
    """Evaluation settings live in `eval:`; the old places are refused with the new name."""
    base = {"stage": "sft", "data": {"sft_sources": [{"name": "s", "path": "x.jsonl", "required": False}]}}
    for section, key, value, new in (
        ("rl", "eval_cfg_scale", 3.0, "eval.cfg_scale"),
        ("rl", "eval_num_steps", 8, "eval.num_steps"),
        ("logging", "eval_every", 5, "eval.every"),
        ("logging", "eval_prompts", 4, "eval.prompts"),
        ("data", "eval_sources", [], "eval.sources"),
    ):
        data = copy.deepcopy(base)
        data.setdefault(section, {})[key] = value
        with pytest.raises(RecipeError, match=rf"field `{section}.{key}`: moved to `{new}`"):
            load_recipe(data=data, check_files=False)
    with pytest.raises(RecipeError, match=r"`rl.eval_cfg_scale`: moved to `eval.cfg_scale`"):
        load_recipe(data=base, overrides=["rl.eval_cfg_scale=2"], check_files=False)
    cfg = load_recipe(data=base, overrides=["eval.cfg_scale=2", "eval.num_steps=7"], check_files=False)
    assert cfg.eval.cfg_scale == 2.0 and cfg.eval.num_steps == 7


def test_a_bare_no_for_mixed_precision_means_no():
    """YAML reads `no` as false; `train.mixed_precision: no` (file or --set) must still mean "no"."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    assert load_recipe(recipe, ["train.mixed_precision=no"], check_files=False).train.mixed_precision == "no"
    assert load_recipe(recipe, ["train.mixed_precision=bf16"], check_files=False).train.mixed_precision == "bf16"
    with pytest.raises(RecipeError, match="mixed_precision"):
        load_recipe(recipe, ["train.mixed_precision=yes"], check_files=False)
