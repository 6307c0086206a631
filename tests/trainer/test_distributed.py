"""2 processes (gloo, CPU) see the same prompts and compute the same advantages as 1 process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

HERE = Path(__file__).parent


def _collect(run_dir: Path, step: int) -> dict[int, tuple[float, float]]:
    out = {}
    for f in sorted((run_dir / "rollouts").glob(f"step-{step:06d}.rank-*.pt")):
        d = torch.load(f, weights_only=False)
        for sid, a, r in zip(d["sample_ids"], d["advantages"].tolist(), d["scores"]["bright"].tolist()):
            out[sid] = (a, r)
    return out


def test_two_process_advantages_equal_one_process(toy_recipe, tmp_path):
    toy_recipe["train"].update(max_steps=2, checkpoint_every=100)
    toy_recipe["logging"]["dump_rollouts"] = True
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE), ACCELERATE_USE_CPU="1")
    runs = {}
    for nproc in (1, 2):
        recipe = dict(toy_recipe, output_dir=str(tmp_path / f"np{nproc}"))
        path = tmp_path / f"np{nproc}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            str(HERE / "dist_advantages.py"),
            str(path),
        ]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        runs[nproc] = tmp_path / f"np{nproc}"
    assert len(list((runs[2] / "rollouts").glob("step-000001.rank-*.pt"))) == 2
    for step in (1, 2):
        one, two = _collect(runs[1], step), _collect(runs[2], step)
        assert sorted(one) == sorted(two) == list(range(16))
        for sid in one:
            assert two[sid][1] == pytest.approx(one[sid][1], abs=1e-6), (step, sid)
            assert two[sid][0] == pytest.approx(one[sid][0], abs=1e-4), (step, sid)


def test_deepspeed_zero2_two_processes_trains_like_one_process(toy_recipe, tmp_path):
    """ZeRO-2 on 2 CPU processes (gloo): checkpoints written, and the rewards of steps 2-3 (after
    ZeRO-2 optimizer steps) equal those of a plain 1-process run."""
    pytest.importorskip("deepspeed")
    from mrgrpo.config import load_recipe
    from mrgrpo.grpo import GRPOTrainer
    from mrgrpo.tracking import read_metrics

    toy_recipe["train"].update(max_steps=3, checkpoint_every=2)
    ref = GRPOTrainer(load_recipe(data=dict(toy_recipe, output_dir=str(tmp_path / "single")))).fit()
    recipe = dict(toy_recipe, output_dir=str(tmp_path / "ds"))
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "mrgrpo" / "torch_extensions"))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(HERE / "ds_zero2_cpu.yaml"),
        str(HERE / "dist_advantages.py"),
        str(path),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = read_metrics(tmp_path / "ds" / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3]
    for r, h in zip(got, ref):
        assert r["reward/mean"] == pytest.approx(h["reward/mean"], abs=1e-5)
        assert r["optimizer_steps"] == h["optimizer_steps"]
    assert (tmp_path / "ds" / "checkpoints" / "step-000002" / "deepspeed").is_dir()
