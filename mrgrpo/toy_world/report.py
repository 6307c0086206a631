"""The toy-world report: before/after tables (Markdown) and a figure, from the pipeline's ``report.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("toy_geneval", "toy_color_strict", "toy_shape_strict", "toy_count_strict")
LABELS = {
    "toy_geneval": "all clauses",
    "toy_color_strict": "colour",
    "toy_shape_strict": "shape",
    "toy_count_strict": "count",
}


def _v(summary: dict[str, Any], cat: str, key: str) -> float:
    row = summary["categories"].get(cat, {})
    value = row.get(key)
    return float("nan") if value is None else 100.0 * float(value)


def category_mean(summary: dict[str, Any], key: str = "toy_geneval") -> float:
    """GenEval's overall score: the mean of the per-category accuracies (%), not the mean over prompts
    (``overall`` in the summary, which weighs a category by its number of prompts)."""
    vals = [_v(summary, cat, key) for cat in summary["categories"] if cat != "overall"]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


def _signed(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.1f}"


def category_table(report: dict[str, Any], name: str = "mrgrpo") -> str:
    """Per category: SFT and after MR-GRPO (mean over seeds, and each seed) of every strict grader, in %."""
    runs = [r for r in report["runs"].values() if r["name"] == name]
    base = report["sft_eval"]
    cats = list(base["categories"])
    lines = ["| category | grader | SFT | MR-GRPO (mean of seeds) | per seed | change |", "|---|---|---|---|---|---|"]
    for cat in cats:
        for key in COLUMNS:
            b = _v(base, cat, key)
            if math.isnan(b):
                continue
            after = [_v(r["eval"], cat, key) for r in runs]
            mean = float(np.nanmean(after)) if after else float("nan")
            seeds = " / ".join(_fmt(a) for a in after)
            lines.append(f"| {cat} | {LABELS[key]} | {_fmt(b)} | {_fmt(mean)} | {seeds} | {mean - b:+.1f} |")
    b = category_mean(base)
    after = [category_mean(r["eval"]) for r in runs]
    mean = float(np.nanmean(after)) if after else float("nan")
    seeds = " / ".join(_fmt(a) for a in after)
    row = f"| {_fmt(b)} | {_fmt(mean)} | {seeds} | {mean - b:+.1f} |"
    lines.append("| mean of categories (GenEval) | all clauses " + row)
    return "\n".join(lines)


def ablation_table(report: dict[str, Any]) -> str:
    """Held-out accuracy (all clauses, colour, shape, count; %) of every run, with its overrides."""
    base = report["sft_eval"]
    lines = [
        "| run | seed | all clauses | colour | shape | count | change (all) | all clauses, category mean | RL CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines.append(
        "| SFT policy | - | "
        + " | ".join(_fmt(_v(base, "overall", k)) for k in COLUMNS)
        + f" | - | {_fmt(category_mean(base))} | - |"
    )
    for r in report["runs"].values():
        vals = [_v(r["eval"], "overall", k) for k in COLUMNS]
        lines.append(
            f"| {r['name']} | {r['seed']} | "
            + " | ".join(_fmt(v) for v in vals)
            + f" | {vals[0] - _v(base, 'overall', 'toy_geneval'):+.1f} | {_fmt(category_mean(r['eval']))}"
            + f" | {r['cpu_s']:.0f} |"
        )
    return "\n".join(lines)


def setting_table(report: dict[str, Any]) -> str:
    """One row per setting (run name): its seeds, the change of held-out all-clauses accuracy from the SFT
    policy on each seed and their mean (percentage points), and the mean change of each clause. Settings run
    on several seeds can be compared on the seeds they share: the ``seeds`` column says which."""
    base = report["sft_eval"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in report["runs"].values():
        by_name.setdefault(r["name"], []).append(r)
    lines = [
        "| setting | seeds | change of all clauses, per seed | mean change | colour | shape | count |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in by_name.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        deltas = {k: [_v(r["eval"], "overall", k) - _v(base, "overall", k) for r in runs] for k in COLUMNS}
        per_seed = " / ".join(_signed(d) for d in deltas["toy_geneval"])
        means = [_signed(float(np.mean(deltas[k]))) for k in COLUMNS]
        seeds = " ".join(str(r["seed"]) for r in runs)
        lines.append(f"| {name} | {seeds} | {per_seed} | " + " | ".join(means) + " |")
    return "\n".join(lines)


def plot(report: dict[str, Any], out_dir: Path, path: Path) -> None:
    """Left: training rewards of every ``mrgrpo`` seed (the strict all-clauses one and the soft clauses,
    5-step running mean); right: held-out accuracy per clause before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrgrpo.tracking import read_metrics, running_mean

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    runs = {k: r for k, r in report["runs"].items() if r["name"] == "mrgrpo"}
    for key, r in runs.items():
        metrics_file = out_dir / key / "metrics.jsonl"
        if not metrics_file.exists():
            continue
        recs = read_metrics(metrics_file)
        for name, style in (
            ("reward/toy_geneval", "-."),
            ("reward/toy_color", "-"),
            ("reward/toy_shape", "--"),
            ("reward/toy_count", ":"),
        ):
            xs, ys = running_mean([m["step"] for m in recs if name in m], [m[name] for m in recs if name in m], 5)
            a.plot(xs, ys, style, label=f"{name.split('/')[-1]} s{r['seed']}")
    a.set_xlabel("MR-GRPO step")
    a.set_ylabel("training reward (5-step mean)")
    a.legend(fontsize=6, ncol=3)
    base = report["sft_eval"]
    x = np.arange(len(COLUMNS))
    b.bar(x - 0.2, [_v(base, "overall", k) for k in COLUMNS], 0.4, label="SFT policy")
    after = [[_v(r["eval"], "overall", k) for k in COLUMNS] for r in runs.values()]
    if after:
        b.bar(x + 0.2, np.nanmean(after, axis=0), 0.4, label=f"MR-GRPO (mean of {len(after)} seeds; dots: seeds)")
        for row in after:
            b.plot(x + 0.2, row, "k.", ms=4)
    b.set_xticks(x, [LABELS[k] for k in COLUMNS])
    b.set_ylabel("held-out prompts, strict grader (% of images right)")
    b.legend(fontsize=8)
    fig.suptitle("toy world: held-out colour-shape pairs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.md`` and ``toy_world.png`` into ``out_dir``; returns the Markdown path."""
    out = Path(out_dir)
    md = [
        "# Toy world report",
        "",
        "Held-out colour-shape pairs (never in SFT or RL prompts), strict graders, %. `overall` is the mean over",
        "prompts (every prompt has the same number of images); GenEval's own overall score is the mean of the",
        "per-category accuracies (`mean of categories`).",
        "",
        "## Per category, SFT vs MR-GRPO",
        "",
        category_table(report),
        "",
        "## Every setting: change from the SFT policy (points; clauses: mean over its seeds)",
        "",
        setting_table(report),
        "",
        "## Every run",
        "",
        ablation_table(report),
        "",
    ]
    sft = report.get("sft", {})
    md += [f"SFT policy: {sft.get('path', '?')}", ""]
    (out / "report.md").write_text("\n".join(md))
    try:
        plot(report, out, out / "toy_world.png")
    except ImportError:
        pass
    return out / "report.md"


if __name__ == "__main__":  # pragma: no cover
    import sys

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/toy_world")
    print(write_report(json.loads((folder / "report.json").read_text()), folder).read_text())
