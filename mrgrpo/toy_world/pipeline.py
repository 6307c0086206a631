"""The toy-world pipeline: data -> SFT (cached) -> held-out evaluation -> MR-GRPO per seed -> evaluation -> report.

``python -m mrgrpo.toy_world.pipeline [--seeds 0 1 2] [--ablations] [--out outputs/toy_world]``
(``make toy-world``); the quickstart (``recipes/quickstart.yaml``) is a short MR-GRPO run from the same SFT policy.

The SFT data and the SFT policy are built once and cached under ``$MRGRPO_CACHE/toy_world``
(default ``~/.cache/mrgrpo``), keyed by the SFT recipe and the data settings, and published
atomically (a concurrent build keeps the first one). Held-out evaluation: the same prompts
(held-out colour-shape pairs), the same noise seeds and ``--samples`` images per prompt for every
policy, strict graders (``toy_geneval`` and one ``*_strict`` per clause). CPU seconds of each stage
are recorded next to wall-clock seconds (the machine may be shared).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
DATA_VERSION = {"n": 4000, "size": 32, "seed": 0, "v": 2}
EVAL_REWARDS = ("toy_geneval", "toy_color_strict", "toy_shape_strict", "toy_count_strict")
COMMON = ["logging.progress_bar=false"]


def cache_root() -> Path:
    return Path(os.environ.get("MRGRPO_CACHE", Path.home() / ".cache" / "mrgrpo")) / "toy_world"


def _publish(tmp: Path, out: Path) -> None:
    from mrgrpo.policies.deepgen.tiny import publish_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    publish_dir(tmp, out)


class Clock:
    """Wall and process CPU seconds of a stage."""

    def __enter__(self) -> Clock:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def ensure_data() -> Path:
    """The cached SFT data folder (``t2i.jsonl`` + images), written once (``MRGRPO_TOY_DATA_N`` images,
    default :data:`DATA_VERSION` ``n``)."""
    from mrgrpo.toy_world.build import write_sft_data

    spec = {**DATA_VERSION, "n": int(os.environ.get("MRGRPO_TOY_DATA_N", DATA_VERSION["n"]))}
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    out = cache_root() / f"data-{key}"
    if not (out / "t2i.jsonl").exists():
        cache_root().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".data-", dir=cache_root()))
        write_sft_data(tmp, n=spec["n"], size=spec["size"], seed=spec["seed"])
        _publish(tmp, out)
    return out


def sft_recipe_overrides(data: Path, extra: list[str]) -> list[str]:
    return [f"data.sft_sources.0.path={data / 't2i.jsonl'}", "data.sft_sources.0.required=true", *COMMON, *extra]


def ensure_sft(extra: list[str] | None = None, log=print) -> Path:
    """The cached SFT policy folder (``.../final``), trained once with ``recipes/toy_world/sft.yaml``."""
    from mrgrpo.config import load_recipe
    from mrgrpo.recipe_files import extends_chain
    from mrgrpo.sft import SFTTrainer

    data = ensure_data()
    recipe = RECIPES / "toy_world" / "sft.yaml"
    overrides = sft_recipe_overrides(data, list(extra or []))
    recipe_text = "".join(p.read_text() for p in extends_chain(recipe))  # a base recipe's edits count too
    key = hashlib.sha1((recipe_text + json.dumps(overrides[2:]) + data.name).encode()).hexdigest()[:10]
    out = cache_root() / f"sft-{key}"
    if (out / "final" / "policy.json").exists():
        return out / "final"
    tmp = Path(tempfile.mkdtemp(prefix=".sft-", dir=cache_root()))
    cfg = load_recipe(recipe, overrides + [f"output_dir={tmp}"])
    log(f"SFT: {cfg.train.max_steps} steps of {cfg.train.images_per_step} images -> {out} (built once, then cached)")
    with Clock() as c:
        SFTTrainer(cfg).fit()
    (tmp / "timing.json").write_text(json.dumps({"wall_s": c.wall, "cpu_s": c.cpu}))
    log(f"SFT done: {c.wall:.0f} s wall, {c.cpu:.0f} s CPU")
    _publish(tmp, out)
    # the saved policy.json of final/ names its lineage by absolute path: nothing points into tmp
    return out / "final"


def build_eval_rewards() -> dict[str, Any]:
    from mrgrpo.rewards.base import build_reward

    return {name: build_reward(name, label=name) for name in EVAL_REWARDS}


def evaluate(policy_dir: Path, prompts_file: Path, out_dir: Path, samples: int, seed: int = 1234) -> dict[str, Any]:
    """Strict held-out scores of a saved policy (see :mod:`mrgrpo.eval`)."""
    from mrgrpo.eval import evaluate_policy, load_eval_prompts, load_policy

    policy = load_policy(str(policy_dir))
    return evaluate_policy(
        policy,
        load_eval_prompts(prompts_file),
        build_eval_rewards(),
        samples=samples,
        seed=seed,
        num_steps=10,
        cfg_scale=3.0,
        height=32,
        width=32,
        out_dir=out_dir,
    )


def run_rl(recipe: Path, sft: Path, out_dir: Path, seed: int, extra: list[str]) -> dict[str, Any]:
    """One MR-GRPO run from the SFT policy; returns timing and the metric history."""
    from mrgrpo.config import load_recipe
    from mrgrpo.grpo import GRPOTrainer

    cfg = load_recipe(
        recipe, [f"policy.checkpoint={sft}", f"output_dir={out_dir}", f"train.seed={seed}", *COMMON, *extra]
    )
    with Clock() as c:
        history = GRPOTrainer(cfg).fit()
    return {"wall_s": c.wall, "cpu_s": c.cpu, "history": history}


def _eval_sft_job(job: dict[str, Any]) -> dict[str, Any]:
    """The SFT policy's held-out evaluation, with its wall and CPU seconds."""
    with Clock() as c:
        summary = evaluate(Path(job["sft"]), Path(job["prompts"]), Path(job["out"]) / "eval_sft", job["samples"])
    summary["wall_s"], summary["cpu_s"] = c.wall, c.cpu
    return summary


def _rl_job(job: dict[str, Any]) -> dict[str, Any]:
    """One MR-GRPO run from the SFT policy, then its held-out evaluation: the report entry of the run."""
    run_dir = Path(job["out"]) / f"{job['name']}-seed{job['seed']}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    info = run_rl(Path(job["recipe"]), Path(job["sft"]), run_dir, job["seed"], job["sets"] + job["extra"])
    with Clock() as c:
        summary = evaluate(run_dir / "final", Path(job["prompts"]), run_dir / "eval", job["samples"])
    hist = info.pop("history")
    info["first_rewards"] = {k: v for k, v in hist[0].items() if k.startswith("reward/")}
    info["last_rewards"] = {k: v for k, v in hist[-1].items() if k.startswith("reward/")}
    return {
        "name": job["name"],
        "seed": job["seed"],
        "overrides": job["extra"],
        **info,
        "eval": summary,
        "eval_wall_s": c.wall,
    }


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _worker(task: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    key, job = task
    return key, _eval_sft_job(job) if key == "sft_eval" else _rl_job(job)


def _run_parallel(tasks: list[tuple[str, dict[str, Any]]], jobs: int, threads: int, record) -> None:
    """Run ``tasks`` (SFT evaluation, MR-GRPO runs) in ``jobs`` worker processes (spawned, ``threads`` torch
    threads each), in order of submission; ``record(key, result)`` is called as each one finishes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
        futures = [pool.submit(_worker, task) for task in tasks]
        for fut in as_completed(futures):
            record(*fut.result())


ABLATIONS = {
    "grpo": ["rl.adv_mode=grpo"],
    "kl": ["rl.beta=0.01"],
    "overweight_count": [
        "data.sources.0.rewards={toy_color: 0.1, toy_shape: 0.1, toy_count: 0.8}",
        "data.sources.1.rewards={toy_count: 0.9, toy_color: 0.05, toy_shape: 0.05}",
    ],
}


def _acc(summary: dict[str, Any], cat: str = "overall", key: str = "toy_geneval") -> float:
    v = summary["categories"][cat][key]
    return float("nan") if v is None else float(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mrgrpo.toy_world.pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/toy_world", help="report folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="MR-GRPO seeds")
    ap.add_argument("--samples", type=int, default=32, help="evaluation images per held-out prompt")
    ap.add_argument("--recipe", default=str(RECIPES / "toy_world" / "rl.yaml"), help="the MR-GRPO recipe")
    ap.add_argument("--ablations", action="store_true", help="also run the ablations (seed 0 unless --ablation-seeds)")
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="+", default=None, help=f"ablations to run (default: all of {list(ABLATIONS)})")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of the RL recipe")
    ap.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="override of the SFT recipe")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes for the SFT evaluation and the MR-GRPO runs (2 on 2 cores: seeds run side by side)",
    )
    ap.add_argument("--skip-baseline", action="store_true", help="reuse the SFT evaluation already in --out")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: these tiny ops gain little from 2, and on a shared CPU 2 threads spin-wait)",
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = RECIPES / "toy_world" / "prompts" / "heldout.jsonl"
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {"runs": {}}

    def save() -> None:
        report_path.write_text(json.dumps(report, indent=1))

    with Clock() as c_sft:
        sft = ensure_sft(args.sft_set)
    report["sft"] = {"path": str(sft), "wall_s": c_sft.wall, "cpu_s": c_sft.cpu}
    save()
    runs = [("mrgrpo", s, []) for s in args.seeds]
    if args.ablations:
        runs += [(name, s, ABLATIONS[name]) for name in (args.only or ABLATIONS) for s in args.ablation_seeds]
    jobs = [
        {
            "name": name,
            "seed": seed,
            "extra": extra,
            "recipe": args.recipe,
            "sft": str(sft),
            "out": str(out),
            "sets": list(args.set),
            "samples": args.samples,
            "prompts": str(prompts),
            "threads": args.threads,
        }
        for name, seed, extra in runs
    ]
    eval_sft = not (args.skip_baseline and "sft_eval" in report)

    def record(key: str, result: dict[str, Any]) -> None:
        if key == "sft_eval":
            report["sft_eval"] = result
            print(f"SFT held-out accuracy {_acc(result):.3f} ({result['wall_s']:.0f} s)")
        else:
            report["runs"][key] = result
            base = f"{_acc(report['sft_eval']):.3f} -> " if "sft_eval" in report else ""
            print(
                f"{result['name']} seed {result['seed']}: held-out accuracy {base}{_acc(result['eval']):.3f} "
                f"(RL {result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU)"
            )
        save()

    keys = [f"{j['name']}-seed{j['seed']}" for j in jobs]
    tasks = list(zip(keys, jobs))
    if eval_sft:
        sft_job = {"sft": str(sft), "out": str(out), "samples": args.samples, "prompts": str(prompts)}
        tasks.insert(0, ("sft_eval", sft_job))
    if args.jobs <= 1:
        for key, job in tasks:
            record(key, _eval_sft_job(job) if key == "sft_eval" else _rl_job(job))
    else:
        _run_parallel(tasks, args.jobs, args.threads, record)
    # the runs in their order (seeds, then ablations), whatever order they finished in
    report["runs"] = {
        **{k: report["runs"][k] for k in keys},
        **{k: v for k, v in report["runs"].items() if k not in keys},
    }
    save()
    from mrgrpo.toy_world.report import write_report

    write_report(report, out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
