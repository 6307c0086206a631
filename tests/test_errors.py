"""Every bad input a clear error: one message naming the field or file, a non-zero exit, no traceback.

One parametrised test per class of mistakes (issue 15); the CLI runs in-process (``mrgrpo.cli.main``).
Damaged checkpoints (class 5) are in ``tests/trainer/test_checkpoint_damage.py`` (they need a run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from mrgrpo.cli import main

REPO = Path(__file__).resolve().parent.parent
PROMPTS = REPO / "recipes" / "prompts"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(32)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_clean_error(code: int, err: str, *names: str) -> None:
    assert code != 0, err
    assert "Traceback" not in err, err
    assert "error" in err.lower() or "FAIL" in err, err
    for name in names:
        assert name in err, f"{name!r} not in:\n{err}"


@pytest.fixture
def recipe(tmp_path):
    """``recipe(**changes)``: the quickstart recipe (absolute prompt paths, output in tmp) with
    ``changes`` applied as dotted keys, written to a file; returns its path."""
    base = yaml.safe_load((REPO / "recipes" / "smoke_pixel.yaml").read_text())
    for src in base["data"]["sources"] + base["eval"]["sources"]:
        src["path"] = str(PROMPTS / Path(src["path"]).name)
    base["output_dir"] = str(tmp_path / "run")

    def make(name: str = "r.yaml", **changes) -> Path:
        data = json.loads(json.dumps(base))
        for key, value in changes.items():
            node = data
            parts = key.split("__")
            for p in parts[:-1]:
                node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
            if isinstance(node, list):
                node[int(parts[-1])] = value
            else:
                node[parts[-1]] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return make


def _file(tmp_path: Path, name: str, content: bytes | str) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


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


# -- 6. `mrgrpo sample` ----------------------------------------------------------------------------------
def _saved_policy(tmp_path: Path, content: str | None) -> Path:
    d = tmp_path / "saved"
    d.mkdir()
    if content is not None:
        (d / "policy.json").write_text(content)
    return d


SAMPLE = {
    "image is text": (lambda t: ["--image", _file(t, "ref.png", "not an image")], "ref.png"),
    "image is truncated PNG": (lambda t: ["--image", _file(t, "ref.png", PNG[:12])], "ref.png"),
    "image is a folder": (lambda t: ["--image", t], "--image"),
    "image missing": (lambda t: ["--image", t / "nope.png"], "nope.png"),
    "negative height": (lambda t: ["--height", "-64"], "--height"),
    "zero width": (lambda t: ["--width", "0"], "--width"),
    "steps zero": (lambda t: ["--steps", "0"], "--steps"),
    "steps negative": (lambda t: ["--steps", "-5"], "--steps"),
    "cfg nan": (lambda t: ["--cfg", "nan"], "--cfg"),
    "cfg negative": (lambda t: ["--cfg", "-1"], "--cfg"),
    "seed negative": (lambda t: ["--seed", "-1"], "--seed"),
    "out is a folder": (lambda t: ["--out", t], "--out"),
    "out ends in a slash": (lambda t: ["--out", f"{t}/new/"], "--out"),
    "out not an image type": (lambda t: ["--out", t / "o.txt"], "--out"),
    "out under a file": (lambda t: ["--out", _file(t, "f", "x") / "o.png"], "--out"),
    "empty prompt": (lambda t: ["--prompt", "  "], "--prompt"),
}


@pytest.mark.parametrize("case", list(SAMPLE), ids=list(SAMPLE))
def test_class6_sample_arguments(case, recipe, tmp_path, capsys, monkeypatch):
    import mrgrpo.sample as sample

    monkeypatch.setattr(sample, "_build", lambda args: pytest.fail("the policy was built"))
    extra, name = SAMPLE[case]
    argv = ["sample", recipe(), "--prompt", "a red square", "--out", tmp_path / "o.png", *extra(tmp_path)]
    code, _, err = _cli(capsys, *argv)
    _assert_clean_error(code, err, name)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[1, 2]",
        '{"kwargs": {}}',
        '{"name": 3}',
        '{"name": "x", "kwargs": [1]}',
        None,
        '{"name": "no-such-policy", "kwargs": {}}',
    ],
    ids=[
        "garbage",
        "empty",
        "a list",
        "no name",
        "name not a string",
        "kwargs not a mapping",
        "missing",
        "unknown policy",
    ],
)
def test_class6_damaged_policy_json(content, tmp_path, capsys):
    folder = _saved_policy(tmp_path, content)
    code, _, err = _cli(capsys, "sample", folder, "--prompt", "x", "--out", tmp_path / "o.png")
    _assert_clean_error(code, err, "policy")
    if content not in (None, '{"name": "no-such-policy", "kwargs": {}}'):
        assert "policy.json" in err


# -- 7. silent fallbacks ---------------------------------------------------------------------------------------
def test_class7_output_dir_env_expansion(recipe, tmp_path, monkeypatch):
    from mrgrpo.config import load_recipe

    monkeypatch.setenv("RUN_NAME", "exp1")
    cfg = load_recipe(recipe(output_dir=str(tmp_path / "runs" / "${RUN_NAME}")))
    assert cfg.output_dir == str(tmp_path / "runs" / "exp1")
    cfg = load_recipe(recipe(output_dir="~/runs/${NOT_SET_15:-dflt}"))
    assert cfg.output_dir == os.path.expanduser("~/runs/dflt")
    monkeypatch.setenv("RES", str(tmp_path / "ck"))
    assert load_recipe(recipe(), ["train.resume=${RES}/step-000002"], check_files=False).train.resume == str(
        tmp_path / "ck" / "step-000002"
    )


SILENT = {
    "output_dir with an unset variable": (
        ["train"],
        {"output_dir": "runs/${RUN_NAME_UNSET_15}"},
        ["output_dir", "RUN_NAME_UNSET_15"],
    ),
    "prompt path with an unset variable": (
        ["train"],
        {"data__sources__0__path": "${PROMPTS_UNSET_15}/p.txt"},
        ["data.sources.0.path", "PROMPTS_UNSET_15"],
    ),
    "validate: unregistered reward": (
        ["recipes", "validate"],
        {"rewards__ocr": {"name": "ocrr"}},
        ["rewards.ocr.name", "ocrr"],
    ),
    "validate: unregistered policy": (
        ["recipes", "validate"],
        {"policy__name": "deepgen-small"},
        ["policy.name", "deepgen-small"],
    ),
    "validate: unknown policy kwarg": (
        ["recipes", "validate"],
        {"policy__kwargs": {"seeed": 1}},
        ["policy.kwargs", "seeed"],
    ),
    "validate --no-files still checks names": (
        ["recipes", "validate", "--no-files"],
        {"rewards__clip": {"name": "clip_score"}},
        ["clip_score"],
    ),
    "resume from a folder that is no checkpoint": (
        ["train"],
        {"train__resume": "/nonexistent/step-000002"},
        ["train.resume"],
    ),
}


@pytest.mark.parametrize("case", list(SILENT), ids=list(SILENT))
def test_class7_silent_fallbacks_are_errors(case, recipe, capsys, monkeypatch):
    command, changes, names = SILENT[case]
    for var in ("RUN_NAME_UNSET_15", "PROMPTS_UNSET_15"):
        monkeypatch.delenv(var, raising=False)
    path = recipe(**changes)
    argv = [*command[:2], path, *command[2:]] if command[0] == "recipes" else [*command, path]
    code, _, err = _cli(capsys, *argv)
    _assert_clean_error(code, err, *names)


def test_class7_sample_steps_zero_is_not_the_default(recipe, tmp_path, capsys):
    code, _, err = _cli(capsys, "sample", recipe(), "--prompt", "x", "--steps", "0", "--out", tmp_path / "o.png")
    _assert_clean_error(code, err, "--steps")


# -- the boundary itself ----------------------------------------------------------------------------------------
def test_unexpected_errors_keep_their_traceback_and_say_how_to_report(monkeypatch, capsys):
    import mrgrpo.cli as cli

    def boom(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_cmd_recipes_schema", boom)
    code, _, err = _cli(capsys, "recipes", "schema")
    assert code == 1 and "Traceback" in err and "ZeroDivisionError" in err and "report" in err


@pytest.mark.parametrize("how", ["flag before", "flag after", "env"])
def test_debug_shows_the_traceback_of_expected_errors(how, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope.yaml"
    argv = {
        "flag before": ["--debug", "train", missing],
        "flag after": ["train", missing, "--debug"],
        "env": ["train", missing],
    }[how]
    if how == "env":
        monkeypatch.setenv("MRGRPO_DEBUG", "1")
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and "Traceback" in err and "nope.yaml" in err


def test_ctrl_c_is_a_clean_exit(monkeypatch, capsys):
    import mrgrpo.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_recipes_schema", interrupted)
    code, _, err = _cli(capsys, "recipes", "schema")
    assert code == 130 and "Traceback" not in err and "interrupted" in err


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError(2, "No such file or directory", "/x/y.bin"),
        PermissionError(13, "Permission denied", "/x/y.bin"),
        IsADirectoryError(21, "Is a directory", "/x/y.bin"),
        OSError(28, "No space left on device"),
        ModuleNotFoundError("No module named 'open_clip'", name="open_clip"),
        MemoryError(),
    ],
)
def test_file_errors_from_anywhere_are_one_line(exc, monkeypatch, capsys):
    import mrgrpo.cli as cli

    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "_cmd_recipes_schema", fail)
    code, _, err = _cli(capsys, "recipes", "schema")
    _assert_clean_error(code, err, "Fix:")
    assert getattr(exc, "filename", None) is None or "/x/y.bin" in err


ENVIRONMENT = {
    "fp16 without a GPU": ({"train__mixed_precision": "fp16"}, "train.mixed_precision"),
    "nccl without a GPU": ({"distributed__backend": "nccl"}, "distributed.backend"),
    "wandb not installed": ({"logging__wandb": True}, "logging.wandb"),
}


@pytest.mark.parametrize("case", list(ENVIRONMENT), ids=list(ENVIRONMENT))
def test_class1_what_the_machine_lacks_is_found_at_the_start_of_train(case, recipe, capsys):
    import importlib.util

    import torch

    if case != "wandb not installed" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if case == "wandb not installed" and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    changes, field = ENVIRONMENT[case]
    code, _, err = _cli(capsys, "train", recipe(**changes))
    _assert_clean_error(code, err, field)


@pytest.mark.parametrize(
    "which", ["run folder", "checkpoints folder", "missing", "a file", "empty folder", "write never finished"]
)
def test_class5_resume_from_something_that_is_not_a_checkpoint(which, recipe, tmp_path, capsys):
    run = tmp_path / "old"
    step = run / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    unfinished = run / "checkpoints" / "step-000004"
    _file(unfinished, "trainer_state.json", '{"step": 4, "optimizer_steps": 4}')  # no COMPLETE: a crash mid-write
    target = {
        "run folder": run,
        "checkpoints folder": run / "checkpoints",
        "missing": tmp_path / "gone",
        "a file": _file(tmp_path, "ck.pt", "x"),
        "empty folder": step,
        "write never finished": unfinished,
    }[which]
    code, _, err = _cli(capsys, "train", recipe(), "--resume", target)
    _assert_clean_error(code, err, "train.resume", target.name)
    why = {
        "empty folder": "not a checkpoint folder",
        "write never finished": "incomplete",
        "run folder": "output folder",
    }
    assert why.get(which, "") in err


def test_class6_sample_from_a_checkpoint_folder_points_at_its_policy(tmp_path, capsys):
    ck = tmp_path / "step-000002"
    (ck / "policy").mkdir(parents=True)
    (ck / "policy" / "policy.json").write_text('{"name": "deepgen-tiny", "kwargs": {}}')
    code, _, err = _cli(capsys, "sample", ck, "--prompt", "x", "--out", tmp_path / "o.png")
    _assert_clean_error(code, err, "policy.json", str(ck / "policy"))


@pytest.mark.parametrize("name", ["p.txt", "p.jsonl", "p.csv"])
def test_class2_a_byte_order_mark_is_not_part_of_the_first_prompt(name, tmp_path):
    from mrgrpo.prompts import load_prompt_file

    body = {
        "p.txt": "first\nsecond\n",
        "p.jsonl": '{"prompt": "first"}\n{"prompt": "second"}\n',
        "p.csv": "prompt\nfirst\nsecond\n",
    }[name]
    path = _file(tmp_path, name, b"\xef\xbb\xbf" + body.encode())  # as Excel and Notepad save UTF-8
    assert [r.prompt for r in load_prompt_file(path, source="s")] == ["first", "second"]
