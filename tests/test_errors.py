"""Every bad input a clear error: one message naming the field or file, a non-zero exit, no traceback.

One parametrised test per class of mistakes (issue 15); the CLI runs in-process (``mrgrpo.cli.main``).
Damaged checkpoints (class 5) are in ``tests/trainer/test_checkpoint_damage.py`` (they need a run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from errors_cli import PNG, _assert_clean_error, _cli, _file, recipe_factory


@pytest.fixture
def recipe(tmp_path):
    """``recipe(**changes)``: the smoke recipe with ``changes`` (dotted keys as ``a__b``), written to a file."""
    return recipe_factory(tmp_path)


# -- 1. what the trainer used to raise after loading, now found before any model is built -------------
CLASS1 = {
    "empty prompt file": (
        lambda t: {"data__sources__0__path": str(_file(t, "empty.txt", ""))},
        ["data.sources.0.path", "empty.txt"],
    ),
    "blank-only prompt file": (
        lambda t: {"data__sources__0__path": str(_file(t, "blank.txt", "\n  \n\t\n# comment\n"))},
        ["data.sources.0.path", "holds no prompts"],
    ),
    "unknown prompt format": (
        lambda t: {"data__sources__1__path": str(_file(t, "p.md", "a prompt\n"))},
        ["data.sources.1.path", "format"],
    ),
    "jsonl without prompt key": (
        lambda t: {"data__sources__0__path": str(_file(t, "p.jsonl", '{"text": "x"}\n'))},
        ["data.sources.0.path", "prompt"],
    ),
    "jsonl not json": (
        lambda t: {"data__sources__0__path": str(_file(t, "p.jsonl", '{"prompt": "x"\n'))},
        ["data.sources.0.path", "p.jsonl:1"],
    ),
    "csv without prompt column": (
        lambda t: {"data__sources__0__path": str(_file(t, "p.csv", "text\nhello\n"))},
        ["data.sources.0.path", "prompt"],
    ),
    "edit source without images": (
        lambda t: {
            "data__sources__0__path": str(_file(t, "e.jsonl", '{"prompt": "make it red"}\n')),
            "data__sources__0__kind": "edit",
        },
        ["data.sources.0.path", "reference image"],
    ),
    "eval prompt file empty": (
        lambda t: {"eval__sources__0__path": str(_file(t, "ev.txt", "\n"))},
        ["eval.sources.0.path"],
    ),
    "sde window without a trainable step": (lambda t: {"rl__sde_window": [9, 10]}, ["rl.sde_window", "trainable"]),
    "sde window of the last step only": (
        lambda t: {"rl__num_steps": 4, "rl__sde_window": [3, 4], "eval__num_steps": 4},
        ["rl.sde_window"],
    ),
    "micro-batch does not divide the step": (
        lambda t: {"train__micro_batch_size": 6},
        ["train.micro_batch_size", "divisor"],
    ),
    "prompts over processes": (lambda t: {"distributed__num_processes": 3}, ["train.images_per_step", "processes"]),
    "unknown reward": (lambda t: {"rewards__ocr": {"name": "orc"}}, ["rewards.ocr.name", "unknown reward 'orc'"]),
    "unknown reward key": (
        lambda t: {"rewards__brightnes": {}, "data__sources__0__rewards": {"brightnes": 1.0}},
        ["rewards.brightnes", "unknown reward"],
    ),
    "unknown policy": (lambda t: {"policy__name": "deepgen_tiny"}, ["policy.name", "deepgen_tiny"]),
    "policy dotted path that does not import": (
        lambda t: {"policy__name": "no_such_pkg.mod:build"},
        ["policy.name", "no_such_pkg"],
    ),
    "policy kwarg that does not exist": (
        lambda t: {"policy__kwargs": {"seed": 0, "sed": 1}},
        ["policy.kwargs", "'sed'"],
    ),
    "reward kwarg that does not exist": (
        lambda t: {"rewards__ocr": {"kwargs": {"langauge": "en"}}},
        ["rewards.ocr.kwargs", "'langauge'"],
    ),
    "reward kwarg of a plain class": (
        lambda t: {"rewards__brightness": {"kwargs": {"gamma": 2}}},
        ["rewards.brightness.kwargs", "'gamma'"],
    ),
    "SFT data with no usable record": (
        lambda t: {
            "rl__sft_aux_coef": 0.001,
            "data__sft_sources": [
                {"name": "s", "path": str(_file(t, "sft.jsonl", '{"foo": 1}\n{"bar": 2}\n')), "format": "t2i"}
            ],
        },
        ["data.sft_sources.0.path", "no usable"],
    ),
    "SFT records whose images are missing": (
        lambda t: {
            "rl__sft_aux_coef": 0.001,
            "data__sft_sources": [
                {
                    "name": "s",
                    "path": str(_file(t, "sft.jsonl", '{"image_path": "nope.png", "txt": "a"}\n')),
                    "format": "t2i",
                }
            ],
        },
        ["data.sft_sources.0.path", "nope.png"],
    ),
    "SFT records not JSON": (
        lambda t: {
            "rl__sft_aux_coef": 0.001,
            "data__sft_sources": [{"name": "s", "path": str(_file(t, "sft.json", "[{,]")), "format": "t2i"}],
        },
        ["sft.json", "JSON"],
    ),
    "SFT shards that do not exist": (
        lambda t: {
            "rl__sft_aux_coef": 0.001,
            "data__sft_sources": [{"name": "s", "path": str(t / "shards" / "{000..003}.tar"), "format": "webdataset"}],
        },
        ["data.sft_sources.0.path", "shard"],
    ),
    "accelerate config not YAML": (
        lambda t: {"distributed__accelerate_config": str(_file(t, "acc.yaml", "a: [1,\n"))},
        ["distributed.accelerate_config"],
    ),
    "empty reward mixture": (lambda t: {"data__sources__0__rewards": {}}, ["data.sources.0.rewards", "empty"]),
    "local policy checkpoint missing": (lambda t: {"policy__checkpoint": "./nope.safetensors"}, ["policy.checkpoint"]),
    "reward kwarg path missing": (
        lambda t: {"rewards__ocr": {"kwargs": {"model_dir": "/nonexistent/ocr_models"}}},
        ["rewards.ocr.kwargs.model_dir", "/nonexistent/ocr_models"],
    ),
    "resume folder that does not exist": (
        lambda t: {"train__resume": str(t / "runs" / "step-000010")},
        ["train.resume"],
    ),
}


@pytest.mark.parametrize("case", list(CLASS1), ids=list(CLASS1))
def test_class1_trainer_errors_found_before_any_model(case, recipe, tmp_path, capsys, monkeypatch):
    import mrgrpo.trainer_base as tb

    changes, names = CLASS1[case]
    path = recipe(**changes(tmp_path))
    monkeypatch.setattr(tb, "build_policy", lambda cfg: pytest.fail("a model was built"))
    code, _, err = _cli(capsys, "train", path)
    _assert_clean_error(code, err, *names)
    code, _, err = _cli(capsys, "recipes", "validate", path)  # the same checks, without training
    _assert_clean_error(code, err, *names)


# -- 2. files that exist but cannot be read as text -------------------------------------------------------
def _unreadable(tmp_path: Path, kind: str) -> Path:
    return {
        "png": lambda: _file(tmp_path, "x.yaml", PNG),
        "jpeg": lambda: _file(tmp_path, "x.yaml", b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(20)),
        "binary": lambda: _file(tmp_path, "x.yaml", bytes(range(256)) * 4),
        "latin1": lambda: _file(tmp_path, "x.yaml", "stage: rl\n# caf\xe9\n".encode("latin-1")),
        "utf16": lambda: _file(tmp_path, "x.yaml", "stage: rl\n".encode("utf-16")),
        "gzip": lambda: _file(tmp_path, "x.yaml", b"\x1f\x8b\x08\x00" + bytes(16)),
        "folder": lambda: (tmp_path / "x.yaml").mkdir() or tmp_path / "x.yaml",
    }[kind]()


@pytest.mark.parametrize("kind", ["png", "jpeg", "binary", "latin1", "utf16", "gzip", "folder"])
@pytest.mark.parametrize("command", [("train",), ("recipes", "validate"), ("recipes", "show"), ("sample",)])
def test_class2_recipe_that_is_not_text(kind, command, tmp_path, capsys):
    path = _unreadable(tmp_path, kind)
    extra = ["--prompt", "x", "--out", str(tmp_path / "o.png")] if command == ("sample",) else []
    if command == ("sample",) and kind == "folder":
        extra = ["--prompt", "x"]  # a folder is taken as a saved policy: no policy.json
    code, _, err = _cli(capsys, *command, path, *extra)
    _assert_clean_error(code, err, "x.yaml")


PROMPT_FILES = {
    "latin-1 txt": ("p.txt", "caf\xe9 au lait\n".encode("latin-1"), "UTF-8"),
    "PNG named .txt": ("p.txt", PNG, "PNG"),
    "latin-1 jsonl": ("p.jsonl", '{"prompt": "caf\xe9"}\n'.encode("latin-1"), "UTF-8"),
    "latin-1 csv": ("p.csv", "prompt\ncaf\xe9\n".encode("latin-1"), "UTF-8"),
    "binary txt": ("p.txt", bytes(range(256)), "p.txt"),
    "folder as prompt file": ("pdir", None, "folder"),
}


@pytest.mark.parametrize("case", list(PROMPT_FILES), ids=list(PROMPT_FILES))
def test_class2_prompt_and_data_files_that_are_not_text(case, recipe, tmp_path, capsys):
    name, content, word = PROMPT_FILES[case]
    p = tmp_path / name
    if content is None:
        p.mkdir()
    else:
        p.write_bytes(content)
    path = recipe(data__sources__0__path=str(p))
    code, _, err = _cli(capsys, "train", path)
    _assert_clean_error(code, err, "data.sources.0.path", name, word)


def test_class2_sft_records_not_utf8(recipe, tmp_path, capsys):
    rec = _file(tmp_path, "sft.jsonl", '{"image_path": "a.png", "txt": "caf\xe9"}\n'.encode("latin-1"))
    path = recipe(rl__sft_aux_coef=0.001, data__sft_sources=[{"name": "s", "path": str(rec), "format": "t2i"}])
    code, _, err = _cli(capsys, "train", path)
    _assert_clean_error(code, err, "data.sft_sources.0.path", "UTF-8")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
@pytest.mark.parametrize("which", ["recipe", "prompt"])
def test_class2_no_read_permission(which, recipe, tmp_path, capsys):
    prompt = _file(tmp_path, "p.txt", "a prompt\n")
    path = recipe(data__sources__0__path=str(prompt))
    target = path if which == "recipe" else prompt
    target.chmod(0)
    try:
        code, _, err = _cli(capsys, "train", path)
    finally:
        target.chmod(0o644)
    _assert_clean_error(code, err, target.name, "permission")


# -- 3. values the schema used to accept that crashed deep inside ----------------------------------------
CLASS3 = {
    "negative seed": ({"train__seed": -1}, ["train.seed"]),
    "seed over 63 bits": ({"train__seed": 2**64}, ["train.seed"]),
    "beta1 of 1": ({"train__betas": [1.0, 0.999]}, ["train.betas", "[0, 1)"]),
    "beta2 over 1": ({"train__betas": [0.9, 1.5]}, ["train.betas"]),
    "negative beta": ({"train__betas": [-0.1, 0.999]}, ["train.betas"]),
    "three betas": ({"train__betas": [0.9, 0.99, 0.999]}, ["train.betas"]),
    "infinite lr": ({"train__lr": float("inf")}, ["train.lr"]),
    "nan lr": ({"train__lr": float("nan")}, ["train.lr"]),
    "zero lr": ({"train__lr": 0.0}, ["train.lr"]),
    "negative grad clip": ({"train__grad_clip": -1.0}, ["train.grad_clip"]),
    "nan noise level": ({"rl__noise_level": float("nan")}, ["rl.noise_level"]),
    "clip range reversed": ({"rl__clip_range": [0.2, 0.1]}, ["rl.clip_range"]),
    "negative clip range": ({"rl__clip_range": -0.1}, ["rl.clip_range"]),
    "size not a multiple of 16": ({"rl__height": 72}, ["rl.height"]),
    "sde window reversed": ({"rl__sde_window": [5, 2]}, ["rl.sde_window"]),
    "weight decay negative": ({"train__weight_decay": -0.1}, ["train.weight_decay"]),
}


@pytest.mark.parametrize("case", list(CLASS3), ids=list(CLASS3))
def test_class3_out_of_range_values(case, recipe, capsys):
    changes, names = CLASS3[case]
    code, _, err = _cli(capsys, "train", recipe(**changes))
    _assert_clean_error(code, err, *names)


@pytest.mark.parametrize("override", ["train.seed=-5", "train.betas=[0.9,1.0]", "train.lr=.inf", "rl.adv_eps=0"])
def test_class3_same_through_set(override, recipe, capsys):
    code, _, err = _cli(capsys, "train", recipe(), "--set", override)
    _assert_clean_error(code, err, override.split("=")[0])


# -- 4. output folders and `data synth` arguments -----------------------------------------------------------
@pytest.mark.parametrize(
    "case", ["file", "under a file", "checkpoints is a file", "config.yaml is a folder", "empty", "device file"]
)
def test_class4_output_dir_unusable(case, recipe, tmp_path, capsys):
    afile = _file(tmp_path, "afile", "x")
    out = {"file": afile, "under a file": afile / "run", "empty": "", "device file": "/dev/null"}.get(
        case, tmp_path / "out"
    )
    if case == "checkpoints is a file":
        _file(out, "checkpoints", "x")
    if case == "config.yaml is a folder":
        (out / "config.yaml").mkdir(parents=True)
    code, _, err = _cli(capsys, "train", recipe(output_dir=str(out)))
    _assert_clean_error(code, err, "output_dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_class4_output_dir_not_writable(recipe, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = _cli(capsys, "train", recipe(output_dir=str(ro / "run")))
    finally:
        ro.chmod(0o700)
    _assert_clean_error(code, err, "output_dir", "writable")


SYNTH = {
    "out is a file": (lambda t: ["--out", _file(t, "f", "x")], "--out"),
    "out under a file": (lambda t: ["--out", _file(t, "f", "x") / "sub"], "--out"),
    "n zero": (lambda t: ["--out", t / "d", "--n", "0"], "--n"),
    "n negative": (lambda t: ["--out", t / "d", "--n", "-3"], "--n"),
    "n not a number": (lambda t: ["--out", t / "d", "--n", "ten"], "--n"),
    "size zero": (lambda t: ["--out", t / "d", "--size", "0"], "--size"),
    "size too small": (lambda t: ["--out", t / "d", "--size", "4"], "--size"),
    "size negative": (lambda t: ["--out", t / "d", "--size", "-64"], "--size"),
    "size huge": (lambda t: ["--out", t / "d", "--size", "100000"], "--size"),
    "seed negative": (lambda t: ["--out", t / "d", "--seed", "-1"], "--seed"),
    "images is a file": (lambda t: ["--out", _file(t, "d/images", "x").parent], "images"),
    "out missing": (lambda t: [], "--out"),
}


@pytest.mark.parametrize("case", list(SYNTH), ids=list(SYNTH))
def test_class4_data_synth_arguments_checked_first(case, tmp_path, capsys, monkeypatch):
    import mrgrpo.sft_data.synth as synth

    monkeypatch.setattr(synth, "synthesize", lambda *a, **k: pytest.fail("synthesize ran"))
    argv, name = SYNTH[case]
    code, _, err = _cli(capsys, "data", "synth", *argv(tmp_path))
    _assert_clean_error(code, err, name)
