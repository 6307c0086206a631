"""`mrgrpo data synth`: files, determinism, image content matching the captions, loading through the datasets."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mrgrpo.config import SFTConfig, SFTSource
from mrgrpo.sft_data import ImageRecordDataset, Sample, build_sft_stream
from mrgrpo.sft_data.synth import COLORS, add_arguments, run, synthesize

N, SIZE = 16, 32


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, synthesize(out, n=N, size=SIZE, seed=0)


def _colors(img: Image.Image) -> Counter:
    arr = np.asarray(img.convert("RGB")).reshape(-1, 3)
    return Counter(map(tuple, arr.tolist()))


def test_files_and_manifest(synth_dir):
    out, paths = synth_dir
    for key in ("t2i", "caption", "edit", "webdataset", "prompts", "manifest"):
        assert paths[key].is_file(), key
    t2i = [json.loads(x) for x in paths["t2i"].read_text().splitlines()]
    edits = [json.loads(x) for x in paths["edit"].read_text().splitlines()]
    assert len(t2i) == N and len(edits) == N // 2
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["counts"]["t2i"] == N and manifest["counts"]["edit"] == N // 2
    assert all((out / rel).exists() for rel in manifest["files"].values())
    prompts = [p for p in paths["prompts"].read_text().splitlines() if p.strip()]
    assert prompts and set(prompts) <= {r["txt"] for r in t2i}
    pat = re.compile(r'^(an? \w+ (square|circle|triangle) on a \w+ background|the word "\w+" in \w+ on \w+)$')
    assert all(pat.match(r["txt"]) for r in t2i)
    assert any("word" in r["txt"] for r in t2i) and any(
        "circle" in r["txt"] or "square" in r["txt"] or "triangle" in r["txt"] for r in t2i
    )
    assert all(re.match(r"^(make the \w+ \w+|turn the \w+ into a \w+)$", e["instruction"]) for e in edits)
    sizes = {Image.open(out / r["image_path"]).size for r in t2i}
    assert (SIZE, SIZE) in sizes and len(sizes) > 1  # some non-square images for the size buckets


def test_images_match_their_captions(synth_dir):
    out, paths = synth_dir
    for r in map(json.loads, paths["t2i"].read_text().splitlines()):
        m = re.match(r"^an? (\w+) \w+ on a (\w+) background$", r["txt"]) or re.match(
            r'^the word "\w+" in (\w+) on (\w+)$', r["txt"]
        )
        fg, bg = m.groups()
        colors = _colors(Image.open(out / r["image_path"]))
        assert colors.most_common(1)[0][0] == COLORS[bg]
        assert colors[COLORS[fg]] > 0
    for e in map(json.loads, paths["edit"].read_text().splitlines()):
        before, after = Image.open(out / e["input_image"][0]), Image.open(out / e["output_image"])
        assert before.size == after.size and np.asarray(before).tobytes() != np.asarray(after).tobytes()
        m = re.match(r"^make the (\w+) (\w+)$", e["instruction"])
        if m and m.group(1) == "background":
            assert _colors(after).most_common(1)[0][0] == COLORS[m.group(2)]
        elif m:
            assert _colors(after)[COLORS[m.group(2)]] > 0 and _colors(before)[COLORS[m.group(2)]] == 0


def test_deterministic_from_seed(tmp_path, synth_dir):
    _, paths = synth_dir
    again = synthesize(tmp_path / "a", n=N, size=SIZE, seed=0)
    assert again["t2i"].read_text() == paths["t2i"].read_text()
    assert again["edit"].read_text() == paths["edit"].read_text()
    assert (tmp_path / "a/images/t2i_00003.png").read_bytes() == (paths["images"] / "t2i_00003.png").read_bytes()
    other = synthesize(tmp_path / "b", n=N, size=SIZE, seed=1)
    assert other["t2i"].read_text() != paths["t2i"].read_text()


def test_loads_through_the_datasets(synth_dir):
    _, paths = synth_dir
    ds = ImageRecordDataset(paths["edit"], "edit", pixel_budget=SIZE)
    assert all(isinstance(ds[i], Sample) and len(ds[i].refs) == 1 for i in range(len(ds)))
    srcs = [
        SFTSource(name="t2i", path=str(paths["t2i"])),
        SFTSource(name="cap", path=str(paths["caption"]), format="caption"),
        SFTSource(name="edit", path=str(paths["edit"]), format="edit"),
        SFTSource(name="wds", path=str(paths["webdataset"]), format="webdataset"),
    ]
    stream = build_sft_stream(
        srcs, SFTConfig(pixel_budget=SIZE, caption_dropout=0.0, t2i_edit_ratio=(1, 1)), batch_size=2, seed=0
    )
    sources = set()
    for _ in range(30):
        b = next(stream)
        sources.add(b.source)
        assert b.images.shape[0] == 2 and b.images.shape[2] % 32 == 0 and all(b.prompts)
    assert sources == {"t2i", "cap", "edit", "wds"}
    assert stream.stats.as_dict()["skipped"] == 0


def test_cli_entry_points(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "s"), "--n", "4", "--size", "32", "--seed", "2"])
    assert run(args) == 0
    assert len((tmp_path / "s/t2i.jsonl").read_text().splitlines()) == 4
    from mrgrpo.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "c"), "--n", "3", "--size", "32"]) == 0
    assert json.loads((tmp_path / "c/manifest.json").read_text())["counts"]["t2i"] == 3
