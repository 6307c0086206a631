"""Atomic checkpoints and exact resume.

Layout of ``output_dir/checkpoints/step-XXXXXX/``::

    policy/              policy.save(): trained weights only (LoRA adapter / DiT / SCB)
    optimizer.pt         optimizer state (non-DeepSpeed), scheduler.pt, ema.pt
    deepspeed/           engine.save_checkpoint (DeepSpeed: partitioned optimizer states)
    rng-rank{r}.pt       python / numpy / torch (CPU + CUDA) RNG of every rank
    trainer_state.json   step, data cursor, anything the trainer keeps
    MANIFEST.json        size and SHA-256 of every file above, written once they are all on disk
    COMPLETE             written last; a folder without it is ignored

Everything is written into ``.tmp-step-XXXXXX`` first, fsynced, then renamed: a crash at any
moment leaves either the previous checkpoints or the new one, never a half-written one. The
manifest catches what the rename cannot: a file damaged later (a disk error, a truncated copy, an
edit). :func:`verify_checkpoint` checks it before a resume; :func:`load_with_fallback` resumes
from the newest intact checkpoint (``auto``) and says which damaged ones it skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrgrpo.errors import CheckpointError, MrgrpoError

MANIFEST = "MANIFEST.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def tmp_dir_for(output_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_root(output_dir) / f".tmp-step-{step:06d}"


def final_dir_for(output_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step-{step:06d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "COMPLETE").exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: ``auto`` = the newest intact one (None if there is none).

    Damaged checkpoints are skipped with a warning under ``auto``; an explicit folder that is not an
    intact checkpoint raises :class:`CheckpointError`.
    """
    found = resume_candidates(resume, output_dir)
    return found[0] if found else None


def resume_candidates(resume: str | None, output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints to try, best first: the explicit one (verified), or under ``auto`` every complete
    one newest first (none verified here: :func:`load_with_fallback` verifies each before loading)."""
    if resume is None:
        return []
    if resume == "auto":
        return list(reversed(list_checkpoints(output_dir)))
    p = Path(resume)
    verify_checkpoint(p, field="train.resume")
    return [p]


def load_with_fallback(resume: str | None, output_dir: str | os.PathLike, load: Callable[[Path], None]) -> Path | None:
    """Verify and ``load`` the checkpoint to resume from; returns it (None: nothing to resume).

    Under ``auto`` a damaged checkpoint (bad manifest, or a file that fails to load) is reported and
    the next older one is tried; when none is intact a :class:`CheckpointError` lists them all.
    """
    candidates = resume_candidates(resume, output_dir)
    damaged: list[str] = []
    for path in candidates:
        try:
            verify_checkpoint(path)
            load(path)
        except CheckpointError as exc:
            if resume != "auto":
                if str(exc).startswith("train.resume"):
                    raise
                raise CheckpointError(
                    f"train.resume={resume!r}: {exc} Fix: resume from an older checkpoint, "
                    "or `--resume` (auto) to take the newest intact one."
                ) from exc
            damaged.append(str(exc))
            _warn(f"warning: {exc}")
            continue
        if damaged:
            _warn(f"warning: resuming from {path}, the newest intact checkpoint ({len(damaged)} newer one(s) damaged).")
        return path
    if not damaged and resume == "auto":
        _warn(f"note: --resume: no checkpoint in {checkpoint_root(output_dir)} yet; starting from step 0.")
    if damaged:
        raise CheckpointError(
            f"no intact checkpoint in {checkpoint_root(output_dir)}: {len(damaged)} damaged. "
            "Fix: resume from a copy, or move the checkpoints folder away to start the run afresh."
        )
    return None


def _warn(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, step: int) -> dict[str, Any]:
    """Write ``MANIFEST.json`` (relative path -> size, SHA-256 of every file in ``folder``) atomically."""
    files = {}
    for root, _dirs, names in os.walk(folder):
        for name in sorted(names):
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if rel in (MANIFEST, "COMPLETE") or rel.endswith(".tmp"):
                continue
            files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    manifest = {"format": 1, "step": int(step), "files": files}
    write_json(folder / MANIFEST, manifest)
    return manifest


def verify_checkpoint(path: str | os.PathLike, *, field: str | None = None, hashes: bool = True) -> None:
    """Raise :class:`CheckpointError` naming the damaged file unless ``path`` is an intact checkpoint.

    Intact: a folder with ``COMPLETE`` whose ``MANIFEST.json`` lists files that all exist with the
    recorded size (and SHA-256 when ``hashes``). A checkpoint written before manifests existed is
    accepted when its ``trainer_state.json`` parses.
    """
    p = Path(path)
    where = f"{field}={str(p)!r}" if field else f"checkpoint {p}"
    fix = "pass a checkpoints/step-XXXXXX folder, or `--resume` (auto) to take the newest intact one"
    if not p.is_dir():
        what = "a file" if p.exists() else "it does not exist"
        raise CheckpointError(f"{where} is not a checkpoint folder ({what}). Fix: {fix}.")
    if (p / "checkpoints").is_dir() or p.name == "checkpoints":
        kind = "checkpoints" if p.name == "checkpoints" else "output"
        raise CheckpointError(
            f"{where} is a run's {kind} folder, not one checkpoint. Fix: `--resume` (auto) takes "
            f"its newest intact checkpoint; or pass one of "
            f"{checkpoint_root(p.parent if p.name == 'checkpoints' else p)}/step-XXXXXX."
        )
    if not (p / "COMPLETE").is_file() and not any((p / n).exists() for n in ("trainer_state.json", "policy", MANIFEST)):
        raise CheckpointError(
            f"{where} is not a checkpoint folder (none of COMPLETE, trainer_state.json, policy/ in it). Fix: {fix}."
        )
    if not (p / "COMPLETE").is_file():
        raise CheckpointError(f"{where} is incomplete (no COMPLETE marker: its write did not finish). Fix: {fix}.")
    manifest_path = p / MANIFEST
    if not manifest_path.exists():
        _read_state(p)  # legacy checkpoint: at least its state must parse
        return
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        assert isinstance(files, dict)
    except Exception:  # noqa: BLE001 - any failure means the same thing
        raise CheckpointError(
            f"{where}: the file {manifest_path} is damaged (not a valid manifest). Fix: {fix}."
        ) from None
    for rel, info in sorted(files.items()):
        f = p / rel
        if not f.is_file():
            raise CheckpointError(f"{where}: the file {f} is missing. Fix: {fix}.")
        size = f.stat().st_size
        if size != info.get("size"):
            raise CheckpointError(
                f"{where}: the file {f} is damaged ({size} bytes, {info.get('size')} when written). Fix: {fix}."
            )
        if hashes and _sha256(f) != info.get("sha256"):
            raise CheckpointError(
                f"{where}: the file {f} is damaged (its SHA-256 differs from the one recorded "
                f"when it was written). Fix: {fix}."
            )


def _read_state(path: Path) -> dict[str, Any]:
    f = path / "trainer_state.json"
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
        int(state["step"]), int(state["optimizer_steps"])
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: the file {f} is missing.") from None
    except Exception:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path}: the file {f} is damaged (not the trainer's JSON state).") from None
    return state


def read_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint (:class:`CheckpointError` naming it when damaged)."""
    return _read_state(Path(path))


def load_part(path: Path, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` (loading ``path``), any failure turned into a :class:`CheckpointError` naming ``path``."""
    try:
        return fn()
    except MrgrpoError:  # already says what is wrong (e.g. the recipe's sources differ from the checkpoint's)
        raise
    except Exception as exc:  # noqa: BLE001 - torch/safetensors/pickle raise many kinds
        raise CheckpointError(
            f"checkpoint {path.parent if path.name else path}: the {what} {path} is damaged or "
            f"unreadable ({type(exc).__name__}: {str(exc)[:200]})."
        ) from exc


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def begin(output_dir: str | os.PathLike, step: int, is_main: bool) -> Path:
    """Create (main process) a fresh temp folder for the checkpoint of ``step``."""
    tmp = tmp_dir_for(output_dir, step)
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    return tmp


def commit(output_dir: str | os.PathLike, step: int, keep_last: int) -> Path:
    """Main process: fsync, mark complete, rename into place, prune old checkpoints."""
    tmp = tmp_dir_for(output_dir, step)
    write_manifest(tmp, step)
    (tmp / "COMPLETE").write_text(str(step))
    _fsync_tree(tmp)
    final = final_dir_for(output_dir, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoint_root(output_dir).glob(".tmp-step-*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final
