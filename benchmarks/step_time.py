"""Step-time breakdown of MR-GRPO and its overhead over the bare denoiser compute.

    python benchmarks/step_time.py [--recipe recipes/smoke_pixel.yaml] [--steps 3] [--set k=v ...]
        [--reward-delay SECONDS] --out results.json

For each measured step: time per phase (encode, rollout, decode, reward, train) from the
trainer's own metrics, also as ``ms/<phase>``; ``time/reward`` is the time the trainer waited for
rewards after the rollout, ``time/reward_busy`` the time spent scoring (larger when scoring overlapped
sampling, ``rl.overlap_rewards``); ``rollout_share`` = (encode + rollout + decode + reward) / step and
``traj_mb`` the stored trajectory (latents + log-probs). Then the *bare* compute of the same tensors:
the rollout's T denoiser forwards on the B*G batch (no grad) plus the training forward+backward passes
(k timesteps x micro-batches) straight through ``policy.velocity``. ``overhead_ratio = step / bare``
tells how much the toolkit adds (sampling maths, log-probs, rewards, bookkeeping). Also the peak RSS
and the machine's load average (other processes inflate every number).

``--reward-delay`` makes every reward wait that many seconds per image before scoring (a remote
reward's server time), the case that overlapping rewards with sampling is for.
"""

from __future__ import annotations

import argparse
import json
import os
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
    n, stored = traj.latents.shape[0], traj.latents.shape[1]
    cond = batch.cond
    t0 = time.perf_counter()
    with torch.no_grad(), trainer.autocast():
        for t in range(rl.num_steps):  # only the window's latents are stored: any latent of the shape will do
            policy.velocity(traj.latents[:, min(t, stored - 1)], traj.sigmas[t].expand(n), cond)
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


class _Delayed:
    """A reward that waits ``delay`` seconds per image before scoring (the attributes of the wrapped one kept)."""

    def __init__(self, reward, delay: float):
        self.reward, self.delay = reward, delay

    def __getattr__(self, name):
        return getattr(self.reward, name)

    def __call__(self, images, *args, **kwargs):
        time.sleep(self.delay * len(images))
        return self.reward(images, *args, **kwargs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/smoke_pixel.yaml")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="benchmarks/results/step_time_cpu.json")
    ap.add_argument("--reward-delay", type=float, default=0.0, help="seconds each reward waits per image")
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
    if args.reward_delay > 0:
        rewards = trainer.rewards.rewards
        trainer.rewards.rewards = {k: _Delayed(r, args.reward_delay) for k, r in rewards.items()}
    rows = []
    for step in range(1, args.steps + 2):
        batch, _, _, m = trainer.run_phases(step)
        bare = bare_compute_seconds(trainer, batch)
        row = {k: round(v, 4) for k, v in m.items() if k.startswith("time/")}
        row.update({f"ms/{k[5:]}": round(1000 * v, 1) for k, v in m.items() if k.startswith("time/")})
        phases = ("encode", "rollout", "decode", "reward")
        row["rollout_share"] = round(sum(m[f"time/{k}"] for k in phases) / m["time/step"], 3)
        traj = batch.traj
        row["traj_mb"] = round((traj.latents.numel() * 4 + traj.log_probs.numel() * 4) / 2**20, 3)
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
        "reward_delay_s": args.reward_delay,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["mean"], indent=2))
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
