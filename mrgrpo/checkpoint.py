"""Atomic checkpoints and exact resume.

Layout of ``output_dir/checkpoints/step-XXXXXX/``::

    policy/              policy.save(): trained weights only (LoRA adapter / DiT / SCB)
    optimizer.pt         optimizer state (non-DeepSpeed), scheduler.pt, ema.pt
    deepspeed/           engine.save_checkpoint (DeepSpeed: partitioned optimizer states)
    rng-rank{r}.pt       python / numpy / torch (CPU + CUDA) RNG of every rank
    trainer_state.json   step, data cursor, anything the trainer keeps
    COMPLETE             written last; a folder without it is ignored

Everything is written into ``.tmp-step-XXXXXX`` first, fsynced, then renamed: a crash at any
moment leaves either the previous checkpoints or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    """The checkpoint to resume from: ``auto`` = latest complete one (None if there is none)."""
    if resume is None:
        return None
    if resume == "auto":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    p = Path(resume)
    if not (p / "COMPLETE").exists():
        raise FileNotFoundError(f"train.resume={resume!r} is not a complete checkpoint folder (no COMPLETE marker). Fix: pass a checkpoints/step-XXXXXX folder or `auto`.")
    return p


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
