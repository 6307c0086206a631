"""`mrgrpo serve` command line: the vLLM launch command, reward kwargs, clear errors."""

from __future__ import annotations

import argparse
import shlex

import pytest

from mrgrpo.reward_servers import cli as serve_cli
from mrgrpo.reward_servers.vllm import build_vllm_command


def parse(*argv):
    p = argparse.ArgumentParser()
    serve_cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_vllm_command_line(capsys):
    from mrgrpo.cli import main

    cmd = build_vllm_command("CodeGoat24/UnifiedReward-Think-qwen3vl-8b", port=8001, tensor_parallel=2, data_parallel=4)
    assert cmd[:3] == ["vllm", "serve", "CodeGoat24/UnifiedReward-Think-qwen3vl-8b"]
    joined = " ".join(cmd)
    for part in (
        "--port 8001",
        "--tensor-parallel-size 2",
        "--data-parallel-size 4",
        '--limit-mm-per-prompt {"image": 2}',
        "--enable-prefix-caching",
        "--served-model-name UnifiedReward-Think-qwen3vl-8b",
        "--host 127.0.0.1",
    ):
        assert part in joined, part
    assert "--trust-remote-code" not in cmd  # opt-in only
    assert (
        main(
            [
                "serve",
                "unifiedreward-think",
                "--model",
                "/models/judge",
                "--tp",
                "2",
                "--dry-run",
                "--vllm-args",
                "--max-num-seqs 64",
                "--trust-remote-code",
            ]
        )
        == 0
    )
    printed = shlex.split(capsys.readouterr().out)
    assert printed[:3] == ["vllm", "serve", "/models/judge"] and printed[printed.index("--port") + 1] == "8000"
    assert printed[printed.index("--tensor-parallel-size") + 1] == "2" and printed[-2:] == ["--max-num-seqs", "64"]
    assert "--trust-remote-code" in printed and printed[printed.index("--served-model-name") + 1] == "judge"
    assert serve_cli.run(parse("unifiedreward_point", "--model", "m", "--no-prefix-caching", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert '{"image": 1}' in out and "--no-enable-prefix-caching" in out
    with pytest.raises(ValueError, match="--tp and --dp"):
        build_vllm_command("m", tensor_parallel=0)


def test_reward_kwargs_from_kw_and_config(tmp_path, capsys):
    cfg = tmp_path / "ocr.yaml"
    cfg.write_text("mode: multi\nngram_max: 2\n")
    args = parse(
        "ocr", "--config", str(cfg), "--kw", "ngram_max=4", "--kw", "case_sensitive=false", "--kw", "engine=rapidocr"
    )
    assert serve_cli.reward_kwargs(args) == {
        "mode": "multi",
        "ngram_max": 4,
        "case_sensitive": False,
        "engine": "rapidocr",
    }
    entry = tmp_path / "entry.yaml"
    entry.write_text("name: ocr\nkwargs: {mode: multi}\n")  # a reward entry of a recipe
    assert serve_cli.reward_kwargs(parse("ocr", "--config", str(entry))) == {"mode": "multi"}
    assert serve_cli.run(parse("brightness", "--kw", "x=[1, 2]", "--dry-run")) == 0
    assert "{'x': [1, 2]}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        serve_cli.reward_kwargs(parse("ocr", "--kw", "novalue"))
    with pytest.raises(SystemExit, match="No such file"):
        serve_cli.reward_kwargs(parse("ocr", "--config", str(tmp_path / "missing.yaml")))
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SystemExit, match="must hold a mapping"):
        serve_cli.reward_kwargs(parse("ocr", "--config", str(tmp_path / "list.yaml")))


def test_clear_errors(capsys):
    assert serve_cli.run(parse("no_such_reward")) == 2
    assert "unknown reward 'no_such_reward'" in capsys.readouterr().err
    assert serve_cli.run(parse("jpeg_compressibility", "--kw", "qualty=3")) == 2
    assert "accepts: quality, budget_kb" in capsys.readouterr().err
    assert serve_cli.run(parse("ocr", "--model", "/m")) == 2
    assert "--model launches the vLLM judge" in capsys.readouterr().err
    assert serve_cli.run(parse("brightness", "--max-batch", "0")) == 2
    for flag in ("--max-request-pixels", "--max-inflight-pixels", "--read-timeout"):
        assert serve_cli.run(parse("brightness", flag, "0")) == 2, flag
        assert f"{flag}" in capsys.readouterr().err
