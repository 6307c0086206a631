"""benchmarks/server_abuse.py in a few seconds: every valid request answered correctly under the hostile mix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "server_abuse.py"


def test_short_abuse_benchmark():
    spec = importlib.util.spec_from_file_location("server_abuse", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(
        [
            "--duration",
            "3",
            "--baseline",
            "1.5",
            "--valid-clients",
            "2",
            "--hostile-clients",
            "4",
            "--read-timeout",
            "1",
            "--largest-side",
            "1024",
            "--out",
            "",
        ]
    )
    assert res["server_alive"] and res["tracebacks_in_log"] == 0
    for phase in ("baseline", "mixed"):
        assert res["valid_requests"][phase] > 0, phase
        assert res["valid_correct_fraction"][phase] == 1.0, res["wrong_answers"]
    assert res["hostile_requests"] > 0 and res["server_5xx_to_hostile"] == 0
    assert res["rss_mib"]["peak_mixed"] >= res["rss_mib"]["start"] > 0
