"""Records files of the released DeepGen layouts (``t2i``, ``caption``, ``edit``) as an SFT source.

* ``t2i``: records ``{"image_path": ..., "txt": ...}`` in a ``.json`` list or a ``.jsonl`` file;
* ``caption``: records ``{"image": ..., "annotation": {<caption_key>: ...}}`` (or a plain string
  ``annotation``);
* ``edit``: records ``{"input_image": [paths] | path, "output_image": path, "instruction": ...}``.

Relative image paths are taken against ``image_root`` or else the records file's folder.
Malformed records are counted while the files are parsed; images are decoded when read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset, Sampler

from mrgrpo.config import RecipeError
from mrgrpo.sft_data.images import failure_reason, open_image
from mrgrpo.sft_data.order import epoch_order
from mrgrpo.sft_data.samples import DataStats, Kind, Sample, Skipped
from mrgrpo.sft_data.source import Cursor, identity

RECORD_FORMATS: tuple[str, ...] = ("t2i", "caption", "edit")


@dataclass
class ImageRecord:
    """One sample as stored: the target image path, the text, the editing inputs (paths)."""

    image: str
    prompt: str
    refs: tuple[str, ...] = ()


def _resolve(p: str, base: Path) -> str:
    q = Path(os.path.expanduser(str(p)))
    return str(q if q.is_absolute() else base / q)


def first_text(value: Any) -> str | None:
    """``value`` if it is a string, else the first non-blank string of a list, else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            if isinstance(v, str) and v.strip():
                return v
    return None


def parse_record(obj: Any, fmt: str, base: Path, caption_key: str = "caption") -> ImageRecord | Skipped:
    """One raw record (a dict from json) of format ``t2i | caption | edit`` -> :class:`ImageRecord`.

    ``t2i``: ``image_path`` (or ``image``) and ``txt`` (or ``prompt`` / ``caption``);
    ``caption``: ``image`` and ``annotation`` (a dict read at ``caption_key``, or a string);
    ``edit``: ``input_image`` (list or one path), ``output_image``, ``instruction`` (or ``prompt``).
    Relative paths are joined to ``base``. Malformed records give a :class:`Skipped`.
    """
    if not isinstance(obj, dict):
        return Skipped("bad_record", f"not an object: {str(obj)[:60]!r}")
    if fmt == "t2i":
        img = obj.get("image_path", obj.get("image"))
        text = first_text(obj.get("txt", obj.get("prompt", obj.get("caption"))))
        refs: tuple[str, ...] = ()
    elif fmt == "caption":
        img = obj.get("image", obj.get("image_path"))
        ann = obj.get("annotation")
        text = first_text(ann.get(caption_key) if isinstance(ann, dict) else ann)
        refs = ()
    elif fmt == "edit":
        img = obj.get("output_image")
        text = first_text(obj.get("instruction", obj.get("prompt")))
        raw = obj.get("input_image", obj.get("input_images"))
        raw = [raw] if isinstance(raw, str) else raw
        if not raw or not isinstance(raw, (list, tuple)) or not all(isinstance(r, str) for r in raw):
            return Skipped("bad_record", f"no input_image in {str(obj)[:80]!r}")
        refs = tuple(_resolve(r, base) for r in raw)
    else:
        raise ValueError(f"unknown record format {fmt!r} (t2i | caption | edit)")
    if not isinstance(img, str) or not img:
        return Skipped("bad_record", f"no image path in {str(obj)[:80]!r}")
    if text is None:
        return Skipped("no_caption", f"no text in {str(obj)[:80]!r}")
    return ImageRecord(_resolve(img, base), text, refs)


def records_files(path: str | os.PathLike) -> list[Path]:
    """The records files at ``path``: the file itself, or the ``.json``/``.jsonl`` files of a folder (sorted)."""
    p = Path(path)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if q.suffix in (".json", ".jsonl") and q.is_file())
    return [p] if p.is_file() else []


def _iter_raw(path: Path) -> Iterator[Any]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield Skipped("bad_record", f"{path}:{line_no}: {exc}")
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):  # {"data": [...]} or {id: record}
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else list(data.values())
    if not isinstance(data, list):
        raise RecipeError(f"{path}: expected a JSON list of records")
    yield from data


def load_records(
    path: str | os.PathLike,
    fmt: str,
    caption_key: str = "caption",
    image_root: str | os.PathLike | None = None,
    stats: DataStats | None = None,
    source: str = "data",
) -> list[ImageRecord]:
    """Parse the records file(s) at ``path``; malformed records are counted in ``stats`` and dropped."""
    out: list[ImageRecord] = []
    for f in records_files(path):
        base = Path(image_root) if image_root is not None else f.parent
        try:
            raws = list(_iter_raw(f))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecipeError(
                f"{f}: not valid JSON ({exc}). Fix: a JSON list of records or one JSON object per line (.jsonl)."
            ) from None
        for obj in raws:
            rec = obj if isinstance(obj, Skipped) else parse_record(obj, fmt, base, caption_key)
            if isinstance(rec, Skipped):
                if stats is not None:
                    stats.skip(source, rec.reason, rec.detail)
            else:
                out.append(rec)
    return out


class ImageRecordDataset(Dataset):
    """Map-style dataset over records files (formats ``t2i``, ``caption``, ``edit``).

    ``dataset[i]`` -> :class:`Sample` (target resized to the budget, ``sample.image`` of size
    ``fit_to_budget(w, h)``; editing inputs resized likewise) or :class:`Skipped` when an image is
    missing or cannot be decoded. It never raises for a bad image.

    Args:
        path: a ``.json`` / ``.jsonl`` records file or a folder of them.
        format: ``t2i | caption | edit``.
        caption_key: key inside ``annotation`` (caption format).
        image_root: folder for relative image paths (default: each records file's folder).
        pixel_budget, multiple: sizing (:func:`~mrgrpo.sft_data.images.fit_to_budget`).
        stats: where malformed records are counted while parsing.
        name: the source name in the statistics.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        format: str = "t2i",
        caption_key: str = "caption",
        image_root: str | os.PathLike | None = None,
        pixel_budget: int = 512,
        multiple: int = 32,
        stats: DataStats | None = None,
        name: str = "data",
    ):
        if format not in RECORD_FORMATS:
            raise ValueError(f"ImageRecordDataset: format must be t2i | caption | edit, got {format!r}")
        self.path, self.format, self.name = Path(path), format, name
        self.kind: Kind = "edit" if format == "edit" else "t2i"
        self.pixel_budget, self.multiple = pixel_budget, multiple
        self.files = records_files(path)
        self.stats = stats
        self.records = load_records(path, format, caption_key, image_root, stats, name)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample | Skipped:
        rec = self.records[index]
        current = rec.image
        try:
            image = open_image(rec.image, self.pixel_budget, self.multiple)
            refs = []
            for r in rec.refs:
                current = r
                refs.append(open_image(r, self.pixel_budget, self.multiple))
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a skipped sample
            return Skipped(failure_reason(exc), f"{current}: {type(exc).__name__}: {exc}"[:300], index)
        return Sample(image, rec.prompt, refs, index)


class _OrderSampler(Sampler):
    """Endless ``(epoch, pos, record index)`` keys from a cursor, epoch after epoch."""

    def __init__(self, n: int, seed: int, source_index: int, rank: int, world_size: int, start: tuple[int, int]):
        self.n, self.seed, self.src, self.rank, self.world, self.start = n, seed, source_index, rank, world_size, start

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch, pos = self.start
        while True:
            order = epoch_order(self.n, self.seed, self.src, epoch, self.rank, self.world)
            for p in range(pos, len(order)):
                yield epoch, p, int(order[p])
            epoch, pos = epoch + 1, 0


class _Keyed(Dataset):
    """``ds[(epoch, pos, i)]`` -> ``((epoch, pos + 1), ds[i])``: the item with the cursor after it."""

    def __init__(self, ds: ImageRecordDataset):
        self.ds = ds

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[tuple[int, int], Sample | Skipped]:
        epoch, pos, index = key
        return (epoch, pos + 1), self.ds[index]


class RecordSource:
    """A records dataset as a :class:`~mrgrpo.sft_data.source.SampleSource`.

    Each epoch is a seeded permutation of the records (:func:`~mrgrpo.sft_data.order.epoch_order`),
    of which this rank reads every ``world_size``-th; the cursor is ``(epoch, position)`` and a
    sample's locator its record index.
    """

    def __init__(
        self,
        dataset: ImageRecordDataset,
        seed: int,
        source_index: int,
        rank: int = 0,
        world_size: int = 1,
        weight: float = 1.0,
        name: str | None = None,
    ):
        self.dataset, self.seed, self.index, self.rank, self.world = dataset, seed, source_index, rank, world_size
        self.name = name if name is not None else dataset.name
        self.kind: Kind = dataset.kind
        self.weight = weight
        self.files = [str(f) for f in dataset.files]
        self.max_failures: int | None = len(dataset) + 1

    def start(self) -> Cursor:
        return (0, 0)

    def read(self, cursor: Cursor, num_workers: int) -> Iterator[tuple[Cursor, Sample | Skipped]]:
        epoch, pos = cursor
        sampler = _OrderSampler(len(self.dataset), self.seed, self.index, self.rank, self.world, (epoch, pos))
        keyed = _Keyed(self.dataset)
        if num_workers == 0:
            return (keyed[k] for k in sampler)
        return iter(DataLoader(keyed, sampler=sampler, batch_size=None, num_workers=num_workers, collate_fn=identity))

    def load(self, key: Any) -> Sample | Skipped:
        return self.dataset[int(key)]

    def probe(self) -> None:
        ds, files = self.dataset, self.files
        if len(ds) == 0:
            skipped = list(ds.stats.recent)[-3:] if ds.stats is not None else []
            raise RecipeError(
                f"SFT source {self.name!r}: no usable record in {files} (format {ds.format!r}). "
                f"Fix: check the format / caption_key of the source; skipped: {skipped}"
            )
        examples: list[str] = []
        order = epoch_order(len(ds), self.seed, self.index, 0, self.rank, self.world)
        for i in order:
            item = ds[int(i)]
            if isinstance(item, Sample):
                return
            if len(examples) < 3:
                examples.append(item.detail)
        where = "this rank's share of " if len(order) < len(ds) else ""
        raise RecipeError(
            f"SFT source {self.name!r}: none of the {len(order)} records in {where}{files} has a "
            f"readable image, e.g. {examples}. Fix: check the image files and `image_root` (relative "
            "image paths are taken from image_root, else from the records file's folder)."
        )


__all__ = [
    "RECORD_FORMATS",
    "ImageRecord",
    "ImageRecordDataset",
    "RecordSource",
    "first_text",
    "load_records",
    "parse_record",
    "records_files",
]
