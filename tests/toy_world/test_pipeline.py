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
