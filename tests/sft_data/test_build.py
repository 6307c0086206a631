"""Building the SFT stream of a recipe: probing sources, required and optional ones."""

from __future__ import annotations

import pytest
import webdataset as wds
from sft_util import sft_cfg, write_t2i

from mrgrpo.config import RecipeError, SFTSource
from mrgrpo.sft_data import build_sft_stream


def test_no_readable_record_fails_at_start_naming_the_file(tmp_path):
    path = write_t2i(tmp_path, 3)
    for i in range(3):
        (tmp_path / f"img/t2i_{i}.png").write_bytes(b"garbage")
    with pytest.raises(RecipeError, match="t2i.jsonl"):
        build_sft_stream([SFTSource(name="bad", path=str(path))], sft_cfg(), 2, 0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RecipeError, match="empty.jsonl"):
        build_sft_stream([SFTSource(name="e", path=str(empty))], sft_cfg(), 2, 0)
    wrong_format = write_t2i(tmp_path / "x", 2)  # t2i records read as edit records: none usable
    with pytest.raises(RecipeError, match="no usable record"):
        build_sft_stream([SFTSource(name="f", path=str(wrong_format), format="edit")], sft_cfg(), 2, 0)
    (tmp_path / "shards").mkdir()
    with wds.TarWriter(str(tmp_path / "shards/bad-000.tar")) as sink:
        sink.write({"__key__": "0", "jpg": b"not an image", "txt": "x"})
    with pytest.raises(RecipeError, match="bad-000.tar"):
        build_sft_stream(
            [SFTSource(name="w", path=str(tmp_path / "shards/bad-{000..000}.tar"), format="webdataset")],
            sft_cfg(),
            2,
            0,
        )


def test_missing_sources_required_and_optional(tmp_path):
    with pytest.raises(RecipeError, match="required: false"):
        build_sft_stream([SFTSource(name="m", path=str(tmp_path / "nope.jsonl"))], sft_cfg(), 2, 0)
    good = write_t2i(tmp_path, 4)
    with pytest.warns(UserWarning, match="skipped"):
        s = build_sft_stream(
            [
                SFTSource(name="m", path=str(tmp_path / "nope.jsonl"), required=False),
                SFTSource(name="g", path=str(good)),
            ],
            sft_cfg(),
            2,
            0,
        )
    assert [x.name for x in s.sources] == ["g"]
    with pytest.warns(UserWarning):
        assert (
            build_sft_stream([SFTSource(name="m", path=str(tmp_path / "nope.jsonl"), required=False)], sft_cfg(), 2, 0)
            is None
        )
    with pytest.raises(RecipeError), pytest.warns(UserWarning):
        build_sft_stream(
            [SFTSource(name="m", path=str(tmp_path / "nope.jsonl"), required=False)], sft_cfg(), 2, 0, allow_empty=False
        )
