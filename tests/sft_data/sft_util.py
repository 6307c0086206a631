"""Shared helpers of the SFT data tests: small images, records files, shards, configs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from mrgrpo.config import SFTConfig, SFTSource
from mrgrpo.sft_data import SFTBatch

BUDGET = 64
SIZES = [(40, 40), (60, 40), (40, 60)]  # -> 64x64, 96x64 (W x H), 64x96 at budget 64


def img(w: int, h: int, i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_t2i(folder: Path, n: int, name: str = "t2i.jsonl", prefix: str = "t2i", sizes=SIZES) -> Path:
    """n records {image_path, txt} with relative paths and unique prompts, sizes cycling."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        rel = f"img/{prefix}_{i}.png"
        img(w, h, i).save(folder / rel)
        lines.append({"image_path": rel, "txt": f"{prefix} prompt {i}"})
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def write_edit(folder: Path, n: int, name: str = "edit.jsonl") -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        img(w, h, 1000 + i).save(folder / f"img/in_{i}.png")
        img(w, h, 2000 + i).save(folder / f"img/out_{i}.png")
        inp = [f"img/in_{i}.png"] if i % 2 else f"img/in_{i}.png"  # list or a single path
        lines.append({"input_image": inp, "output_image": f"img/out_{i}.png", "instruction": f"edit {i}"})
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def write_shards(folder: Path, n_shards: int, per_shard: int, caption_json: bool = False) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"part-{s:03d}.tar")) as sink:
            for _ in range(per_shard):
                w, h = SIZES[k % len(SIZES)]
                sample = {"__key__": f"{k:06d}", "jpg": png_bytes(img(w, h, 5000 + k), "JPEG")}
                if caption_json:
                    sample["json"] = json.dumps({"caption": f"wds prompt {k}"}).encode()
                else:
                    sample["txt"] = f"wds prompt {k}"
                sink.write(sample)
                k += 1
    return str(folder / f"part-{{000..{n_shards - 1:03d}}}.tar")


def sft_cfg(**kw) -> SFTConfig:
    kw.setdefault("pixel_budget", BUDGET)
    kw.setdefault("caption_dropout", 0.0)
    return SFTConfig(**kw)


def batches_equal(a: SFTBatch, b: SFTBatch) -> bool:
    if a.kind != b.kind or a.prompts != b.prompts or a.source != b.source:
        return False
    if not torch.equal(a.images, b.images):
        return False
    if (a.ref_images is None) != (b.ref_images is None):
        return False
    if a.ref_images is not None:
        for ra, rb in zip(a.ref_images, b.ref_images):
            if len(ra) != len(rb) or any(np.asarray(x).tobytes() != np.asarray(y).tobytes() for x, y in zip(ra, rb)):
                return False
    return True


def mixed_sources(tmp_path: Path) -> list[SFTSource]:
    t = write_t2i(tmp_path / "t", 11)
    e = write_edit(tmp_path / "e", 7)
    w = write_shards(tmp_path / "w", n_shards=3, per_shard=5)
    return [
        SFTSource(name="t", path=str(t)),
        SFTSource(name="e", path=str(e), format="edit"),
        SFTSource(name="w", path=w, format="webdataset", weight=0.5),
    ]
