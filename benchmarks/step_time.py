"""Step-time breakdown of MR-GRPO and its overhead over the bare denoiser compute.

    python benchmarks/step_time.py [--recipe recipes/smoke_pixel.yaml] [--steps 3] [--set k=v ...] --out results.json

For each measured step: time per phase (encode, rollout, decode, reward, train) from the
trainer's own metrics; then the *bare* compute of the same tensors: the rollout's T denoiser
forwards on the B*G batch (no grad) plus the training forward+backward passes (k timesteps x
micro-batches) straight through ``policy.velocity``. ``overhead_ratio = step / bare`` tells how
much the toolkit adds (sampling maths, log-probs, rewards, bookkeeping). Also the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch


def bare_compute_seconds(trainer, batch) -> float:
    """Seconds of the denoiser passes a step needs, with none of the toolkit around them."""
    policy, rl = trainer.policy, trainer.cfg.rl
    traj = batch.traj
    n = traj.latents.shape[0]
    cond = batch.cond
    t0 = time.perf_counter()
    with torch.no_grad(), trainer.autocast():
        for t in range(rl.num_steps):
            policy.velocity(traj.latents[:, t], traj.sigmas[t].expand(n), cond)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    for j in range(trainer.train_steps_per_sample):
        for start in range(0, n, trainer.micro):
            idx = torch.arange(start, min(n, start + trainer.micro))
            with trainer.autocast():
                v = policy.velocity(traj.latents[idx, j], traj.sigmas[j].expand(len(idx)), cond.select(idx))
            v.float().square().mean().backward()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # GPU kernels run asynchronously: wait before reading the clock
    policy.zero_grad(set_to_none=True)
    return (t1 - t0) + (time.perf_counter() - t1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/smoke_pixel.yaml")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="benchmarks/results/step_time_cpu.json")
    args = ap.parse_args(argv)

    from mrgrpo.config import load_recipe
    from mrgrpo.grpo import GRPOTrainer

    overrides = [
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        f"output_dir=/tmp/mrgrpo-bench-{int(time.time())}",
        "train.checkpoint_every=100000",
        "logging.sample_every=100000",
        "eval.every=100000",
        *args.set,
    ]
    cfg = load_recipe(args.recipe, overrides)
    trainer = GRPOTrainer(cfg)
    rows = []
    for step in range(1, args.steps + 2):
        batch, _, _, m = trainer.run_phases(step)
        bare = bare_compute_seconds(trainer, batch)
        row = {k: round(v, 4) for k, v in m.items() if k.startswith("time/")}
        row.update({"time/bare_dit": round(bare, 4), "overhead_ratio": round(m["time/step"] / bare, 3)})
        if step > 1:  # the first step warms caches and allocators
            rows.append(row)
        print(json.dumps({"step": step, **row}), flush=True)
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]}
    result = {
        "recipe": args.recipe,
        "overrides": args.set,
        "steps": rows,
        "mean": mean,
        "images_per_step": cfg.train.images_per_step,
        "num_steps": cfg.rl.num_steps,
        "trained_steps_per_sample": trainer.train_steps_per_sample,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(trainer.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["mean"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
