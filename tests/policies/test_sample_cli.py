"""`mrgrpo sample` from a recipe and from a saved policy folder."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mrgrpo.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_sample_from_recipe_and_saved_policy(tiny_cache, tmp_path, build, capsys):
    out = tmp_path / "a.png"
    assert main(["sample", str(REPO / "recipes" / "quickstart.yaml"), "--prompt", "a red square", "--out", str(out), "--steps", "4"]) == 0
    assert Image.open(out).size == (64, 64)
    policy = build("deepgen-tiny")
    policy.save(str(tmp_path / "saved"))
    ref = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), "red").save(ref)
    assert main(["sample", str(tmp_path / "saved"), "--prompt", "make it blue", "--prompt", "make it green", "--image", str(ref),
                 "--out", str(tmp_path / "e.png"), "--steps", "3", "--height", "64", "--width", "64"]) == 0
    assert Image.open(tmp_path / "e-1.png").size == (64, 64)
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "saved"), "--prompt", "x", "--height", "1024", "--width", "1024"]) == 2
    assert "larger than this DiT's position grid" in capsys.readouterr().err
