"""Damaged checkpoints (issue 15, class 5): a clear message naming the file; ``--resume`` (auto) falls
back to the newest intact checkpoint and says so; a checkpoint without its manifest or marker never
counts as complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mrgrpo import checkpoint as ckpt
from mrgrpo.cli import main
from mrgrpo.errors import CheckpointError
from mrgrpo.tracking import read_metrics


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 4-step toy run with checkpoints at steps 2 and 4 (trained once per module)."""
    tmp = tmp_path_factory.mktemp("damage")
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(16)) + "\n")
    recipe = {
        "stage": "rl",
        "output_dir": str(tmp / "run"),
        "policy": {"name": "toy_policy:ToyPolicy", "kwargs": {"seed": 0}},
        "rewards": {"bright": {"name": "toy_rewards:brightness"}},
        "data": {"sources": [{"name": "a", "path": str(prompts), "rewards": {"bright": 1.0}}]},
        "rl": {
            "sampler": "sde",
            "noise_level": 0.7,
            "num_steps": 4,
            "group_size": 4,
            "height": 16,
            "width": 16,
            "beta": 0.0,
            "sft_aux_coef": 0.0,
        },
        "train": {
            "lr": 1e-3,
            "images_per_step": 8,
            "micro_batch_size": 8,
            "max_steps": 4,
            "mixed_precision": "no",
            "warmup_steps": 0,
            "checkpoint_every": 2,
            "keep_last": 3,
            "seed": 0,
        },
        "logging": {"tensorboard": False, "progress_bar": False, "sample_every": 100},
        "eval": {"every": 100},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0
    return tmp


@pytest.fixture
def run(finished_run, tmp_path):
    """A fresh copy of the finished run and its recipe (pointed at the copy)."""
    out = tmp_path / "run"
    shutil.copytree(finished_run / "run", out)
    recipe = yaml.safe_load((finished_run / "recipe.yaml").read_text())
    recipe["output_dir"] = str(out)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, out


def _truncate(p: Path, keep: float = 0.5) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "truncated trainer state": ("trainer_state.json", lambda p: _truncate(p)),
    "trainer state not JSON": ("trainer_state.json", lambda p: p.write_text("{step: ")),
    "truncated optimizer": ("optimizer.pt", lambda p: _truncate(p)),
    "garbage optimizer": ("optimizer.pt", lambda p: p.write_bytes(b"\x00garbage" * (p.stat().st_size // 8))),
    "truncated scheduler": ("scheduler.pt", lambda p: _truncate(p, 0.2)),
    "empty rng state": ("rng-rank0.pt", lambda p: p.write_bytes(b"")),
    "truncated weights": ("policy/policy.safetensors", lambda p: _truncate(p)),
    "one flipped byte in the weights": (
        "policy/policy.safetensors",
        lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1])),
    ),
    "missing optimizer": ("optimizer.pt", lambda p: p.unlink()),
    "garbage manifest": ("MANIFEST.json", lambda p: p.write_text("not json")),
    # written before manifests existed: found when loading, named all the same
    "legacy: truncated optimizer": ("optimizer.pt", lambda p: (p.parent / "MANIFEST.json").unlink() or _truncate(p)),
    "legacy: garbage weights": (
        "policy/policy.safetensors",
        lambda p: (p.parents[1] / "MANIFEST.json").unlink() or p.write_bytes(b"garbage"),
    ),
}


def _damage(folder: Path, case: str) -> Path:
    rel, how = DAMAGE[case]
    target = folder / rel
    if not target.exists():  # the toy policy's file name
        target = next(f for f in sorted((folder / "policy").iterdir()) if f.is_file() and f.suffix != ".json")
    how(target)
    return target


@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_on_auto_resume(case, run, capsys):
    recipe, out = run
    newest = out / "checkpoints" / "step-000004"
    target = _damage(newest, case)
    named = "policy" if case == "legacy: garbage weights" else target.name  # policy.load takes the folder
    if not case.startswith("legacy"):  # the manifest finds it without loading anything
        with pytest.raises(CheckpointError, match=str(newest)):
            ckpt.verify_checkpoint(newest)
    # an explicit resume from the damaged folder: one clear message naming the file, nothing trained
    code = main(["train", str(recipe), "--resume", str(newest)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "train.resume" in err and named in err, err
    # auto resume: a warning naming the damaged file, then the run resumes from step 2 and finishes
    assert main(["train", str(recipe), "--resume", "--set", "train.max_steps=5"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert named in err and "step-000002" in err and "intact" in err, err
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps[-3:] == [3, 4, 5], steps


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(run, capsys):
    recipe, out = run
    for folder in ckpt.list_checkpoints(out):
        _damage(folder, "truncated optimizer")
    code = main(["train", str(recipe), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "no intact checkpoint" in err and "optimizer.pt" in err


def test_manifest_lists_every_file_and_an_unfinished_write_is_never_complete(run):
    _, out = run
    folder = out / "checkpoints" / "step-000004"
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {ckpt.MANIFEST, "COMPLETE"}
    assert set(manifest["files"]) == on_disk and manifest["step"] == 4
    assert all(info["size"] == (folder / rel).stat().st_size for rel, info in manifest["files"].items())
    ckpt.verify_checkpoint(folder)
    # a crash before the marker: the folder is not listed, an explicit resume says it is incomplete
    (folder / "COMPLETE").unlink()
    assert folder not in ckpt.list_checkpoints(out)
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.verify_checkpoint(folder)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        ckpt.verify_checkpoint(out / "checkpoints" / "step-000099")
