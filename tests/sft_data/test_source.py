"""SourceStream: size buckets, giving up on a source with nothing readable."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image
from sft_util import sft_cfg, write_edit, write_t2i

from mrgrpo.config import SFTSource
from mrgrpo.sft_data import DataStats, Sample, SampleSource, SFTStream, SourceStream, build_sft_stream


def test_images_vanishing_mid_run_raise_instead_of_looping(tmp_path):
    path = write_t2i(tmp_path, 4, sizes=[(40, 40)])
    stream = build_sft_stream([SFTSource(name="d", path=str(path))], sft_cfg(), 2, 0)
    next(stream)
    for f in (tmp_path / "img").iterdir():
        f.unlink()
    with pytest.raises(RuntimeError, match="no readable sample"):
        for _ in range(10):
            next(stream)


def test_size_buckets_never_mix_sizes(tmp_path):
    path = write_t2i(tmp_path, 30)
    edit = write_edit(tmp_path, 12)
    stream = build_sft_stream(
        [SFTSource(name="t", path=str(path)), SFTSource(name="e", path=str(edit), format="edit")],
        sft_cfg(t2i_edit_ratio=(1, 1)),
        batch_size=3,
        seed=1,
    )
    shapes = Counter()
    for _ in range(40):
        b = next(stream)
        assert b.images.ndim == 4 and b.images.shape[0] == 3
        h, w = b.images.shape[-2:]
        assert h % 32 == 0 and w % 32 == 0
        shapes[(h, w)] += 1
        if b.kind == "edit":
            for refs in b.ref_images:
                assert [r.size for r in refs] == [(w, h)]  # the inputs here have the target's size
    assert set(shapes) == {(64, 64), (64, 96), (96, 64)}


class ListSource:
    """An in-memory SampleSource (neither records nor shards): sample ``i`` has size ``sizes[i % n]``."""

    kind = "t2i"
    weight = 1.0
    max_failures = None

    def __init__(self, name: str, sizes: list[tuple[int, int]]):
        self.name, self.sizes, self.files = name, sizes, [f"memory:{name}"]

    def item(self, i: int) -> Sample:
        w, h = self.sizes[i % len(self.sizes)]
        return Sample(Image.new("RGB", (w, h), (i % 256, 0, 0)), f"{self.name} {i}", [], i)

    def start(self):
        return (0,)

    def read(self, cursor, num_workers):
        (i,) = cursor
        while True:
            yield (i + 1,), self.item(i)
            i += 1

    def load(self, key):
        return self.item(int(key))

    def probe(self) -> None:
        return None


def test_any_sample_source_plugs_into_buckets_mixture_and_resume():
    src = ListSource("m", [(32, 32), (64, 32), (64, 32), (32, 32)])
    assert isinstance(src, SampleSource)
    stream = SourceStream(src, batch_size=2, stats=DataStats())
    assert [s.prompt for s in stream.next_batch()] == ["m 1", "m 2"]  # the first full bucket (64x32) comes first
    state = json.loads(json.dumps(stream.state_dict()))
    assert state == {"cursor": [3], "buckets": [[32, 32, [0]]]}
    resumed = SourceStream(src, batch_size=2, stats=DataStats())
    resumed.load_state_dict(state)
    assert [s.prompt for s in resumed.next_batch()] == [s.prompt for s in stream.next_batch()] == ["m 0", "m 3"]
    mix = SFTStream([SourceStream(src, 2, DataStats())], caption_dropout=0.0)
    batch = next(mix)
    assert batch.source == "m" and batch.kind == "t2i" and tuple(batch.images.shape) == (2, 3, 32, 64)
