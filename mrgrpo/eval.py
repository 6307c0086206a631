"""``mrgrpo eval``: score a saved policy (or a recipe's policy) on a prompt file with registered rewards.

Prompt files (categories come from the file):

* ``.txt``: one prompt a line; every prompt is in category ``all``;
* ``.jsonl``: one JSON object a line with ``prompt`` and a category in ``tag`` (the GenEval metadata
  layout: ``{"tag": "two_object", "include": [...], "prompt": "..."}``) or ``category``; other fields
  are passed to the rewards as ``metadata`` (e.g. ``ocr_text``);
* ``.csv``: a header row with a ``prompt`` (or DrawBench's ``Prompts``) column and optionally
  ``category`` (or ``Category``); other columns are metadata.

``--benchmark geneval|ocr|drawbench`` runs a packaged benchmark instead (:mod:`mrgrpo.benchmarks`):
its prompts, rewards and official summary; ``--reward-arg LABEL.KEY=VALUE`` sets the rewards'
options (model paths, devices).

For every prompt, ``samples`` images are drawn with the ODE sampler from fixed seeds (the same
seeds for every policy, so two policies are compared on the same noise), scored by every reward,
and averaged per category over the images a reward could score (``valid``). Outputs in ``--out``:
``results.json`` (per category and per prompt), ``results.md`` (the per-category table) and
``grid.png`` (the first ``grid_samples`` images of each prompt, one row per prompt).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrgrpo.errors import DataError, UsageError

if TYPE_CHECKING:  # torch is imported lazily: `mrgrpo --help` must not load the ML stack
    import torch

    from mrgrpo.benchmarks import Benchmark


@dataclass
class EvalPrompt:
    """One prompt to evaluate: its text, category and extra fields (reward metadata)."""

    prompt: str
    category: str = "all"
    fields: dict[str, Any] = field(default_factory=dict)


def load_eval_prompts(path: str | Path) -> list[EvalPrompt]:
    """Prompts of a ``.txt``, ``.jsonl`` or ``.csv`` file; DataError (a ValueError) names the line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"prompt file {p} does not exist. Fix: pass a .txt (one prompt a line) or .jsonl (prompt + tag) file"
        )
    if p.suffix == ".csv":
        return _load_csv(p)
    out: list[EvalPrompt] = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if p.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{i}: not valid JSON ({exc}). Fix: one JSON object a line") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise DataError(
                    f'{p}:{i}: needs a string field `prompt`. Fix: write {{"prompt": "...", "tag": "category"}}'
                )
            cat = obj.get("tag", obj.get("category", "all"))
            out.append(EvalPrompt(obj["prompt"], str(cat), {k: v for k, v in obj.items() if k != "prompt"}))
        else:
            out.append(EvalPrompt(line))
    if not out:
        raise DataError(f"prompt file {p} holds no prompts")
    return out


def _load_csv(p: Path) -> list[EvalPrompt]:
    import csv

    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        text_col = next((c for c in ("prompt", "Prompts", "Prompt", "prompts") if c in cols), None)
        if text_col is None:
            raise DataError(f"{p}: no `prompt` (or `Prompts`) column in the header {cols}. Fix: add a header row")
        cat_col = next((c for c in ("category", "Category", "tag") if c in cols), None)
        out = [
            EvalPrompt(
                row[text_col].strip(),
                (row.get(cat_col) or "all").strip() if cat_col else "all",
                {k: v for k, v in row.items() if k not in (text_col, cat_col) and k is not None},
            )
            for row in reader
            if (row.get(text_col) or "").strip()
        ]
    if not out:
        raise DataError(f"prompt file {p} holds no prompts")
    return out


def first_per_category(prompts: Sequence[EvalPrompt], limit: int | None) -> list[EvalPrompt]:
    """The first ``limit`` prompts of each category (file order kept); all of them when ``limit`` is None."""
    if limit is None:
        return list(prompts)
    if limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        seen[p.category] = seen.get(p.category, 0) + 1
        if seen[p.category] <= limit:
            out.append(p)
    return out


def eval_seed(seed: int, prompt_index: int, sample: int) -> int:
    """The noise seed of one evaluation image (independent of batching and of the policy)."""
    from mrgrpo.rollout import derive_seed

    return derive_seed(seed, 7, prompt_index, sample)


def generate(
    policy,
    prompts: Sequence[EvalPrompt],
    *,
    samples: int,
    seed: int,
    num_steps: int,
    cfg_scale: float,
    height: int,
    width: int,
    batch_prompts: int = 8,
    as_uint8: bool = False,
) -> torch.Tensor:
    """Images ``[P, S, 3, H, W]`` in [0, 1]: ``samples`` ODE samples of each prompt from :func:`eval_seed` noise.

    ``as_uint8``: return them as uint8 in [0, 255] (rounded as PIL images are: a quarter of the memory, and
    the same images once converted), for benchmarks with thousands of images."""
    import torch

    with torch.no_grad():
        return _generate(policy, prompts, samples, seed, num_steps, cfg_scale, height, width, batch_prompts, as_uint8)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` in [0, 1] -> uint8 in [0, 255], rounded (the quantisation of a saved image)."""
    import torch

    return (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8)


def _generate(policy, prompts, samples, seed, num_steps, cfg_scale, height, width, batch_prompts, as_uint8=False):
    import torch

    from mrgrpo.rollout import sample_ode

    policy.eval()
    device = policy.device
    sigmas = policy.sigmas(num_steps, height, width).to(device)
    out = []
    for start in range(0, len(prompts), batch_prompts):
        chunk = list(prompts[start : start + batch_prompts])
        enc = policy.encode([p.prompt for p in chunk], negative_prompt="" if cfg_scale > 1 else None)
        cond = enc.cond.select([i for i in range(len(chunk)) for _ in range(samples)])
        uncond = (
            enc.uncond.select([i for i in range(len(chunk)) for _ in range(samples)])
            if enc.uncond is not None
            else None
        )
        noise = torch.cat(
            [
                policy.init_noise(1, height, width, torch.Generator().manual_seed(eval_seed(seed, start + i, s)))
                for i in range(len(chunk))
                for s in range(samples)
            ]
        )
        final = sample_ode(
            lambda x, s, c: policy.velocity(x, s, c), noise.to(device), sigmas, cond, uncond=uncond, cfg_scale=cfg_scale
        )
        pixels = policy.decode(final).float().cpu()
        pixels = to_uint8(pixels) if as_uint8 else pixels
        out.append(pixels.view(len(chunk), samples, *pixels.shape[1:]))
    return torch.cat(out)


def score_images(
    pixels: torch.Tensor, prompts: Sequence[EvalPrompt], rewards: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """``{reward: {"scores": [P, S], "valid": [P, S], "details": dict}}`` of images ``[P, S, 3, H, W]``
    (float in [0, 1], or uint8 from ``generate(as_uint8=True)``; ``details``: the reward's, per-image lists
    in prompt-major order)."""
    import torch
    from PIL import Image

    from mrgrpo.policies.base import tensor_to_images

    n_p, n_s = pixels.shape[:2]
    if pixels.dtype == torch.uint8:  # from generate(as_uint8=True): already quantised
        images = [Image.fromarray(a) for a in pixels.flatten(0, 1).permute(0, 2, 3, 1).numpy()]
    else:
        images = tensor_to_images(pixels.flatten(0, 1))
    texts = [p.prompt for p in prompts for _ in range(n_s)]
    meta = [dict(p.fields) for p in prompts for _ in range(n_s)]
    out = {}
    for name, reward in rewards.items():
        r = reward(images, texts, meta)
        out[name] = {"scores": r.scores.view(n_p, n_s), "valid": r.valid.view(n_p, n_s), "details": r.details}
    return out


def summarise(prompts: Sequence[EvalPrompt], scored: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-category and per-prompt means (over valid images) of every reward; ``None`` where nothing was valid."""
    cats = list(dict.fromkeys(p.category for p in prompts))

    def mean(rows: list[int], name: str) -> float | None:
        s, v = scored[name]["scores"][rows], scored[name]["valid"][rows]
        return float(s[v].mean()) if bool(v.any()) else None

    by_cat = {}
    for cat in cats + ["overall"]:
        rows = [i for i, p in enumerate(prompts) if cat == "overall" or p.category == cat]
        by_cat[cat] = {"prompts": len(rows), **{name: mean(rows, name) for name in scored}}
    per_prompt = [
        {"prompt": p.prompt, "category": p.category, **{name: mean([i], name) for name in scored}}
        for i, p in enumerate(prompts)
    ]
    return {"categories": by_cat, "prompts": per_prompt}


def markdown_table(summary: dict[str, Any], rewards: Sequence[str]) -> str:
    """The per-category table (rows: categories + overall; columns: rewards) in Markdown."""
    lines = ["| category | prompts | " + " | ".join(rewards) + " |", "|---|---|" + "---|" * len(rewards)]
    for cat, row in summary["categories"].items():
        cells = ["-" if row[r] is None else f"{row[r]:.3f}" for r in rewards]
        lines.append(f"| {cat} | {row['prompts']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(summary: dict[str, Any], columns: Sequence[str], benchmark: Benchmark | None = None) -> str:
    """The per-category table, then the benchmark's official table when it has one."""
    text = markdown_table(summary, columns)
    if benchmark is not None and benchmark.markdown is not None and "benchmark" in summary:
        text += "\n\n" + benchmark.markdown(summary["benchmark"])
    return text


def evaluate_policy(
    policy,
    prompts: Sequence[EvalPrompt],
    rewards: dict[str, Any],
    *,
    samples: int = 8,
    seed: int = 0,
    num_steps: int = 10,
    cfg_scale: float = 3.0,
    height: int = 32,
    width: int = 32,
    out_dir: str | Path | None = None,
    grid_samples: int = 8,
    benchmark: Benchmark | None = None,
) -> dict[str, Any]:
    """Generate, score and summarise; with ``out_dir`` also write results.json, results.md and grid.png.

    With a ``benchmark``, its derived columns join the table and its official summary is stored under
    ``summary["benchmark"]`` (and appended to results.md)."""
    pixels = generate(
        policy,
        prompts,
        samples=samples,
        seed=seed,
        num_steps=num_steps,
        cfg_scale=cfg_scale,
        height=height,
        width=width,
        as_uint8=True,
    )
    scored = score_images(pixels, prompts, rewards)
    if benchmark is not None and benchmark.derive is not None:
        scored.update(benchmark.derive(prompts, scored))
    summary = summarise(prompts, scored)
    official = None
    if benchmark is not None and benchmark.official is not None:
        official = benchmark.official(prompts, scored)
        summary["benchmark"] = {"name": benchmark.name, **official}
    summary["settings"] = {
        "samples": samples,
        "seed": seed,
        "num_steps": num_steps,
        "cfg_scale": cfg_scale,
        "height": height,
        "width": width,
    }
    if out_dir is not None:
        from mrgrpo.tracking import save_image_grid

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(summary, indent=1))
        (out / "results.md").write_text(report_markdown(summary, list(scored), benchmark) + "\n")
        k = min(grid_samples, samples)
        save_image_grid(pixels[:, :k].flatten(0, 1).float() / 255, out / "grid.png", nrow=k)
    return summary


def _parse_reward(text: str) -> tuple[str, str, dict[str, Any]]:
    """``name`` or ``label=name`` or ``name:key=value,key=value`` -> (label, registry name, kwargs)."""
    import yaml

    spec, _, args = text.partition(":")
    label, _, name = spec.partition("=") if "=" in spec else (spec, "", spec)
    kwargs = {}
    for item in filter(None, args.split(",")):
        if "=" not in item:
            raise UsageError(f"--reward {text!r}: arguments are key=value pairs, e.g. ocr:mode=multi")
        k, _, v = item.partition("=")
        kwargs[k.strip()] = yaml.safe_load(v)
    return label.strip(), (name or label).strip(), kwargs


def load_policy(target: str, overrides: Sequence[str] = ()):
    """A policy from a ``save()`` folder (``policy.json``), a checkpoint (``checkpoints/step-N``: its ``policy/``),
    a run folder (its ``final/``) or a recipe YAML."""
    from mrgrpo.registry import POLICIES

    p = Path(target)
    if p.is_dir() and not (p / "policy.json").is_file() and (p / "policy" / "policy.json").is_file():
        p = p / "policy"
    if p.is_dir() and not (p / "policy.json").is_file() and (p / "final" / "policy.json").is_file():
        p = p / "final"
    if p.is_dir() and (p / "policy.json").is_file():
        info = json.loads((p / "policy.json").read_text())
        kwargs = {k: v for k, v in (info.get("kwargs") or {}).items() if v is not None}
        policy = POLICIES.build(info["name"], **kwargs)
        policy.load(str(p))
        return policy
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        from mrgrpo.config import load_recipe
        from mrgrpo.trainer_base import build_policy

        return build_policy(load_recipe(p, list(overrides), check_files=False))
    raise UsageError(
        f"{target}: not a saved policy folder (with policy.json), a checkpoints/step-N folder, a run folder with "
        "final/, or a recipe .yaml"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "policy",
        help="a saved policy folder (policy.json), a checkpoint (checkpoints/step-N), a run folder (uses final/), "
        "or a recipe .yaml",
    )
    parser.add_argument(
        "--benchmark",
        choices=("geneval", "ocr", "drawbench"),
        default=None,
        help="a packaged benchmark (its prompts, rewards and summary): geneval (553 GenEval prompts, official "
        "score), ocr (text-rendering test set: word accuracy, edit distance), drawbench (PickScore + CLIP; "
        "needs --prompts)",
    )
    parser.add_argument(
        "--prompts",
        default=None,
        help=".txt (one prompt a line), .jsonl (prompt + tag/category; GenEval layout) or .csv (prompt/Prompts "
        "+ category/Category); with --benchmark, replaces its prompts",
    )
    parser.add_argument(
        "--reward",
        action="append",
        default=[],
        metavar="[LABEL=]NAME[:k=v,...]",
        help="a registered reward (repeatable), e.g. --reward toy_geneval --reward ocr:mode=multi; with "
        "--benchmark, extra columns",
    )
    parser.add_argument(
        "--reward-arg",
        action="append",
        default=[],
        metavar="LABEL.KEY=VALUE",
        help="an option of one reward (repeatable; YAML value), e.g. --reward-arg pickscore.model=/models/pick "
        "--reward-arg geneval.device=cuda",
    )
    parser.add_argument("--out", required=True, help="output folder (results.json, results.md, grid.png)")
    parser.add_argument(
        "--samples", type=int, default=None, help="images per prompt (default: the benchmark's 4, else 8)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N prompts of each category (smoke runs)"
    )
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (fixed noise for every policy)")
    parser.add_argument("--steps", type=int, default=10, help="ODE steps")
    parser.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument(
        "--size", type=int, default=None, help="image side in pixels (default 32 for deepgen-toy, else 512)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (recipe targets)"
    )


def _apply_reward_args(specs: dict[str, tuple[str, dict[str, Any]]], items: Sequence[str]) -> None:
    """Set ``LABEL.KEY=VALUE`` options (YAML values) on the reward specs ``{label: (name, kwargs)}``."""
    import yaml

    for item in items:
        key, eq, value = item.partition("=")
        label, dot, opt = key.partition(".")
        if not eq or not dot or not opt.strip():
            raise UsageError(f"--reward-arg {item!r}: write LABEL.KEY=VALUE, e.g. pickscore.device=cuda")
        if label.strip() not in specs:
            raise UsageError(f"--reward-arg {item!r}: no reward labelled {label!r}; the rewards are {sorted(specs)}")
        specs[label.strip()][1][opt.strip()] = yaml.safe_load(value)


def run(args: argparse.Namespace) -> int:
    from mrgrpo.rewards.base import build_reward

    bench = None
    specs: dict[str, tuple[str, dict[str, Any]]] = {}
    if args.benchmark is not None:
        from mrgrpo.benchmarks import get_benchmark

        bench = get_benchmark(args.benchmark)
        specs = {label: (name, dict(kw)) for label, (name, kw) in bench.rewards.items()}
        prompt_file = args.prompts or bench.prompts
        if prompt_file is None:
            raise UsageError(
                f"--benchmark {bench.name} needs --prompts: its prompts are not shipped (see docs/evaluation.md)"
            )
    else:
        if args.prompts is None or not args.reward:
            raise UsageError("mrgrpo eval needs --benchmark, or --prompts and at least one --reward")
        prompt_file = args.prompts
    for text in args.reward:
        label, name, kwargs = _parse_reward(text)
        if label in specs:
            raise UsageError(f"--reward {text!r}: the label {label!r} is taken; write OTHER={name}")
        specs[label] = (name, kwargs)
    _apply_reward_args(specs, args.reward_arg)
    prompts = first_per_category(load_eval_prompts(prompt_file), args.limit)
    samples = args.samples if args.samples is not None else (bench.samples if bench else 8)
    if samples < 1:
        raise UsageError(f"--samples must be >= 1, got {samples}")
    rewards = {label: build_reward(name, kwargs, label=label) for label, (name, kwargs) in specs.items()}
    policy = load_policy(args.policy, args.set)
    size = args.size or (32 if getattr(policy, "policy_name", "") == "deepgen-toy" else 512)
    summary = evaluate_policy(
        policy,
        prompts,
        rewards,
        samples=samples,
        seed=args.seed,
        num_steps=args.steps,
        cfg_scale=args.cfg,
        height=size,
        width=size,
        out_dir=args.out,
        benchmark=bench,
    )
    columns = [c for c in summary["categories"]["overall"] if c != "prompts"]
    print(report_markdown(summary, columns, bench))
    print(f"wrote {Path(args.out) / 'results.json'}, results.md, grid.png")
    return 0
