"""SFT image data: sizing, record formats, WebDataset shards, skipping, buckets, mixture, resume, sharding."""

from __future__ import annotations

import io
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from mrgrpo.config import RecipeError, SFTConfig, SFTSource
from mrgrpo.image_data import (
    DataStats,
    ImageRecordDataset,
    Sample,
    SFTStream,
    Skipped,
    build_sft_stream,
    epoch_order,
    fit_to_budget,
    resize_to_budget,
    to_tensor,
)

BUDGET = 64
SIZES = [(40, 40), (60, 40), (40, 60)]  # -> 64x64, 96x64 (W x H), 64x96 at budget 64


def _img(w: int, h: int, i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _write_t2i(folder: Path, n: int, name: str = "t2i.jsonl", prefix: str = "t2i", sizes=SIZES) -> Path:
    """n records {image_path, txt} with relative paths and unique prompts, sizes cycling."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        rel = f"img/{prefix}_{i}.png"
        _img(w, h, i).save(folder / rel)
        lines.append({"image_path": rel, "txt": f"{prefix} prompt {i}"})
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _write_edit(folder: Path, n: int, name: str = "edit.jsonl") -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        _img(w, h, 1000 + i).save(folder / f"img/in_{i}.png")
        _img(w, h, 2000 + i).save(folder / f"img/out_{i}.png")
        inp = [f"img/in_{i}.png"] if i % 2 else f"img/in_{i}.png"  # list or a single path
        lines.append({"input_image": inp, "output_image": f"img/out_{i}.png", "instruction": f"edit {i}"})
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _write_shards(folder: Path, n_shards: int, per_shard: int, caption_json: bool = False) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"part-{s:03d}.tar")) as sink:
            for _ in range(per_shard):
                w, h = SIZES[k % len(SIZES)]
                sample = {"__key__": f"{k:06d}", "jpg": _png_bytes(_img(w, h, 5000 + k), "JPEG")}
                if caption_json:
                    sample["json"] = json.dumps({"caption": f"wds prompt {k}"}).encode()
                else:
                    sample["txt"] = f"wds prompt {k}"
                sink.write(sample)
                k += 1
    return str(folder / f"part-{{000..{n_shards - 1:03d}}}.tar")


def _cfg(**kw) -> SFTConfig:
    kw.setdefault("pixel_budget", BUDGET)
    kw.setdefault("caption_dropout", 0.0)
    return SFTConfig(**kw)


def _batches_equal(a: dict, b: dict) -> bool:
    if a["kind"] != b["kind"] or a["prompts"] != b["prompts"] or a["source"] != b["source"]:
        return False
    if not torch.equal(a["images"], b["images"]):
        return False
    if (a["ref_images"] is None) != (b["ref_images"] is None):
        return False
    if a["ref_images"] is not None:
        for ra, rb in zip(a["ref_images"], b["ref_images"]):
            if len(ra) != len(rb) or any(np.asarray(x).tobytes() != np.asarray(y).tobytes() for x, y in zip(ra, rb)):
                return False
    return True


# -------------------------------------------------------------------------------------------
# sizing
# -------------------------------------------------------------------------------------------
def test_fit_to_budget_properties():
    rng = random.Random(0)
    for _ in range(2000):
        budget = rng.choice([64, 256, 512, 768, 1024])
        w = rng.randint(16, 4000)
        h = max(1, min(8000, int(w * math.exp(rng.uniform(-math.log(4), math.log(4))))))
        W, H = fit_to_budget(w, h, budget)
        assert W % 32 == 0 and H % 32 == 0 and W >= 32 and H >= 32
        s = budget / math.sqrt(w * h)
        # each side is the scaled side rounded UP to the next multiple of 32
        assert w * s - 1e-6 <= W < w * s + 32 or W == 32
        assert h * s - 1e-6 <= H < h * s + 32 or H == 32
        # aspect kept within the rounding; pixel count at or a little above the budget
        # (rounding up adds less than 32 px to a side of w*s, h*s pixels)
        ws, hs = w * s, h * s
        assert abs(math.log((W / H) / (w / h))) <= math.log1p(32 / min(ws, hs)) + 1e-9
        assert budget**2 * (1 - 1e-9) <= W * H <= budget**2 * (1 + 32 / ws) * (1 + 32 / hs) + 1e-6
        if budget >= 512:  # at the real budget the aspect error is a few percent at most
            assert abs(W / H / (w / h) - 1) < 0.13


def test_fit_to_budget_examples():
    assert fit_to_budget(512, 512) == (512, 512)
    assert fit_to_budget(1024, 1024) == (512, 512)
    assert fit_to_budget(100, 100) == (512, 512)  # small images are upscaled to the budget
    assert fit_to_budget(1024, 768) == (608, 448)  # 591.2 -> 608, 443.4 -> 448
    assert fit_to_budget(768, 1024) == (448, 608)
    assert fit_to_budget(1000, 10, budget=64) == (640, 32)  # the short side never goes below 32
    assert fit_to_budget(60, 40, budget=64, multiple=16) == (80, 64)
    with pytest.raises(ValueError):
        fit_to_budget(0, 10)


def test_resize_and_tensor():
    rgba = Image.new("RGBA", (60, 40), (255, 0, 0, 0))  # fully transparent -> white
    out = resize_to_budget(rgba, BUDGET)
    assert out.mode == "RGB" and out.size == (96, 64)
    t = to_tensor(out)
    assert t.shape == (3, 64, 96) and t.dtype == torch.float32
    assert torch.allclose(t, torch.ones_like(t))
    t2 = to_tensor(_img(40, 40, 0))
    assert 0.0 <= float(t2.min()) and float(t2.max()) <= 1.0


# -------------------------------------------------------------------------------------------
# formats
# -------------------------------------------------------------------------------------------
def test_t2i_json_list_and_jsonl(tmp_path):
    jl = _write_t2i(tmp_path, 6)
    records = [json.loads(x) for x in jl.read_text().splitlines()]
    (tmp_path / "t2i.json").write_text(json.dumps(records))
    for path in (jl, tmp_path / "t2i.json"):
        ds = ImageRecordDataset(path, "t2i", pixel_budget=BUDGET)
        assert len(ds) == 6 and ds.kind == "t2i"
        for i in range(6):
            s = ds[i]
            assert isinstance(s, Sample) and s.prompt == f"t2i prompt {i}" and s.refs == []
            w, h = SIZES[i % 3]
            assert s.image.size == fit_to_budget(w, h, BUDGET)


def test_caption_format_key_and_string_annotation(tmp_path):
    (tmp_path / "img").mkdir()
    recs = []
    for i in range(4):
        _img(40, 60, i).save(tmp_path / f"img/c{i}.png")
        ann = {"long_caption": f"long {i}", "caption": f"short {i}"} if i < 3 else f"plain {i}"
        recs.append({"image": f"img/c{i}.png", "annotation": ann})
    (tmp_path / "cap.json").write_text(json.dumps(recs))
    ds = ImageRecordDataset(tmp_path / "cap.json", "caption", caption_key="long_caption", pixel_budget=BUDGET)
    assert [ds[i].prompt for i in range(4)] == ["long 0", "long 1", "long 2", "plain 3"]
    assert ds[0].image.size == (64, 96)
    ds2 = ImageRecordDataset(tmp_path / "cap.json", "caption", pixel_budget=BUDGET)
    assert ds2[1].prompt == "short 1"


def test_edit_format_list_or_single_input(tmp_path):
    path = _write_edit(tmp_path, 4)
    ds = ImageRecordDataset(path, "edit", pixel_budget=BUDGET)
    assert ds.kind == "edit" and len(ds) == 4
    for i in range(4):
        s = ds[i]
        assert s.prompt == f"edit {i}" and len(s.refs) == 1
        expect = fit_to_budget(*SIZES[i % 3], BUDGET)
        assert s.image.size == expect and s.refs[0].size == expect
        assert np.array_equal(np.asarray(s.refs[0]), np.asarray(resize_to_budget(Image.open(tmp_path / f"img/in_{i}.png"), BUDGET)))


def test_image_root_and_folder_of_records(tmp_path):
    images = tmp_path / "elsewhere"
    _write_t2i(images, 3)  # images under elsewhere/img, records file there too
    rec_dir = tmp_path / "records"
    rec_dir.mkdir()
    (rec_dir / "a.jsonl").write_text((images / "t2i.jsonl").read_text())
    (rec_dir / "b.json").write_text(json.dumps([{"image_path": str(images / "img/t2i_0.png"), "txt": "absolute"}]))
    ds = ImageRecordDataset(rec_dir, "t2i", image_root=images, pixel_budget=BUDGET)
    assert len(ds) == 4 and all(isinstance(ds[i], Sample) for i in range(4))
    assert ds[3].prompt == "absolute"
    # without image_root the relative paths point into records/ and are missing
    ds2 = ImageRecordDataset(rec_dir, "t2i", pixel_budget=BUDGET)
    assert isinstance(ds2[0], Skipped) and ds2[0].reason == "missing"


def test_webdataset_shards_load(tmp_path):
    pattern = _write_shards(tmp_path / "wds", n_shards=2, per_shard=6)
    src = SFTSource(name="w", path=pattern, format="webdataset")
    stream = build_sft_stream([src], _cfg(), batch_size=2, seed=0)
    seen = []
    for _ in range(5):
        b = next(stream)
        assert b["kind"] == "t2i" and b["ref_images"] is None and b["images"].shape[0] == 2
        seen += b["prompts"]
    assert set(seen) <= {f"wds prompt {k}" for k in range(12)} and len(set(seen)) == 10  # no repeats within the epoch
    # json captions with a caption key
    pattern2 = _write_shards(tmp_path / "wds2", n_shards=1, per_shard=4, caption_json=True)
    s2 = build_sft_stream([SFTSource(name="w2", path=pattern2, format="webdataset")], _cfg(), batch_size=1, seed=0)
    assert next(s2)["prompts"][0].startswith("wds prompt ")
    # a folder of shards works too
    s3 = build_sft_stream([SFTSource(name="w3", path=str(tmp_path / "wds"), format="webdataset")], _cfg(), batch_size=1, seed=0)
    assert next(s3)["prompts"][0].startswith("wds prompt ")


# -------------------------------------------------------------------------------------------
# broken data
# -------------------------------------------------------------------------------------------
def test_broken_and_missing_images_are_skipped_and_counted(tmp_path):
    path = _write_t2i(tmp_path, 6, sizes=[(40, 40)])
    (tmp_path / "img/t2i_1.png").write_bytes(b"this is not a png")
    (tmp_path / "img/t2i_2.png").write_bytes(_png_bytes(_img(40, 40, 2))[:60])  # truncated
    (tmp_path / "img/t2i_3.png").unlink()
    with open(path, "a") as f:
        f.write(json.dumps({"image_path": "img/t2i_0.png"}) + "\n")  # no text
        f.write("{not json\n")
    stream = build_sft_stream([SFTSource(name="d", path=str(path), format="t2i")], _cfg(), batch_size=2, seed=0)
    prompts = []
    for _ in range(6):  # two epochs of the 3 good images
        b = next(stream)
        assert b["images"].shape == (2, 3, 64, 64)
        prompts += b["prompts"]
    assert set(prompts) == {"t2i prompt 0", "t2i prompt 4", "t2i prompt 5"}
    c = stream.stats.as_dict()
    assert c["d/skipped_missing"] >= 2 and c["d/skipped_corrupt"] >= 4  # once per epoch each
    assert c["skipped_no_caption"] == 1 and c["skipped_bad_record"] == 1
    assert c["skipped"] == sum(v for k, v in c.items() if k.startswith("skipped_"))
    assert all(isinstance(v, int) for v in c.values())


def test_no_readable_record_fails_at_start_naming_the_file(tmp_path):
    path = _write_t2i(tmp_path, 3)
    for i in range(3):
        (tmp_path / f"img/t2i_{i}.png").write_bytes(b"garbage")
    with pytest.raises(RecipeError, match="t2i.jsonl"):
        build_sft_stream([SFTSource(name="bad", path=str(path))], _cfg(), 2, 0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RecipeError, match="empty.jsonl"):
        build_sft_stream([SFTSource(name="e", path=str(empty))], _cfg(), 2, 0)
    wrong_format = _write_t2i(tmp_path / "x", 2)  # t2i records read as edit records: none usable
    with pytest.raises(RecipeError, match="no usable record"):
        build_sft_stream([SFTSource(name="f", path=str(wrong_format), format="edit")], _cfg(), 2, 0)
    (tmp_path / "shards").mkdir()
    with wds.TarWriter(str(tmp_path / "shards/bad-000.tar")) as sink:
        sink.write({"__key__": "0", "jpg": b"not an image", "txt": "x"})
    with pytest.raises(RecipeError, match="bad-000.tar"):
        build_sft_stream([SFTSource(name="w", path=str(tmp_path / "shards/bad-{000..000}.tar"), format="webdataset")], _cfg(), 2, 0)


def test_missing_sources_required_and_optional(tmp_path):
    with pytest.raises(RecipeError, match="required: false"):
        build_sft_stream([SFTSource(name="m", path=str(tmp_path / "nope.jsonl"))], _cfg(), 2, 0)
    good = _write_t2i(tmp_path, 4)
    with pytest.warns(UserWarning, match="skipped"):
        s = build_sft_stream([SFTSource(name="m", path=str(tmp_path / "nope.jsonl"), required=False),
                              SFTSource(name="g", path=str(good))], _cfg(), 2, 0)
    assert [x.name for x in s.sources] == ["g"]
    with pytest.warns(UserWarning):
        assert build_sft_stream([SFTSource(name="m", path=str(tmp_path / "nope.jsonl"), required=False)], _cfg(), 2, 0) is None
    with pytest.raises(RecipeError), pytest.warns(UserWarning):
        build_sft_stream([SFTSource(name="m", path=str(tmp_path / "nope.jsonl"), required=False)], _cfg(), 2, 0, allow_empty=False)


def test_images_vanishing_mid_run_raise_instead_of_looping(tmp_path):
    path = _write_t2i(tmp_path, 4, sizes=[(40, 40)])
    stream = build_sft_stream([SFTSource(name="d", path=str(path))], _cfg(), 2, 0)
    next(stream)
    for f in (tmp_path / "img").iterdir():
        f.unlink()
    with pytest.raises(RuntimeError, match="no readable sample"):
        for _ in range(10):
            next(stream)


# -------------------------------------------------------------------------------------------
# buckets, mixture, dropout
# -------------------------------------------------------------------------------------------
def test_size_buckets_never_mix_sizes(tmp_path):
    path = _write_t2i(tmp_path, 30)
    edit = _write_edit(tmp_path, 12)
    stream = build_sft_stream([SFTSource(name="t", path=str(path)), SFTSource(name="e", path=str(edit), format="edit")],
                              _cfg(t2i_edit_ratio=(1, 1)), batch_size=3, seed=1)
    shapes = Counter()
    for _ in range(40):
        b = next(stream)
        assert b["images"].ndim == 4 and b["images"].shape[0] == 3
        h, w = b["images"].shape[-2:]
        assert h % 32 == 0 and w % 32 == 0
        shapes[(h, w)] += 1
        if b["kind"] == "edit":
            for refs in b["ref_images"]:
                assert [r.size for r in refs] == [(w, h)]  # the inputs here have the target's size
    assert set(shapes) == {(64, 64), (64, 96), (96, 64)}


def test_mixture_ratio_and_source_weights(tmp_path):
    a = _write_t2i(tmp_path / "a", 8, sizes=[(40, 40)], prefix="a")
    b = _write_t2i(tmp_path / "b", 8, sizes=[(40, 40)], prefix="b")
    e = _write_edit(tmp_path / "e", 6)
    srcs = [SFTSource(name="a", path=str(a), weight=1.0), SFTSource(name="b", path=str(b), weight=3.0),
            SFTSource(name="e", path=str(e), format="edit")]
    stream = build_sft_stream(srcs, _cfg(t2i_edit_ratio=(3, 1)), batch_size=1, seed=3)
    picks = Counter(stream.choose(n).name for n in range(20000))
    assert abs((picks["a"] + picks["b"]) / 20000 - 0.75) < 0.015
    assert abs(picks["b"] / (picks["a"] + picks["b"]) - 0.75) < 0.015
    kinds = Counter()
    for _ in range(300):
        batch = next(stream)
        kinds[batch["kind"]] += 1
        assert (batch["kind"] == "edit") == (batch["source"] == "e")
    assert abs(kinds["t2i"] / 300 - 0.75) < 0.08
    assert stream.stats.as_dict()["batches_t2i"] == kinds["t2i"]
    # a kind without sources drops out; a ratio giving nothing to the available kind is an error
    only_t2i = build_sft_stream(srcs[:2], _cfg(t2i_edit_ratio=(3, 1)), 1, 0)
    assert all(next(only_t2i)["kind"] == "t2i" for _ in range(20))
    with pytest.raises(RecipeError, match="t2i_edit_ratio"):
        build_sft_stream(srcs[:2], _cfg(t2i_edit_ratio=(0, 1)), 1, 0)


def test_caption_dropout_rate_deterministic_and_never_for_edit(tmp_path):
    t = _write_t2i(tmp_path, 10, sizes=[(40, 40)])
    e = _write_edit(tmp_path, 6)
    srcs = [SFTSource(name="t", path=str(t)), SFTSource(name="e", path=str(e), format="edit")]

    def run(seed):
        s = build_sft_stream(srcs, _cfg(caption_dropout=0.3, t2i_edit_ratio=(2, 1)), batch_size=4, seed=seed)
        return [next(s) for _ in range(90)]

    batches = run(7)
    t2i_prompts = [p for b in batches if b["kind"] == "t2i" for p in b["prompts"]]
    edit_prompts = [p for b in batches if b["kind"] == "edit" for p in b["prompts"]]
    assert len(t2i_prompts) > 150 and len(edit_prompts) > 40
    rate = sum(p == "" for p in t2i_prompts) / len(t2i_prompts)
    assert abs(rate - 0.3) < 0.08
    assert all(p.startswith("edit ") for p in edit_prompts)
    assert [b["prompts"] for b in run(7)] == [b["prompts"] for b in batches]  # same seed, same drops


# -------------------------------------------------------------------------------------------
# resume and sharding
# -------------------------------------------------------------------------------------------
def _mixed_sources(tmp_path: Path) -> list[SFTSource]:
    t = _write_t2i(tmp_path / "t", 11)
    e = _write_edit(tmp_path / "e", 7)
    w = _write_shards(tmp_path / "w", n_shards=3, per_shard=5)
    return [SFTSource(name="t", path=str(t)), SFTSource(name="e", path=str(e), format="edit"),
            SFTSource(name="w", path=w, format="webdataset", weight=0.5)]


@pytest.mark.parametrize("k", [5, 13])
def test_exact_resume(tmp_path, k):
    srcs = _mixed_sources(tmp_path)
    cfg = _cfg(caption_dropout=0.2, t2i_edit_ratio=(2, 1))
    ref = build_sft_stream(srcs, cfg, batch_size=2, seed=11)
    for _ in range(k):
        next(ref)
    state = json.loads(json.dumps(ref.state_dict()))  # JSON-serialisable, survives a round trip
    assert any(src["buckets"] for src in state["sources"].values())  # partly filled buckets are restored too
    expected = [next(ref) for _ in range(12)]
    resumed = build_sft_stream(srcs, cfg, batch_size=2, seed=11)
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(12)]
    assert all(_batches_equal(a, b) for a, b in zip(expected, got))
    assert resumed.stats.as_dict() == ref.stats.as_dict()
    # a fresh stream (no state) does not give the same continuation
    fresh = build_sft_stream(srcs, cfg, batch_size=2, seed=11)
    assert not all(_batches_equal(a, next(fresh)) for a in expected)
    with pytest.raises(RecipeError, match="same data.sft_sources"):
        build_sft_stream(srcs[:2], cfg, 2, 11).load_state_dict(state)


def test_decoding_workers_give_the_same_batches(tmp_path):
    srcs = _mixed_sources(tmp_path)
    a = build_sft_stream(srcs, _cfg(), batch_size=2, seed=5, num_workers=0)
    b = build_sft_stream(srcs, _cfg(), batch_size=2, seed=5, num_workers=2)
    assert all(_batches_equal(next(a), next(b)) for _ in range(8))


def test_epoch_order_rank_shards_are_disjoint_and_cover():
    for n, world in [(10, 2), (11, 3), (7, 4)]:
        parts = [epoch_order(n, 0, 0, 1, r, world) for r in range(world)]
        flat = np.concatenate(parts)
        assert len(flat) == n and len(set(flat.tolist())) == n
    assert not np.array_equal(epoch_order(20, 0, 0, 0), epoch_order(20, 0, 0, 1))  # reshuffled each epoch


@pytest.mark.parametrize("kind", ["records", "shards", "one_shard"])
def test_rank_sharding_gives_disjoint_samples(tmp_path, kind):
    if kind == "records":
        src = SFTSource(name="d", path=str(_write_t2i(tmp_path, 24, sizes=[(40, 40)])))
    else:
        src = SFTSource(name="d", format="webdataset",
                        path=_write_shards(tmp_path / "w", n_shards=4 if kind == "shards" else 1, per_shard=6 if kind == "shards" else 24))
    seen = []
    for rank in range(2):
        s = build_sft_stream([src], _cfg(), batch_size=1, seed=0, rank=rank, world_size=2)
        prompts = [p for _ in range(12) for p in next(s)["prompts"]]
        assert len(set(prompts)) == 12  # one epoch of this rank's share (sizes all equal: no bucket delay)
        seen.append(set(prompts))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 24
    # the mixture's choice of source/kind is the same on every rank
    t = _write_t2i(tmp_path / "t", 8, sizes=[(40, 40)])
    e = _write_edit(tmp_path / "e", 8)
    srcs = [SFTSource(name="t", path=str(t)), SFTSource(name="e", path=str(e), format="edit")]
    r0 = build_sft_stream(srcs, _cfg(), 1, 0, rank=0, world_size=2)
    r1 = build_sft_stream(srcs, _cfg(), 1, 0, rank=1, world_size=2)
    assert [next(r0)["kind"] for _ in range(10)] == [next(r1)["kind"] for _ in range(10)]


def test_stats_object():
    st = DataStats()
    st.skip("a", "missing", "x")
    st.skip("a", "corrupt")
    st.skip("b", "missing")
    d = st.as_dict()
    assert d["skipped"] == 3 and d["skipped_missing"] == 2 and d["a/skipped_corrupt"] == 1
    st2 = DataStats()
    st2.load_state_dict(json.loads(json.dumps(st.state_dict())))
    assert st2.as_dict() == d
    assert isinstance(SFTStream, type)
