"""WebDataset tar shards as an SFT source (text-to-image), read with the ``webdataset`` library.

``path`` is a brace pattern (``data/{000..009}.tar``, ``::``-separated lists), a folder of
``.tar`` files or a glob. A sample holds an image (``jpg``/``jpeg``/``png``/``webp``) and a text
(``txt``, the ``caption_key`` entry, or a ``json`` with the caption under ``caption_key``).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

from mrgrpo.config import RecipeError
from mrgrpo.sft_data.images import IMAGE_EXTS, open_image
from mrgrpo.sft_data.order import TAG_SHARDS, rng
from mrgrpo.sft_data.records import first_text
from mrgrpo.sft_data.samples import Kind, Sample, Skipped
from mrgrpo.sft_data.source import Cursor, identity


def expand_shards(path: str) -> list[str]:
    """Shard URLs of ``path``: a brace pattern (``d/{000..009}.tar``, ``::``-separated lists), a
    folder of ``.tar`` files, or a glob. Local shards that do not exist are dropped."""
    from webdataset.shardlists import expand_urls

    p = Path(path)
    if p.is_dir():
        return sorted(str(q) for q in p.glob("*.tar"))
    if any(c in path for c in "*?[") and "{" not in path:
        return sorted(glob.glob(path))
    urls = expand_urls(path)
    return [u for u in urls if _is_remote(u) or Path(u).is_file()]


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def decode_wds_sample(
    sample: dict[str, Any], caption_key: str, pixel_budget: int, multiple: int = 32
) -> Sample | Skipped:
    """A raw webdataset sample (``{"__key__", "jpg": bytes, "txt": bytes, ...}``) -> :class:`Sample`.

    Image: the first of ``jpg, jpeg, png, webp``. Text: the ``caption_key`` entry, else ``txt``,
    else ``json[caption_key]`` (or its ``caption`` / ``txt`` / ``prompt``, or
    ``annotation[caption_key]``).
    """
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    img_key = next((k for k in IMAGE_EXTS if k in sample), None)
    if img_key is None:
        entries = sorted(k for k in sample if not k.startswith("__"))
        return Skipped("bad_record", f"{where}: no image ({'/'.join(IMAGE_EXTS)}) in {entries}")
    text: str | None = None
    try:
        for k in (caption_key, "txt"):
            if k in sample and k != "json":
                text = sample[k].decode("utf-8") if isinstance(sample[k], (bytes, bytearray)) else str(sample[k])
                break
        if text is None and "json" in sample:
            meta = json.loads(sample["json"])
            if isinstance(meta, dict):
                ann = meta.get("annotation")
                cands = [
                    meta.get(caption_key),
                    meta.get("caption"),
                    meta.get("txt"),
                    meta.get("prompt"),
                    ann.get(caption_key) if isinstance(ann, dict) else ann,
                ]
                text = next((t for t in map(first_text, cands) if t is not None), None)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Skipped("bad_record", f"{where}: {exc}")
    if text is None:
        return Skipped("no_caption", f"{where}: no text ({caption_key!r}, txt or json)")
    try:
        image = open_image(sample[img_key], pixel_budget, multiple)
    except Exception as exc:  # noqa: BLE001
        return Skipped("corrupt", f"{where}: {type(exc).__name__}: {exc}"[:300])
    return Sample(image, text.strip(), [], None)


def iter_shard(url: str, errors: list[BaseException] | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar shard (``webdataset.tariterators.tarfile_samples``); read errors are
    appended to ``errors`` and the rest of the shard is still read when possible."""
    from webdataset.tariterators import tarfile_samples

    def handler(exc: BaseException) -> bool:
        if errors is not None:
            errors.append(exc)
        return True

    yield from tarfile_samples([{"url": url}], handler=handler)


class _ShardReader(IterableDataset):
    """Endless decoded samples of WebDataset shards from a cursor ``(epoch, shard pos, sample j)``.

    Per epoch the shards are permuted (seeded); with at least ``world_size`` shards each rank
    reads every ``world_size``-th shard, otherwise every rank reads all shards and keeps samples
    ``j % world_size == rank``. Yields ``(cursor after the item, Sample | Skipped)``.
    """

    def __init__(
        self,
        shards: list[str],
        seed: int,
        source_index: int,
        rank: int,
        world_size: int,
        caption_key: str,
        pixel_budget: int,
        multiple: int,
        start: tuple[int, int, int],
        name: str,
    ):
        super().__init__()
        self.shards, self.seed, self.src, self.rank, self.world = shards, seed, source_index, rank, world_size
        self.caption_key, self.budget, self.multiple = caption_key, pixel_budget, multiple
        self.start, self.name = start, name

    def epoch_shards(self, epoch: int) -> tuple[list[str], bool]:
        """This rank's shards for ``epoch`` and whether samples are split by index instead."""
        perm = rng(self.seed, TAG_SHARDS, self.src, epoch).permutation(len(self.shards))
        order = [self.shards[i] for i in perm]
        if len(order) >= self.world:
            return order[self.rank :: self.world], False
        return order, self.world > 1

    def __iter__(self) -> Iterator[tuple[tuple[int, int, int], Sample | Skipped]]:
        epoch, shard_pos, j0 = self.start
        while True:
            shards, split_samples = self.epoch_shards(epoch)
            whole_epoch, good = shard_pos == 0 and j0 == 0, 0
            for sp in range(shard_pos, len(shards)):
                url, errors, j = shards[sp], [], -1
                for j, raw in enumerate(iter_shard(url, errors)):
                    if j >= j0:
                        for exc in errors:
                            yield (epoch, sp, j), Skipped("bad_shard", f"{url}: {exc}"[:300], (url, j))
                    errors.clear()
                    if j < j0 or (split_samples and j % self.world != self.rank):
                        continue
                    item = decode_wds_sample(raw, self.caption_key, self.budget, self.multiple)
                    item.key = (url, j)
                    good += isinstance(item, Sample)
                    yield (epoch, sp, j + 1), item
                for exc in errors if j + 1 >= j0 else []:
                    yield (epoch, sp, j + 1), Skipped("bad_shard", f"{url}: {exc}"[:300], (url, j + 1))
                j0 = 0
            if whole_epoch and good == 0:
                raise RuntimeError(
                    f"SFT source {self.name!r}: a whole pass over its shards gave no readable sample "
                    f"(first shard {shards[0] if shards else '-'}); see the data/skipped_* counts"
                )
            epoch, shard_pos, j0 = epoch + 1, 0, 0

    def load(self, key: tuple[str, int]) -> Sample | Skipped:
        """Re-read the sample at ``(shard url, index)`` (restoring size buckets after a resume)."""
        url, j = key
        for i, raw in enumerate(iter_shard(url)):
            if i == j:
                item = decode_wds_sample(raw, self.caption_key, self.budget, self.multiple)
                item.key = key
                return item
        return Skipped("bad_shard", f"{url}: sample {j} not found on re-read", key)


class ShardSource:
    """WebDataset shards as a :class:`~mrgrpo.sft_data.source.SampleSource` (always text-to-image).

    The cursor is ``(epoch, shard position, sample index)``, a sample's locator ``(shard url,
    index)``. Decoding uses at most one DataLoader worker, which keeps the order.
    """

    kind: Kind = "t2i"

    def __init__(
        self,
        shards: list[str],
        seed: int,
        source_index: int,
        caption_key: str = "caption",
        pixel_budget: int = 512,
        multiple: int = 32,
        rank: int = 0,
        world_size: int = 1,
        weight: float = 1.0,
        name: str = "data",
    ):
        self.name, self.weight, self.files = name, weight, list(shards)
        self.max_failures: int | None = None  # the reader raises after a whole epoch without a readable sample
        self.reader = _ShardReader(
            list(shards), seed, source_index, rank, world_size, caption_key, pixel_budget, multiple, (0, 0, 0), name
        )

    def start(self) -> Cursor:
        return (0, 0, 0)

    def read(self, cursor: Cursor, num_workers: int) -> Iterator[tuple[Cursor, Sample | Skipped]]:
        epoch, shard_pos, j = cursor
        self.reader.start = (epoch, shard_pos, j)
        if num_workers == 0:
            return iter(self.reader)
        return iter(DataLoader(self.reader, batch_size=None, num_workers=1, collate_fn=identity))

    def load(self, key: Any) -> Sample | Skipped:
        url, j = key
        return self.reader.load((url, int(j)))

    def probe(self) -> None:
        examples: list[str] = []
        r = self.reader
        for url in self.files:
            errors: list[BaseException] = []
            for raw in iter_shard(url, errors):
                item = decode_wds_sample(raw, r.caption_key, r.budget, r.multiple)
                if isinstance(item, Sample):
                    return
                if len(examples) < 3:
                    examples.append(item.detail)
            examples.extend(f"{url}: {e}" for e in errors[:2])
        files = self.files
        raise RecipeError(
            f"SFT source {self.name!r}: no readable sample (image + text) in the shards {files[:5]}"
            f"{' ...' if len(files) > 5 else ''}, e.g. {examples[:3]}. Fix: samples need a jpg/png/webp "
            f"image and a txt or json caption (caption_key={r.caption_key!r})."
        )


__all__ = ["ShardSource", "decode_wds_sample", "expand_shards", "iter_shard"]
