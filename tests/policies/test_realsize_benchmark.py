"""`benchmarks/gpu_realsize.py --tiny`: the GPU session's script (rollout, FLOP count, bare compute, MFU) on CPU."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_the_real_size_benchmark_runs_end_to_end_on_the_tiny_deepgen(tmp_path, tiny_cache):
    import gpu_realsize

    out = tmp_path / "realsize.json"
    assert gpu_realsize.main(["--tiny", "--steps", "2", "--num-steps", "3", "--out", str(out)]) == 0
    (run,) = json.loads(out.read_text()).values()
    assert run["useful_tflop_per_step"]["rollout"] > 0
    assert run["first_update_ratio"]["max"] == pytest.approx(1.0, abs=1e-5)
    assert len(run["steps"]) == 2 and all(s["overhead_ratio"] > 0 for s in run["steps"])
