"""Records files of the DeepGen layouts: formats, image roots, broken and missing images."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from sft_util import BUDGET, SIZES, img, png_bytes, sft_cfg, write_edit, write_t2i

from mrgrpo.config import SFTSource
from mrgrpo.sft_data import ImageRecordDataset, Sample, Skipped, build_sft_stream, fit_to_budget, resize_to_budget


def test_t2i_json_list_and_jsonl(tmp_path):
    jl = write_t2i(tmp_path, 6)
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
        img(40, 60, i).save(tmp_path / f"img/c{i}.png")
        ann = {"long_caption": f"long {i}", "caption": f"short {i}"} if i < 3 else f"plain {i}"
        recs.append({"image": f"img/c{i}.png", "annotation": ann})
    (tmp_path / "cap.json").write_text(json.dumps(recs))
    ds = ImageRecordDataset(tmp_path / "cap.json", "caption", caption_key="long_caption", pixel_budget=BUDGET)
    assert [ds[i].prompt for i in range(4)] == ["long 0", "long 1", "long 2", "plain 3"]
    assert ds[0].image.size == (64, 96)
    ds2 = ImageRecordDataset(tmp_path / "cap.json", "caption", pixel_budget=BUDGET)
    assert ds2[1].prompt == "short 1"


def test_edit_format_list_or_single_input(tmp_path):
    path = write_edit(tmp_path, 4)
    ds = ImageRecordDataset(path, "edit", pixel_budget=BUDGET)
    assert ds.kind == "edit" and len(ds) == 4
    for i in range(4):
        s = ds[i]
        assert s.prompt == f"edit {i}" and len(s.refs) == 1
        expect = fit_to_budget(*SIZES[i % 3], BUDGET)
        assert s.image.size == expect and s.refs[0].size == expect
        assert np.array_equal(
            np.asarray(s.refs[0]), np.asarray(resize_to_budget(Image.open(tmp_path / f"img/in_{i}.png"), BUDGET))
        )


def test_image_root_and_folder_of_records(tmp_path):
    images = tmp_path / "elsewhere"
    write_t2i(images, 3)  # images under elsewhere/img, records file there too
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


def test_broken_and_missing_images_are_skipped_and_counted(tmp_path):
    path = write_t2i(tmp_path, 6, sizes=[(40, 40)])
    (tmp_path / "img/t2i_1.png").write_bytes(b"this is not a png")
    (tmp_path / "img/t2i_2.png").write_bytes(png_bytes(img(40, 40, 2))[:60])  # truncated
    (tmp_path / "img/t2i_3.png").unlink()
    with open(path, "a") as f:
        f.write(json.dumps({"image_path": "img/t2i_0.png"}) + "\n")  # no text
        f.write("{not json\n")
    stream = build_sft_stream([SFTSource(name="d", path=str(path), format="t2i")], sft_cfg(), batch_size=2, seed=0)
    prompts = []
    for _ in range(6):  # two epochs of the 3 good images
        b = next(stream)
        assert b.images.shape == (2, 3, 64, 64)
        prompts += b.prompts
    assert set(prompts) == {"t2i prompt 0", "t2i prompt 4", "t2i prompt 5"}
    c = stream.stats.as_dict()
    assert c["d/skipped_missing"] >= 2 and c["d/skipped_corrupt"] >= 4  # once per epoch each
    assert c["skipped_no_caption"] == 1 and c["skipped_bad_record"] == 1
    assert c["skipped"] == sum(v for k, v in c.items() if k.startswith("skipped_"))
    assert all(isinstance(v, int) for v in c.values())
