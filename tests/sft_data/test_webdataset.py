"""WebDataset shards as an SFT source."""

from __future__ import annotations

from sft_util import sft_cfg, write_shards

from mrgrpo.config import SFTSource
from mrgrpo.sft_data import build_sft_stream


def test_webdataset_shards_load(tmp_path):
    pattern = write_shards(tmp_path / "wds", n_shards=2, per_shard=6)
    src = SFTSource(name="w", path=pattern, format="webdataset")
    stream = build_sft_stream([src], sft_cfg(), batch_size=2, seed=0)
    seen = []
    for _ in range(5):
        b = next(stream)
        assert b.kind == "t2i" and b.ref_images is None and b.images.shape[0] == 2
        seen += b.prompts
    assert set(seen) <= {f"wds prompt {k}" for k in range(12)} and len(set(seen)) == 10  # no repeats within the epoch
    # json captions with a caption key
    pattern2 = write_shards(tmp_path / "wds2", n_shards=1, per_shard=4, caption_json=True)
    s2 = build_sft_stream([SFTSource(name="w2", path=pattern2, format="webdataset")], sft_cfg(), batch_size=1, seed=0)
    assert next(s2).prompts[0].startswith("wds prompt ")
    # a folder of shards works too
    s3 = build_sft_stream(
        [SFTSource(name="w3", path=str(tmp_path / "wds"), format="webdataset")], sft_cfg(), batch_size=1, seed=0
    )
    assert next(s3).prompts[0].startswith("wds prompt ")
