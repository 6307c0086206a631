"""`mrgrpo sample` from a recipe and from a saved policy folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _run(argv):
    from mrgrpo import sample

    parser = argparse.ArgumentParser()
    sample.add_arguments(parser)
    return sample.run(parser.parse_args(argv))


def test_sample_from_recipe_and_saved_policy(build, tmp_path, capsys):
    out = tmp_path / "a.png"
    assert (
        _run(
            [
                str(REPO / "recipes" / "quickstart.yaml"),
                "--prompt",
                "a red square",
                "--out",
                str(out),
                "--steps",
                "3",
                "--height",
                "64",
                "--width",
                "48",
                "--cfg",
                "2.0",
                "--seed",
                "1",
                # the quickstart starts from the toy world's SFT policy, which a fresh cache would first
                # train (about 6 minutes): sampling from a recipe is what this test is about
                "--set",
                "policy.kwargs.pretrained=null",
            ]
        )
        == 0
    )
    assert Image.open(out).size == (48, 64)
    policy = build("deepgen-tiny")
    policy.save(str(tmp_path / "saved"))
    ref = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), "red").save(ref)
    assert (
        _run(
            [
                str(tmp_path / "saved"),
                "--prompt",
                "make it blue",
                "--prompt",
                "make it green",
                "--image",
                str(ref),
                "--out",
                str(tmp_path / "e.png"),
                "--steps",
                "2",
                "--height",
                "64",
                "--width",
                "64",
                "--set",
                "policy.kwargs.mask_padding=false",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "e-0.png").size == (64, 64) and Image.open(tmp_path / "e-1.png").size == (64, 64)
    capsys.readouterr()
    assert _run([str(tmp_path / "saved"), "--prompt", "x", "--height", "1024", "--width", "1024"]) == 2
    assert "larger than this DiT's position grid" in capsys.readouterr().err
    assert _run([str(tmp_path / "saved"), "--prompt", "x", "--height", "60", "--width", "64"]) == 2
    assert "multiples of 16" in capsys.readouterr().err


def test_sample_rejects_references_for_text_only_policies_and_bad_sources(build, tmp_path):
    build("sd3-tiny").save(str(tmp_path / "sd3"))
    ref = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), "red").save(ref)
    from mrgrpo.errors import MrgrpoError

    with pytest.raises(MrgrpoError, match="does not take reference images"):
        _run(
            [
                str(tmp_path / "sd3"),
                "--prompt",
                "x",
                "--image",
                str(ref),
                "--steps",
                "1",
                "--height",
                "64",
                "--width",
                "64",
            ]
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(MrgrpoError, match="no policy.json"):
        _run([str(tmp_path / "empty"), "--prompt", "x"])
