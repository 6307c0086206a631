"""Image data for the pre-training / SFT stages and the auxiliary SFT loss of MR-GRPO.

One module a job:

* :mod:`~mrgrpo.sft_data.images`: decoding (EXIF orientation) and resizing to the pixel budget;
* :mod:`~mrgrpo.sft_data.samples`: what sources yield (:class:`Sample`, :class:`Skipped`) and
  the skip counts (:class:`DataStats`);
* :mod:`~mrgrpo.sft_data.order`: the seeded, rank-sharded orders;
* :mod:`~mrgrpo.sft_data.records`: records files of the released DeepGen layouts (``t2i``,
  ``caption``, ``edit``);
* :mod:`~mrgrpo.sft_data.webdataset`: WebDataset tar shards;
* :mod:`~mrgrpo.sft_data.source`: the one :class:`SampleSource` protocol both implement, and
  :class:`SourceStream` (same-size batches from any source);
* :mod:`~mrgrpo.sft_data.mixture`: :class:`SFTStream`, the seeded, resumable mixture of sources;
* :mod:`~mrgrpo.sft_data.batch`: :class:`SFTBatch`, the typed batch a policy's ``flow_matching_loss`` reads;
* :mod:`~mrgrpo.sft_data.build`: :func:`build_sft_stream`, the stream of a recipe;
* :mod:`~mrgrpo.sft_data.synth`: ``mrgrpo data synth``, a small synthetic data set.

Every image is resized to a pixel budget keeping its aspect ratio (:func:`fit_to_budget`), and
batches hold images of ONE size (per-source size buckets), so nothing is padded. Unreadable
records and images are skipped and counted in :class:`DataStats`; a source with no readable
record fails at start with an error naming its file(s). ``docs/sft_data.md`` describes the
formats, the batch and the mixture.

Names are imported lazily (``from mrgrpo.sft_data import build_sft_stream`` loads only what it
needs; the CLI imports :mod:`~mrgrpo.sft_data.synth` without torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "IMAGE_EXTS": "images",
    "fit_to_budget": "images",
    "resize_to_budget": "images",
    "to_tensor": "images",
    "open_image": "images",
    "REASONS": "samples",
    "DataStats": "samples",
    "Kind": "samples",
    "Sample": "samples",
    "Skipped": "samples",
    "epoch_order": "order",
    "ImageRecord": "records",
    "ImageRecordDataset": "records",
    "RecordSource": "records",
    "load_records": "records",
    "parse_record": "records",
    "records_files": "records",
    "ShardSource": "webdataset",
    "decode_wds_sample": "webdataset",
    "expand_shards": "webdataset",
    "iter_shard": "webdataset",
    "SampleSource": "source",
    "SourceStream": "source",
    "SFTStream": "mixture",
    "SFTBatch": "batch",
    "collate": "batch",
    "build_sft_stream": "build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
