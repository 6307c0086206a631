"""The toy-world pipeline end to end at toy sizes: data, SFT (cached), evaluation, MR-GRPO, report."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_caches_sft(tmp_path, monkeypatch):
    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MRGRPO_TOY_DATA_N", "16")
    from mrgrpo.toy_world.pipeline import ensure_sft, main

    sft = [
        "train.max_steps=2",
        "train.warmup_steps=0",
        "train.images_per_step=4",
        "train.micro_batch_size=4",
        "train.checkpoint_every=2",
        "logging.sample_every=2",
    ]
    args = [
        "--out",
        str(tmp_path / "out"),
        "--seeds",
        "0",
        "--jobs",
        "2",
        "--samples",
        "1",
        "--ablations",
        "--only",
        "grpo",
        "--set",
        "train.max_steps=1",
        "--set",
        "train.images_per_step=8",
        "--set",
        "train.micro_batch_size=8",
        "--set",
        "eval.prompts=2",
        *[a for s in sft for a in ("--sft-set", s)],
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["runs"]) == {"mrgrpo-seed0", "grpo-seed0"}
    assert set(report["sft_eval"]["categories"]) == {"single", "count", "overall"}
    assert (tmp_path / "out" / "report.md").read_text().count("| single |") >= 1
    assert (tmp_path / "out" / "toy_world.png").is_file()
    # the SFT policy is cached: a second call returns the same folder without training
    first = report["sft"]["path"]
    assert str(ensure_sft(sft)) == first
    assert len(list((tmp_path / "cache" / "toy_world").glob("sft-*"))) == 1


def _summary(single: float, count: float) -> dict:
    # 6 single and 12 count prompts with the same number of images: overall is the mean over prompts
    overall = (6 * single + 12 * count) / 18
    return {
        "categories": {
            cat: {"prompts": n, "toy_geneval": v}
            for cat, n, v in (("single", 6, single), ("count", 12, count), ("overall", 18, overall))
        }
    }


def test_report_gives_genevals_mean_of_categories_next_to_the_mean_over_prompts():
    from mrgrpo.toy_world.report import ablation_table, category_mean, category_table

    base, after = _summary(0.30, 0.0), _summary(0.60, 0.15)
    assert category_mean(base) == pytest.approx(15.0)  # (30 + 0) / 2, while the mean over prompts is 10
    assert category_mean(after) == pytest.approx(37.5)
    report = {"sft_eval": base, "runs": {"mrgrpo-seed0": {"name": "mrgrpo", "seed": 0, "cpu_s": 1.0, "eval": after}}}
    rows = [r for r in category_table(report).splitlines() if r.startswith("| mean of categories")]
    assert rows == ["| mean of categories (GenEval) | all clauses | 15.0 | 37.5 | 37.5 | +22.5 |"]
    line = [r for r in ablation_table(report).splitlines() if r.startswith("| mrgrpo |")][0]
    assert "| 30.0 |" in line and "| 37.5 |" in line  # mean over prompts 30 (was 10), of categories 37.5


def test_setting_table_gives_each_seeds_change_and_their_mean():
    from mrgrpo.toy_world.report import setting_table

    base = _summary(0.30, 0.0)  # overall 10%
    runs = {
        f"{name}-seed{seed}": {"name": name, "seed": seed, "cpu_s": 1.0, "eval": _summary(single, count)}
        for name, seed, single, count in (("mrgrpo", 1, 0.48, 0.06), ("mrgrpo", 0, 0.60, 0.15), ("grpo", 0, 0.30, 0.03))
    }
    rows = setting_table({"sft_eval": base, "runs": runs}).splitlines()[2:]
    # overall (6 single + 12 count prompts): mrgrpo seed 0 (3.6 + 1.8) / 18 = 30%, seed 1 (2.88 + 0.72) / 18 = 20%,
    # grpo (1.8 + 0.36) / 18 = 12%; rows in order of first appearance, seeds sorted
    assert rows == [
        "| mrgrpo | 0 1 | +20.0 / +10.0 | +15.0 | - | - | - |",
        "| grpo | 0 | +2.0 | +2.0 | - | - | - |",
    ]
