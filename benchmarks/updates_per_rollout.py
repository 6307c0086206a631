"""Which `train.updates_per_rollout` learns fastest: per rollout and per second.

    python benchmarks/updates_per_rollout.py [--steps 40] [--seeds 0 1 2] \
        [--settings 1 2 per_timestep] [--recipe R] [--metric M] [--set k=v ...] --out results.json

For each setting and seed, trains ``--recipe`` (default ``recipes/smoke_pixel.yaml``: tiny DeepGen,
brightness + colour + OCR mixtures) for ``--steps`` rollouts and reports the rise of ``--metric``
(default ``reward/brightness``; mean of the last 10 steps minus mean of the first 10), that rise per
rollout and per second of wall time, the mean step time and the mean ratio / clip fraction.
The toy world: ``--recipe recipes/toy_world/rl.yaml --metric reward/mean
--set policy.checkpoint=<the cached SFT policy>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def run_one(
    setting: str,
    seed: int,
    steps: int,
    extra: list[str],
    recipe: str = "recipes/smoke_pixel.yaml",
    metric: str = "reward/brightness",
) -> dict:
    from mrgrpo.config import load_recipe
    from mrgrpo.grpo import GRPOTrainer

    cfg = load_recipe(
        recipe,
        [
            f"output_dir=/tmp/mrgrpo-upr-{setting}-{seed}-{int(time.time())}",
            f"train.seed={seed}",
            f"train.max_steps={steps}",
            f"train.updates_per_rollout={setting}",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "train.checkpoint_every=100000",
            "eval.every=100000",
            "logging.sample_every=100000",
            "logging.log_every=100000",
            *extra,
        ],
    )
    t0 = time.perf_counter()
    hist = GRPOTrainer(cfg).fit()
    wall = time.perf_counter() - t0
    if metric not in hist[0]:
        raise SystemExit(
            f"--metric {metric} is not logged by {recipe}; logged: {sorted(k for k in hist[0] if 'reward' in k)}"
        )
    r = [h[metric] for h in hist]
    n = min(10, len(r) // 2)
    rise = float(np.mean(r[-n:]) - np.mean(r[:n]))
    return {
        "setting": setting,
        "recipe": recipe,
        "metric": metric,
        "seed": seed,
        "rise": rise,
        "rise_per_rollout": rise / (steps - n),
        "rise_per_s": rise / wall,
        "wall_s": wall,
        "step_s": float(np.mean([h["time/step"] for h in hist])),
        "optimizer_steps": hist[-1]["optimizer_steps"],
        "ratio_mean": float(np.mean([h["ratio/mean"] for h in hist])),
        "clip_frac": float(np.mean([h["clip_frac"] for h in hist])),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", default=["1", "2", "per_timestep"])
    ap.add_argument("--recipe", default="recipes/smoke_pixel.yaml")
    ap.add_argument("--metric", default="reward/brightness", help="metrics.jsonl key whose rise is measured")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="benchmarks/results/updates_per_rollout_cpu.json")
    args = ap.parse_args(argv)
    rows = []
    for setting in args.settings:
        for seed in args.seeds:
            row = run_one(setting, seed, args.steps, args.set, args.recipe, args.metric)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for setting in args.settings:
        mine = [r for r in rows if r["setting"] == setting]
        summary[setting] = {
            k: float(np.mean([r[k] for r in mine]))
            for k in ("rise", "rise_per_rollout", "rise_per_s", "step_s", "optimizer_steps", "ratio_mean", "clip_frac")
        }
        summary[setting]["rise_min"] = float(min(r["rise"] for r in mine))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"steps": args.steps, "seeds": args.seeds, "overrides": args.set, "runs": rows, "mean": summary}, indent=2
        )
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
