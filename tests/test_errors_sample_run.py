"""Clear errors, part 2 (part 1: tests/test_errors.py): `mrgrpo sample`, silent fallbacks, the error boundary,
what the machine lacks, resume targets that are not checkpoints, prompt files with a byte-order mark."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from errors_cli import PNG, _assert_clean_error, _cli, _file, recipe_factory


@pytest.fixture
def recipe(tmp_path):
    """``recipe(**changes)``: the smoke recipe with ``changes`` (dotted keys as ``a__b``), written to a file."""
    return recipe_factory(tmp_path)


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
