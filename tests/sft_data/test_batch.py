"""SFTBatch: the typed batch of the SFT stream, checked on construction; collate from samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mrgrpo.sft_data import Sample, SFTBatch, collate


def _sample(w: int, h: int, i: int, refs: int = 0) -> Sample:
    rng = np.random.default_rng(i)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return Sample(image, f"p{i}", [Image.new("RGB", (w, h), (i, 0, 0)) for _ in range(refs)], i)


def test_collate_text_to_image_and_editing():
    samples = [_sample(64, 32, i) for i in range(3)]
    b = collate(samples, ["p0", "", "p2"], "t2i", "src")
    assert isinstance(b, SFTBatch) and len(b) == 3 and b.kind == "t2i" and b.source == "src"
    assert b.images.shape == (3, 3, 32, 64) and b.images.dtype == torch.float32
    assert b.prompts == ["p0", "", "p2"] and b.ref_images is None  # t2i batches carry no inputs
    expect = torch.from_numpy(np.array(samples[1].image)).permute(2, 0, 1).float() / 255
    assert torch.equal(b.images[1], expect)  # pixels [3, H, W] in [0, 1], in sample order
    edit = collate([_sample(32, 32, i, refs=2) for i in range(2)], ["e0", "e1"], "edit", "ed")
    assert edit.kind == "edit" and [len(r) for r in edit.ref_images] == [2, 2]
    assert edit.ref_images[1][0].getpixel((0, 0)) == (1, 0, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images": torch.zeros(2, 3, 32), "prompts": ["a", "b"]}, r"\[B, 3, H, W\]"),
        ({"images": torch.zeros(2, 4, 32, 32), "prompts": ["a", "b"]}, r"\[B, 3, H, W\]"),
        ({"images": torch.zeros(2, 3, 32, 32), "prompts": ["a"]}, "2 images for 1 prompts"),
        (
            {"images": torch.zeros(2, 3, 32, 32), "prompts": ["a", "b"], "ref_images": [[]]},
            "1 lists of reference images",
        ),
        ({"images": torch.zeros(1, 3, 32, 32), "prompts": ["a"], "kind": "video"}, "t2i | edit"),
    ],
)
def test_bad_batches_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SFTBatch(**kwargs)
