"""Helpers of the clear-error tests (tests/test_errors*.py): the CLI run in-process, the clean-error assertion,
files with given bytes, and the recipe factory behind their ``recipe`` fixture."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mrgrpo.cli import main

REPO = Path(__file__).resolve().parent.parent
PROMPTS = REPO / "recipes" / "prompts"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(32)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_clean_error(code: int, err: str, *names: str) -> None:
    assert code != 0, err
    assert "Traceback" not in err, err
    assert "error" in err.lower() or "FAIL" in err, err
    for name in names:
        assert name in err, f"{name!r} not in:\n{err}"


def recipe_factory(tmp_path: Path):
    """``recipe(**changes)``: the quickstart recipe (absolute prompt paths, output in tmp) with
    ``changes`` applied as dotted keys, written to a file; returns its path."""
    base = yaml.safe_load((REPO / "recipes" / "smoke_pixel.yaml").read_text())
    for src in base["data"]["sources"] + base["eval"]["sources"]:
        src["path"] = str(PROMPTS / Path(src["path"]).name)
    base["output_dir"] = str(tmp_path / "run")

    def make(name: str = "r.yaml", **changes) -> Path:
        data = json.loads(json.dumps(base))
        for key, value in changes.items():
            node = data
            parts = key.split("__")
            for p in parts[:-1]:
                node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
            if isinstance(node, list):
                node[int(parts[-1])] = value
            else:
                node[parts[-1]] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return make


def _file(tmp_path: Path, name: str, content: bytes | str) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p
