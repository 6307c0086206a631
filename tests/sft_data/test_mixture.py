"""The SFT mixture: ratio and weights, caption dropout, exact resume, workers, rank sharding."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from sft_util import batches_equal, mixed_sources, sft_cfg, write_edit, write_shards, write_t2i

from mrgrpo.config import RecipeError, SFTSource
from mrgrpo.sft_data import build_sft_stream


def test_mixture_ratio_and_source_weights(tmp_path):
    a = write_t2i(tmp_path / "a", 8, sizes=[(40, 40)], prefix="a")
    b = write_t2i(tmp_path / "b", 8, sizes=[(40, 40)], prefix="b")
    e = write_edit(tmp_path / "e", 6)
    srcs = [
        SFTSource(name="a", path=str(a), weight=1.0),
        SFTSource(name="b", path=str(b), weight=3.0),
        SFTSource(name="e", path=str(e), format="edit"),
    ]
    stream = build_sft_stream(srcs, sft_cfg(t2i_edit_ratio=(3, 1)), batch_size=1, seed=3)
    picks = Counter(stream.choose(n).name for n in range(20000))
    assert abs((picks["a"] + picks["b"]) / 20000 - 0.75) < 0.015
    assert abs(picks["b"] / (picks["a"] + picks["b"]) - 0.75) < 0.015
    kinds = Counter()
    for _ in range(300):
        batch = next(stream)
        kinds[batch.kind] += 1
        assert (batch.kind == "edit") == (batch.source == "e")
    assert abs(kinds["t2i"] / 300 - 0.75) < 0.08
    assert stream.stats.as_dict()["batches_t2i"] == kinds["t2i"]
    # a kind without sources drops out; a ratio giving nothing to the available kind is an error
    only_t2i = build_sft_stream(srcs[:2], sft_cfg(t2i_edit_ratio=(3, 1)), 1, 0)
    assert all(next(only_t2i).kind == "t2i" for _ in range(20))
    with pytest.raises(RecipeError, match="t2i_edit_ratio"):
        build_sft_stream(srcs[:2], sft_cfg(t2i_edit_ratio=(0, 1)), 1, 0)


def test_caption_dropout_rate_deterministic_and_never_for_edit(tmp_path):
    t = write_t2i(tmp_path, 10, sizes=[(40, 40)])
    e = write_edit(tmp_path, 6)
    srcs = [SFTSource(name="t", path=str(t)), SFTSource(name="e", path=str(e), format="edit")]

    def run(seed):
        s = build_sft_stream(srcs, sft_cfg(caption_dropout=0.3, t2i_edit_ratio=(2, 1)), batch_size=4, seed=seed)
        return [next(s) for _ in range(90)]

    batches = run(7)
    t2i_prompts = [p for b in batches if b.kind == "t2i" for p in b.prompts]
    edit_prompts = [p for b in batches if b.kind == "edit" for p in b.prompts]
    assert len(t2i_prompts) > 150 and len(edit_prompts) > 40
    rate = sum(p == "" for p in t2i_prompts) / len(t2i_prompts)
    assert abs(rate - 0.3) < 0.08
    assert all(p.startswith("edit ") for p in edit_prompts)
    assert [b.prompts for b in run(7)] == [b.prompts for b in batches]  # same seed, same drops


@pytest.mark.parametrize("k", [5, 13])
def test_exact_resume(tmp_path, k):
    srcs = mixed_sources(tmp_path)
    cfg = sft_cfg(caption_dropout=0.2, t2i_edit_ratio=(2, 1))
    ref = build_sft_stream(srcs, cfg, batch_size=2, seed=11)
    for _ in range(k):
        next(ref)
    state = json.loads(json.dumps(ref.state_dict()))  # JSON-serialisable, survives a round trip
    assert any(src["buckets"] for src in state["sources"].values())  # partly filled buckets are restored too
    expected = [next(ref) for _ in range(12)]
    resumed = build_sft_stream(srcs, cfg, batch_size=2, seed=11)
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(12)]
    assert all(batches_equal(a, b) for a, b in zip(expected, got))
    assert resumed.stats.as_dict() == ref.stats.as_dict()
    # a fresh stream (no state) does not give the same continuation
    fresh = build_sft_stream(srcs, cfg, batch_size=2, seed=11)
    assert not all(batches_equal(a, next(fresh)) for a in expected)
    with pytest.raises(RecipeError, match="same data.sft_sources"):
        build_sft_stream(srcs[:2], cfg, 2, 11).load_state_dict(state)


def test_decoding_workers_give_the_same_batches(tmp_path):
    srcs = mixed_sources(tmp_path)
    a = build_sft_stream(srcs, sft_cfg(), batch_size=2, seed=5, num_workers=0)
    b = build_sft_stream(srcs, sft_cfg(), batch_size=2, seed=5, num_workers=2)
    assert all(batches_equal(next(a), next(b)) for _ in range(8))


@pytest.mark.parametrize("kind", ["records", "shards", "one_shard"])
def test_rank_sharding_gives_disjoint_samples(tmp_path, kind):
    if kind == "records":
        src = SFTSource(name="d", path=str(write_t2i(tmp_path, 24, sizes=[(40, 40)])))
    else:
        src = SFTSource(
            name="d",
            format="webdataset",
            path=write_shards(
                tmp_path / "w", n_shards=4 if kind == "shards" else 1, per_shard=6 if kind == "shards" else 24
            ),
        )
    seen = []
    for rank in range(2):
        s = build_sft_stream([src], sft_cfg(), batch_size=1, seed=0, rank=rank, world_size=2)
        prompts = [p for _ in range(12) for p in next(s).prompts]
        assert len(set(prompts)) == 12  # one epoch of this rank's share (sizes all equal: no bucket delay)
        seen.append(set(prompts))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 24
    # the mixture's choice of source/kind is the same on every rank
    t = write_t2i(tmp_path / "t", 8, sizes=[(40, 40)])
    e = write_edit(tmp_path / "e", 8)
    srcs = [SFTSource(name="t", path=str(t)), SFTSource(name="e", path=str(e), format="edit")]
    r0 = build_sft_stream(srcs, sft_cfg(), 1, 0, rank=0, world_size=2)
    r1 = build_sft_stream(srcs, sft_cfg(), 1, 0, rank=1, world_size=2)
    assert [next(r0).kind for _ in range(10)] == [next(r1).kind for _ in range(10)]
