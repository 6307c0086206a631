"""`extends:` (mrgrpo.recipe_files): a recipe merged over the one it names, with the base's relative
paths still naming the files next to the base; cycles, missing and malformed bases are RecipeErrors
naming `extends`. Recipes are written in tmp_path only."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mrgrpo.config import RecipeError, load_recipe, save_resolved_config
from mrgrpo.recipe_files import extends_chain, merge_recipes


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def base(tmp_path) -> Path:
    """``tmp_path/base/rl.yaml`` with prompt files in ``tmp_path/base/prompts`` (only there)."""
    folder = tmp_path / "base"
    (folder / "prompts").mkdir(parents=True)
    (folder / "prompts" / "single.txt").write_text("a red circle\na blue square\n")
    (folder / "prompts" / "count.txt").write_text("two red circles\n")
    (folder / "prompts" / "heldout.txt").write_text("a green circle\n")
    return write(
        folder / "rl.yaml",
        {
            "stage": "rl",
            "output_dir": "outputs/base",
            "policy": {"name": "deepgen-toy", "kwargs": {"seed": 0}},
            "rewards": {"toy_color": {}, "toy_shape": {}},
            "data": {
                "sources": [
                    {"name": "single", "path": "prompts/single.txt", "rewards": {"toy_color": 0.5, "toy_shape": 0.5}},
                    {"name": "count", "path": "prompts/count.txt", "weight": 0.5, "rewards": {"toy_shape": 1.0}},
                ]
            },
            "rl": {"group_size": 4, "height": 32, "width": 32, "sft_aux_coef": 0.0, "noise_level": 0.7},
            "train": {"images_per_step": 8, "micro_batch_size": 4, "lr": 2.0e-4, "max_steps": 30},
            "eval": {"sources": [{"name": "heldout", "path": "prompts/heldout.txt", "rewards": {"toy_color": 1.0}}]},
        },
    )


def test_child_in_another_folder_merges_over_the_base_and_keeps_the_bases_paths(tmp_path, base):
    child = write(
        tmp_path / "elsewhere" / "deeper" / "short.yaml",
        {
            "extends": "../../base/rl.yaml",
            "output_dir": "outputs/short",
            "rewards": {"toy_count": {}},  # a mapping: merged into the base's rewards
            "rl": {"noise_level": 0.5},  # one field replaced, the others kept
            "train": {"max_steps": 3},
        },
    )
    cfg = load_recipe(child)
    assert cfg.output_dir == "outputs/short"
    assert sorted(cfg.rewards) == ["toy_color", "toy_count", "toy_shape"]
    assert (cfg.rl.noise_level, cfg.rl.group_size, cfg.rl.height) == (0.5, 4, 32)
    assert (cfg.train.max_steps, cfg.train.lr, cfg.train.images_per_step) == (3, 2.0e-4, 8)
    # the base's relative prompt paths name the base's files, not files next to the child
    got = [cfg.resolve_path(s.path).resolve() for s in cfg.data.sources]
    assert got == [(base.parent / "prompts" / n).resolve() for n in ("single.txt", "count.txt")]
    assert cfg.resolve_path(cfg.eval.sources[0].path).resolve() == (base.parent / "prompts" / "heldout.txt").resolve()
    assert [s.weight for s in cfg.data.sources] == [1.0, 0.5]


def test_a_list_in_the_child_replaces_the_bases_list_and_its_paths_are_the_childs(tmp_path, base):
    (tmp_path / "child" / "mine.txt").parent.mkdir(parents=True)
    (tmp_path / "child" / "mine.txt").write_text("a yellow circle\n")
    child = write(
        tmp_path / "child" / "r.yaml",
        {
            "extends": "../base/rl.yaml",
            "data": {"sources": [{"name": "mine", "path": "mine.txt", "rewards": {"toy_color": 1.0}}]},
        },
    )
    cfg = load_recipe(child)
    assert [s.name for s in cfg.data.sources] == ["mine"]
    assert cfg.resolve_path(cfg.data.sources[0].path).resolve() == (tmp_path / "child" / "mine.txt").resolve()


def test_a_chain_of_three_resolves_each_path_against_the_file_that_wrote_it(tmp_path, base):
    (tmp_path / "mid" / "extra.txt").parent.mkdir(parents=True)
    (tmp_path / "mid" / "extra.txt").write_text("a purple square\n")
    write(
        tmp_path / "mid" / "mid.yaml",
        {
            "extends": "../base/rl.yaml",
            "eval": {"sources": [{"name": "extra", "path": "extra.txt", "rewards": {"toy_shape": 1.0}}]},
            "train": {"lr": 1.0e-4},
        },
    )
    top = write(tmp_path / "top" / "top.yaml", {"extends": "../mid/mid.yaml", "train": {"max_steps": 2}})
    cfg = load_recipe(top)
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.images_per_step) == (1.0e-4, 2, 8)
    assert cfg.resolve_path(cfg.eval.sources[0].path).resolve() == (tmp_path / "mid" / "extra.txt").resolve()
    assert cfg.resolve_path(cfg.data.sources[0].path).resolve() == (base.parent / "prompts" / "single.txt").resolve()


def test_the_saved_resolved_recipe_has_no_extends_and_loads_back_the_same(tmp_path, base):
    child = write(tmp_path / "c" / "r.yaml", {"extends": "../base/rl.yaml", "train": {"max_steps": 3}})
    cfg = load_recipe(child)
    saved = save_resolved_config(cfg, tmp_path / "run")
    assert "extends" not in yaml.safe_load(saved.read_text())
    again = load_recipe(saved)
    assert again.model_dump() != {} and again.train.max_steps == 3
    assert [again.resolve_path(s.path).resolve() for s in again.data.sources] == [
        cfg.resolve_path(s.path).resolve() for s in cfg.data.sources
    ]


def test_env_vars_absolute_paths_and_hub_ids_in_the_base(tmp_path, base, monkeypatch):
    data = yaml.safe_load(base.read_text())
    data["data"]["sources"][0]["path"] = "${TOY_PROMPTS:-prompts}/single.txt"  # relative after expansion
    data["data"]["sources"][1]["path"] = str(base.parent / "prompts" / "count.txt")  # absolute: left as written
    data["policy"]["checkpoint"] = "org/some-model"  # a hub id: not a path next to the base
    write(base, data)
    child = write(tmp_path / "c" / "r.yaml", {"extends": "../base/rl.yaml"})
    monkeypatch.delenv("TOY_PROMPTS", raising=False)
    cfg = load_recipe(child, check_files=False)
    assert cfg.resolve_path(cfg.data.sources[0].path).resolve() == (base.parent / "prompts" / "single.txt").resolve()
    assert cfg.data.sources[1].path == str(base.parent / "prompts" / "count.txt")
    assert cfg.policy.checkpoint == "org/some-model"
    # a local checkpoint folder next to the base is found from the child
    (base.parent / "ckpt").mkdir()
    data["policy"]["checkpoint"] = "ckpt"
    write(base, data)
    cfg = load_recipe(child, check_files=False)
    assert Path(cfg.resolve_path(cfg.policy.checkpoint)).resolve() == (base.parent / "ckpt").resolve()


def test_a_dict_recipe_extends_relative_to_the_working_directory(tmp_path, base, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(data={"extends": "base/rl.yaml", "train": {"max_steps": 5}})
    assert cfg.train.max_steps == 5
    assert cfg.resolve_path(cfg.data.sources[0].path).resolve() == (base.parent / "prompts" / "single.txt").resolve()


@pytest.mark.parametrize("ref", [["a.yaml"], 3, "", None])
def test_extends_that_is_not_a_path_is_an_error_naming_the_field(tmp_path, ref):
    child = write(tmp_path / "r.yaml", {"extends": ref, "train": {"max_steps": 1}})
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    msg = str(err.value)
    assert "`extends`" in msg and "Fix" in msg and str(child) in msg, msg


def test_a_missing_base_names_the_field_and_the_file(tmp_path):
    child = write(tmp_path / "r.yaml", {"extends": "nope/base.yaml"})
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    msg = str(err.value)
    assert "`extends`" in msg and "does not exist" in msg and "nope/base.yaml" in msg and "Fix" in msg, msg


def test_a_base_that_is_not_a_mapping_or_not_yaml_is_an_error(tmp_path):
    write(tmp_path / "list.yaml", ["stage", "rl"])
    (tmp_path / "bad.yaml").write_text("stage: [rl\n")
    for name in ("list.yaml", "bad.yaml"):
        child = write(tmp_path / f"child_{name}", {"extends": name})
        with pytest.raises(RecipeError) as err:
            load_recipe(child)
        assert "`extends`" in str(err.value) and name in str(err.value), str(err.value)


def test_cycles_are_errors_that_show_the_loop(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, {"extends": "b.yaml"})
    write(b, {"extends": "a.yaml"})
    with pytest.raises(RecipeError) as err:
        load_recipe(a)
    assert "cycle" in str(err.value) and "a.yaml" in str(err.value) and "b.yaml" in str(err.value), str(err.value)
    write(a, {"extends": "a.yaml"})
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(a)


def test_extends_cannot_be_an_override(tmp_path, base):
    with pytest.raises(RecipeError) as err:
        load_recipe(base, ["extends=other.yaml"])
    assert "extends" in str(err.value) and "Fix" in str(err.value), str(err.value)


def test_a_bad_field_inherited_from_the_base_is_reported_by_validation(tmp_path, base):
    data = yaml.safe_load(base.read_text())
    data["rl"]["group_size"] = "eight"
    write(base, data)
    child = write(tmp_path / "c" / "r.yaml", {"extends": "../base/rl.yaml"})
    with pytest.raises(RecipeError, match=r"`rl.group_size`"):
        load_recipe(child)


def test_merge_recipes_merges_mappings_replaces_the_rest_and_leaves_its_inputs_alone():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": [1], "c": 1}
    over = {"a": {"y": [3], "z": {"k": 1}}, "b": [2, 3], "d": None}
    merged = merge_recipes(base, over)
    assert merged == {"a": {"x": 1, "y": [3], "z": {"k": 1}}, "b": [2, 3], "c": 1, "d": None}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": [1], "c": 1}
    merged["a"]["z"]["k"] = 2
    assert over["a"]["z"]["k"] == 1


def test_recipes_list_shows_the_stage_a_recipe_inherits(tmp_path, capsys, monkeypatch):
    import mrgrpo.cli as cli

    write(tmp_path / "recipes" / "sub" / "sft.yaml", {"stage": "sft", "train": {"max_steps": 1}})
    (tmp_path / "recipes" / "child.yaml").write_text("# a child of an SFT recipe\nextends: sub/sft.yaml\n")
    monkeypatch.setattr(cli, "_recipes_dir", lambda: tmp_path / "recipes")
    assert cli.main(["recipes", "list"]) == 0
    out = capsys.readouterr().out
    assert "child.yaml  [sft]  a child of an SFT recipe" in out, out


def test_extends_chain_lists_every_file_a_recipe_reads_nearest_first(tmp_path, base):
    mid = write(tmp_path / "mid" / "mid.yaml", {"extends": "../base/rl.yaml", "train": {"lr": 1.0e-4}})
    top = write(tmp_path / "top.yaml", {"extends": "mid/mid.yaml"})
    assert [p.resolve() for p in extends_chain(top)] == [top.resolve(), mid.resolve(), base.resolve()]
    assert extends_chain(base) == [base]  # no extends: the file alone (a cache key over it is unchanged)
    write(base, {"extends": "../top.yaml"})
    with pytest.raises(RecipeError, match="cycle"):
        extends_chain(top)
