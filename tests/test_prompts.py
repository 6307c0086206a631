"""Prompt sources: the three file formats, every bad-input error, weights, deterministic sampling, resume."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mrgrpo.config import PromptSource, RecipeError
from mrgrpo.prompts import (
    LoadedSource,
    PromptRecord,
    PromptSampler,
    load_prompt_file,
    load_sources,
    rank_slice,
)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _source(name: str, n: int, weight: float = 1.0, rewards: dict[str, float] | None = None) -> LoadedSource:
    records = [PromptRecord(f"{name} {i}", name) for i in range(n)]
    return LoadedSource(name, records, weight, rewards or {"r": 1.0}, "t2i")


# -------------------------------------------------------------------------------------------
# formats
# -------------------------------------------------------------------------------------------
def test_txt_jsonl_json_and_csv(tmp_path):
    txt = load_prompt_file(_write(tmp_path / "p.txt", '# a comment\n a cat \n\nthe word "hi"\n'), source="s")
    assert [r.prompt for r in txt] == ["a cat", 'the word "hi"'] and all(r.source == "s" for r in txt)
    jl = load_prompt_file(
        _write(tmp_path / "p.jsonl", '{"prompt": "a", "ocr_text": "A"}\n\n{"instruction": "b"}\n'), source="s"
    )
    assert [r.prompt for r in jl] == ["a", "b"] and jl[0].fields == {"ocr_text": "A"} and jl[1].fields == {}
    js = load_prompt_file(_write(tmp_path / "p.json", json.dumps([{"txt": "x"}, {"caption": "y", "k": 1}])), source="s")
    assert [(r.prompt, r.fields) for r in js] == [("x", {}), ("y", {"k": 1})]
    cs = load_prompt_file(_write(tmp_path / "p.csv", "prompt,ocr_text\nhello,HELLO\nbye,BYE\n"), source="s")
    assert [(r.prompt, r.fields) for r in cs] == [("hello", {"ocr_text": "HELLO"}), ("bye", {"ocr_text": "BYE"})]
    # an explicit format overrides the extension
    assert [r.prompt for r in load_prompt_file(_write(tmp_path / "p.dat", "one\ntwo\n"), source="s", fmt="txt")] == [
        "one",
        "two",
    ]


def test_edit_records_resolve_reference_paths(tmp_path):
    _write(tmp_path / "img/a.png", b"png")
    _write(tmp_path / "img/b.png", b"png")
    recs = load_prompt_file(
        _write(
            tmp_path / "e.jsonl",
            '{"prompt": "x", "image": "img/a.png"}\n{"prompt": "y", "images": ["img/a.png", "img/b.png"]}\n',
        ),
        source="e",
        kind="edit",
    )
    assert recs[0].images == [str(tmp_path / "img/a.png")]
    assert recs[1].images == [str(tmp_path / "img/a.png"), str(tmp_path / "img/b.png")]


# -------------------------------------------------------------------------------------------
# bad files: every error names the file (and the line) and says what to fix
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content, kwargs, match",
    [
        ("p.xml", "<a/>", {}, r"cannot tell the format from '\.xml'.*Fix"),
        ("p.txt", "a\n", {"fmt": "yaml"}, r"unknown format 'yaml'.*Fix"),
        ("p.jsonl", '{"prompt": "a"}\n{"prompt": \n', {}, r"p\.jsonl:2: not valid JSON.*Fix"),
        ("p.json", '[{"prompt": "a"},\n {"prompt": ]', {}, r"p\.json:2: not valid JSON.*Fix"),
        ("p.jsonl", '{"prompt": "a"}\n["b"]\n', {}, r"p\.jsonl:2: expected a JSON object, got list"),
        ("p.json", '[{"prompt": "a"}, "b"]', {}, r"p\.json:2: expected a JSON object, got str"),
        ("p.jsonl", '{"text": "a"}\n', {}, r"p\.jsonl:1: no prompt text.*Fix: add a `prompt` field"),
        ("p.csv", "text\nhello\n", {}, r"p\.csv:2: no prompt text"),
        ("p.jsonl", '{"prompt": "a", "image": 3}\n', {}, r"p\.jsonl:1: `image`/`images` must be a path or a list"),
        ("p.txt", "# only a comment\n\n", {}, r"holds no prompts.*Fix"),
        ("p.jsonl", "\n\n", {}, r"holds no prompts"),
        ("p.csv", "prompt\n", {}, r"holds no prompts"),
        ("p.txt", b"\xff\xfe bad bytes", {}, r"not UTF-8 text.*Fix: save it as UTF-8"),
        ("p.jsonl", '{"prompt": "a"}\n', {"kind": "edit"}, r"record without a reference image.*Fix: add `image`"),
        (
            "p.jsonl",
            '{"prompt": "a", "image": "nope.png"}\n',
            {"kind": "edit"},
            r"reference image .*nope\.png does not exist",
        ),
    ],
)
def test_bad_prompt_files_raise_one_clear_error(tmp_path, name, content, kwargs, match):
    path = _write(tmp_path / name, content)
    with pytest.raises(RecipeError, match=match) as info:
        load_prompt_file(path, source="s", **kwargs)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_files_required_and_optional(tmp_path):
    with pytest.raises(RecipeError, match=r"nope\.txt of source 's' does not exist.*Fix"):
        load_prompt_file(tmp_path / "nope.txt", source="s")
    good = _write(tmp_path / "good.txt", "a\nb\n")

    def src(name, path, **kw):
        return PromptSource(name=name, path=str(path), rewards={"r": 1.0}, **kw)

    loaded = load_sources([src("gone", tmp_path / "nope.txt", required=False), src("good", good, weight=2.0)], Path)
    assert [(s.name, len(s.records), s.weight, s.rewards) for s in loaded] == [("good", 2, 2.0, {"r": 1.0})]
    with pytest.raises(RecipeError, match="does not exist"):
        load_sources([src("gone", tmp_path / "nope.txt")], Path)
    with pytest.raises(RecipeError, match="no prompt source could be loaded.*Fix"):
        load_sources([src("gone", tmp_path / "nope.txt", required=False)], Path)


# -------------------------------------------------------------------------------------------
# weights and sampling
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "weights, match",
    [
        ((0.0, 0.0), "all prompt sources have zero weight"),
        ((1.0, -1.0), r"'b' has weight -1\.0.*Fix: a finite weight >= 0"),
        ((1.0, math.nan), r"'b' has weight nan"),
        ((math.inf, 1.0), r"'a' has weight inf"),
    ],
)
def test_bad_weights_raise(weights, match):
    with pytest.raises(RecipeError, match=match):
        PromptSampler([_source("a", 3, weights[0]), _source("b", 3, weights[1])], seed=0)


def test_unknown_sampling_raises():
    with pytest.raises(RecipeError, match="unknown source sampling 'uniform'"):
        PromptSampler([_source("a", 3)], seed=0, sampling="uniform")


def test_source_probabilities_follow_prompts_x_weight_or_weight():
    srcs = [_source("a", 10, 1.0), _source("b", 30, 2.0)]
    assert np.allclose(PromptSampler(srcs, seed=0).probs, [10 / 70, 60 / 70])
    assert np.allclose(PromptSampler(srcs, seed=0, sampling="weight").probs, [1 / 3, 2 / 3])
    picks = Counter(r.source for r in PromptSampler(srcs, seed=1).sample(0, 7000))
    assert abs(picks["b"] / 7000 - 6 / 7) < 0.02
    # a zero-weight source is never drawn
    only_a = PromptSampler([_source("a", 4, 1.0), _source("b", 4, 0.0)], seed=0)
    assert {r.source for step in range(20) for r in only_a.sample(step, 4)} == {"a"}


def test_every_prompt_once_per_epoch_deterministic_and_resumable():
    srcs = [_source("a", 5)]
    s = PromptSampler(srcs, seed=3)
    first = [r.prompt for r in s.sample(0, 5)]
    assert sorted(first) == [f"a {i}" for i in range(5)]  # a permutation: no repeat within the epoch
    state = json.loads(json.dumps(s.state_dict()))
    expected = [[r.prompt for r in s.sample(step, 3)] for step in range(1, 4)]
    resumed = PromptSampler(srcs, seed=3)
    resumed.load_state_dict(state)
    assert [[r.prompt for r in resumed.sample(step, 3)] for step in range(1, 4)] == expected
    assert [r.prompt for r in PromptSampler(srcs, seed=3).sample(0, 5)] == first
    assert [r.prompt for r in PromptSampler(srcs, seed=3, shuffle=False).sample(0, 5)] == [f"a {i}" for i in range(5)]
    with pytest.raises(RecipeError, match="cannot resume.*differ"):
        PromptSampler([_source("other", 5)], seed=3).load_state_dict(state)


def test_rank_slices_cover_the_global_list_in_order():
    for n, world in [(8, 2), (7, 3), (2, 4)]:
        covered = [i for r in range(world) for i in range(n)[rank_slice(n, r, world)]]
        assert covered == list(range(n))
