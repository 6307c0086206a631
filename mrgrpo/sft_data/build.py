"""The SFT batch stream of a recipe (``data.sft_sources`` + ``sft``): sources opened, probed, mixed."""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from mrgrpo.config import RecipeError, SFTConfig, SFTSource
from mrgrpo.sft_data.mixture import SFTStream
from mrgrpo.sft_data.records import ImageRecordDataset, RecordSource, records_files
from mrgrpo.sft_data.samples import DataStats
from mrgrpo.sft_data.source import SampleSource, SourceStream
from mrgrpo.sft_data.webdataset import ShardSource, expand_shards

log = logging.getLogger(__name__)

#: sides of every SFT image are multiples of this (VAE x8, DiT patch 2, ViT 28/32 resize and 2x2 merge)
MULTIPLE = 32


def source_files(src: SFTSource, path: str) -> list[str]:
    """The files a source reads at the resolved ``path``: tar shards or records files (may be empty)."""
    if src.format == "webdataset":
        return expand_shards(path)
    return [str(f) for f in records_files(path)]


def open_source(
    src: SFTSource,
    name: str,
    index: int,
    path: str,
    files: list[str],
    image_root: str | None,
    sft_cfg: SFTConfig,
    seed: int,
    stats: DataStats,
    rank: int = 0,
    world_size: int = 1,
) -> SampleSource:
    """The :class:`~mrgrpo.sft_data.source.SampleSource` of one recipe source (the only place that
    looks at ``format``); ``files`` = :func:`source_files` of the resolved ``path``."""
    if src.format == "webdataset":
        return ShardSource(
            files, seed, index, src.caption_key, sft_cfg.pixel_budget, MULTIPLE, rank, world_size, src.weight, name
        )
    ds = ImageRecordDataset(path, src.format, src.caption_key, image_root, sft_cfg.pixel_budget, MULTIPLE, stats, name)
    return RecordSource(ds, seed, index, rank, world_size, src.weight, name)


def build_sft_stream(
    sources: Sequence[SFTSource],
    sft_cfg: SFTConfig,
    batch_size: int,
    seed: int,
    resolve_path: Callable[[str], Path] | None = None,
    rank: int = 0,
    world_size: int = 1,
    *,
    num_workers: int | None = None,
    allow_empty: bool = True,
) -> SFTStream | None:
    """The SFT batch stream of a recipe (``data.sft_sources`` + ``sft``), for one process.

    Args:
        sources: the recipe's ``data.sft_sources``.
        sft_cfg: ``sft`` (``caption_dropout``, ``t2i_edit_ratio``, ``pixel_budget``, ``num_workers``).
        batch_size: images per batch on this process.
        seed: the run seed (``train.seed``); the same on every process.
        resolve_path: maps a recipe path to a file path (``RunConfig.resolve_path``); default ``Path``.
        rank, world_size: this process and the number of processes; each rank reads a disjoint
            share of every source (records or shards).
        num_workers: DataLoader decoding workers per source (default ``sft_cfg.num_workers``).
        allow_empty: when every source is optional (``required: false``) and missing, return None
            with a warning (MR-GRPO then skips its auxiliary loss); False raises instead.

    Returns:
        An :class:`~mrgrpo.sft_data.mixture.SFTStream` (``next(stream)`` -> batch; ``stream.stats``;
        ``state_dict()``), or None (see ``allow_empty``).

    Raises:
        RecipeError: a required source is missing; a source has no readable record (the message
            names its files); the ratio gives no weight to the available kinds.
    """
    resolve = resolve_path or (lambda p: Path(os.path.expanduser(os.path.expandvars(p))))
    workers = sft_cfg.num_workers if num_workers is None else num_workers
    stats = DataStats()
    streams: list[SourceStream] = []
    names: Counter[str] = Counter()
    for index, src in enumerate(sources):
        names[src.name] += 1
        name = src.name if names[src.name] == 1 else f"{src.name}#{names[src.name]}"
        path = str(resolve(src.path))
        root = str(resolve(src.image_root)) if src.image_root else None
        files = source_files(src, path)
        if not files:
            what = "no shard matches" if src.format == "webdataset" else "no records file at"
            msg = f"SFT source {src.name!r}: {what} {path}"
            if src.required:
                raise RecipeError(
                    f"{msg}. Fix: point data.sft_sources[{index}].path at your copy of the data "
                    "(relative paths are taken from the recipe's folder) or set `required: false`."
                )
            warnings.warn(f"{msg}; skipped (required: false)", stacklevel=2)
            log.warning("%s; skipped (required: false)", msg)
            continue
        source = open_source(src, name, index, path, files, root, sft_cfg, seed, stats, rank, world_size)
        source.probe()
        streams.append(SourceStream(source, batch_size, stats, workers))
    if not streams:
        if allow_empty and sources:
            warnings.warn("no SFT source is available (all optional and missing): no SFT batches", stacklevel=2)
            return None
        raise RecipeError(
            "no SFT data: data.sft_sources is empty or every source is missing. Fix: add image sources "
            "(see docs/sft_data.md; `mrgrpo data synth --out DIR` writes a small one)."
        )
    return SFTStream(streams, tuple(sft_cfg.t2i_edit_ratio), sft_cfg.caption_dropout, seed, rank, stats)


__all__ = ["MULTIPLE", "build_sft_stream", "open_source", "source_files"]
