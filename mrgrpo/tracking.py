"""Run tracking: metrics.jsonl, TensorBoard, optional W&B, reward curves, sample grids, progress bar.

Only the main process writes. ``metrics.jsonl`` holds one JSON object per logged step; on resume
it is truncated to the resumed step so a killed-and-resumed run reads like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a torn last line, from a crash, is ignored)."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: str | os.PathLike, last_step: int) -> None:
    """Keep only records with ``step <= last_step`` (atomic rewrite)."""
    p = Path(path)
    if not p.exists():
        return
    kept = [r for r in read_metrics(p) if int(r.get("step", -1)) <= last_step]
    tmp = p.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, p)


def plot_curves(
    metrics_path: str | os.PathLike,
    out_path: str | os.PathLike,
    prefixes: Sequence[str] = ("reward", "eval"),
    title: str = "",
) -> None:
    """Curves of the ``metrics.jsonl`` keys starting with ``prefixes`` against step (PNG)."""
    plot_reward_curves(read_metrics(metrics_path), out_path, title=title or "MR-GRPO rewards", prefixes=prefixes)


DIAGNOSTICS = ("invalid_frac", "zero_std_frac", "/failures", "/std")


def running_mean(steps: Sequence[float], values: Sequence[float], n: int) -> tuple[list[float], list[float]]:
    """Trailing mean over ``n`` points: ``(steps[n-1:], means)``; the input as it is when shorter than ``n``."""
    if len(values) < n:
        return list(steps), list(values)
    return list(steps[n - 1 :]), np.convolve(values, np.ones(n) / n, mode="valid").tolist()


def curve_keys(records: Sequence[dict[str, Any]], prefixes: Sequence[str] = ("reward", "eval")) -> list[str]:
    """The metric names :func:`plot_reward_curves` draws: under ``prefixes``, without the diagnostics."""
    return sorted({k for r in records for k in r if k.split("/")[0] in prefixes and not k.endswith(DIAGNOSTICS)})


def plot_reward_curves(
    records: Sequence[dict[str, Any]],
    out_path: str | os.PathLike,
    title: str = "MR-GRPO rewards",
    prefixes: Sequence[str] = ("reward", "eval"),
) -> None:
    """``reward*`` and ``eval*`` (or other ``prefixes``) curves against step, one panel, saved as PNG (atomic).

    Diagnostics (``*/invalid_frac``, ``*/zero_std_frac``, ``*/failures``, ``*/std``) are left out. A per-step
    curve of more than ``2 * smooth`` points is drawn faint with its running mean over ``smooth = 5`` steps
    on top (the label says so); ``eval/*`` points (a few steps apart) are drawn as they are, with markers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = curve_keys(records, prefixes)
    smooth = 5
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if k in r and isinstance(r[k], (int, float)) and math.isfinite(r[k])]
        if not pts:
            continue
        xs, ys = zip(*pts)
        width = 2 if k in ("reward/mean", "loss") else 1
        if k.startswith("eval/") or len(ys) <= 2 * smooth:
            ax.plot(xs, ys, label=k, marker="o" if k.startswith("eval/") else None, linewidth=width)
            continue
        (raw,) = ax.plot(xs, ys, linewidth=0.6, alpha=0.3)
        mx, my = running_mean(xs, ys, smooth)
        ax.plot(mx, my, color=raw.get_color(), linewidth=width + 0.5, label=f"{k} ({smooth}-step mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("/".join(prefixes))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = Path(str(out_path) + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_path)


def save_image_grid(pixels: torch.Tensor, path: str | os.PathLike, nrow: int) -> None:
    """Save images ``[N, 3, H, W]`` in [0, 1] as one PNG grid (``nrow`` images per row)."""
    from torchvision.utils import save_image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(pixels.detach().float().clamp(0, 1).cpu(), str(path), nrow=max(1, nrow), padding=2)


class Tracker:
    """Writes metrics and artefacts of a run under ``output_dir``.

    Args:
        output_dir: the run folder.
        enabled: False on non-main processes (everything becomes a no-op).
        tensorboard, wandb: extra sinks.
        config: the resolved recipe (logged to W&B).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "mrgrpo",
        config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ):
        self.dir = Path(output_dir)
        self.enabled = enabled
        self.metrics_path = self.dir / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_metrics(self.metrics_path, resume_step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    str(self.dir / "tensorboard"), purge_step=resume_step + 1 if resume_step is not None else None
                )
            except Exception as exc:  # tensorboard is optional at run time
                print(f"warning: tensorboard disabled ({exc})")
        if wandb:
            try:
                import wandb as _wandb
            except ImportError as exc:
                raise RuntimeError(
                    "logging.wandb is true but wandb is not installed. Fix: pip install wandb, or set "
                    "logging.wandb: false."
                ) from exc
            self._wandb = _wandb.init(project=wandb_project, dir=str(self.dir), config=config, resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one record (``step`` plus finite numbers) to every sink."""
        if not self.enabled:
            return
        record: dict[str, float] = {"step": int(step)}
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if isinstance(v, (int, float)):
                record[k] = float(v)
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step":
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)

    def plot(self) -> None:
        """Redraw ``reward_curve.png`` from ``metrics.jsonl``."""
        if self.enabled:
            plot_reward_curves(read_metrics(self.metrics_path), self.dir / "reward_curve.png")

    def save_samples(
        self, step: int, pixels: torch.Tensor, nrow: int, captions: Sequence[str] | None = None, name: str = "samples"
    ) -> Path | None:
        """Write ``<name>/step-XXXXXX.png`` (and the captions next to it)."""
        if not self.enabled:
            return None
        path = self.dir / name / f"step-{step:06d}.png"
        save_image_grid(pixels, path, nrow)
        if captions is not None:
            path.with_suffix(".txt").write_text("\n".join(captions) + "\n")
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def progress(total: int, initial: int, enabled: bool, desc: str):
    """A tqdm progress bar (disabled off the main process)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True)
