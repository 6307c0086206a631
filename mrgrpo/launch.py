"""``mrgrpo train RECIPE --launch``: re-run the same command under ``accelerate launch``."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from mrgrpo.config import RecipeError, RunConfig


def launch_command(cfg: RunConfig, recipe: str, overrides: list[str]) -> list[str]:
    """The ``accelerate launch`` command line for a recipe (no ``--launch`` inside, so no recursion)."""
    if not cfg.distributed.accelerate_config:
        raise RecipeError(
            "--launch needs distributed.accelerate_config (e.g. accelerate/deepspeed_zero2.yaml). Fix: set it in "
            "the recipe or with --set."
        )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(cfg.resolve_path(cfg.distributed.accelerate_config)),
    ]
    if cfg.distributed.num_processes:
        cmd += ["--num_processes", str(cfg.distributed.num_processes)]
    cmd += ["-m", "mrgrpo.cli", "train", recipe]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def relaunch(cfg: RunConfig, recipe: str, overrides: list[str]) -> int:
    cmd = launch_command(cfg, recipe, overrides)
    print("launching:", " ".join(shlex.quote(c) for c in cmd), flush=True)
    return subprocess.call(cmd, env=os.environ.copy())
