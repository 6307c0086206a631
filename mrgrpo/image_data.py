"""Image datasets for the pre-training / SFT stages and the auxiliary SFT loss of MR-GRPO.

Formats (the released DeepGen ones, see ``docs/sft_data.md``):

* ``t2i``: records ``{"image_path": ..., "txt": ...}`` in a ``.json`` list or a ``.jsonl`` file;
* ``caption``: records ``{"image": ..., "annotation": {<caption_key>: ...}}`` (or a plain string
  ``annotation``);
* ``edit``: records ``{"input_image": [paths] | path, "output_image": path, "instruction": ...}``;
* ``webdataset``: tar shards (``data/{000..009}.tar``, a folder of ``.tar`` files or a glob) whose
  samples hold an image (``jpg``/``jpeg``/``png``/``webp``) and a text (``txt``, the
  ``caption_key`` entry, or a ``json`` with the caption under ``caption_key``). Read with the
  ``webdataset`` library.

Relative image paths are taken against ``image_root`` or else the records file's folder.

Every image is resized to a pixel budget keeping its aspect ratio (:func:`fit_to_budget`), and
batches hold images of ONE size (per-source size buckets), so nothing is padded. Unreadable
records and images are skipped and counted in :class:`DataStats`; a source with no readable
record fails at start with an error naming its file(s).

:func:`build_sft_stream` mixes the sources into one endless, seeded, resumable stream of batches::

    {"images": Tensor[B, 3, H, W] float32 in [0, 1],   # the targets
     "prompts": list[str],                              # "" where the caption was dropped
     "ref_images": list[list[PIL.Image]] | None,        # editing inputs (resized); None for t2i
     "kind": "t2i" | "edit",
     "source": str}                                     # the source's name (for logs)

Determinism: the kind and the source of batch ``n`` depend on ``(seed, n)`` only (all ranks
train the same kind at the same step); the order of samples depends on ``(seed, source,
epoch)`` and the rank's shard; caption dropout on ``(seed, rank, n)``. ``state_dict()`` holds the
batch counter, each source's cursor, the contents of its size buckets (as record locators) and
the statistics, so a restored stream yields exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from mrgrpo.config import RecipeError, SFTConfig, SFTSource

log = logging.getLogger(__name__)

IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
REASONS: tuple[str, ...] = ("missing", "corrupt", "bad_record", "no_caption", "bad_shard")
_TAG_ORDER, _TAG_SHARDS, _TAG_MIX, _TAG_DROP = 11, 12, 13, 14
Kind = str  # "t2i" | "edit"


# --------------------------------------------------------------------------------------
# sizing
# --------------------------------------------------------------------------------------
def fit_to_budget(w: int, h: int, budget: int = 512, multiple: int = 32) -> tuple[int, int]:
    """Target size ``(W, H)`` of a ``w x h`` image for a pixel budget of ``budget x budget``.

    The image is scaled by ``s = budget / sqrt(w * h)`` (aspect ratio kept, ``W * H`` about
    ``budget**2``), then each side is rounded UP to a multiple of ``multiple`` (as DeepGen does):
    ``W = multiple * ceil(w * s / multiple)``, same for ``H``, and at least ``multiple``. Rounding
    up changes each side by less than ``multiple`` pixels, so the aspect ratio is kept to within
    ``multiple / side`` and the pixel count is ``budget**2`` to ``(1 + multiple/W)(1 + multiple/H)``
    times it. A square image gives ``(budget, budget)`` when ``budget`` is a multiple.

    Args:
        w, h: source width and height in pixels (> 0).
        budget: side of the square pixel budget (512 in DeepGen).
        multiple: sides are multiples of this (32: VAE x8, DiT patch 2, ViT merge 2 x 14 -> 28/32).

    Returns:
        ``(W, H)``, both positive multiples of ``multiple``.
    """
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    scale = budget / math.sqrt(float(w) * float(h))

    def side(x: float) -> int:
        # the epsilon absorbs float error: 512.0000000001 must not round up to 544
        return max(multiple, multiple * math.ceil(x * scale / multiple - 1e-6))

    return side(w), side(h)


def resize_to_budget(img: Image.Image, budget: int = 512, multiple: int = 32) -> Image.Image:
    """``img`` as RGB (transparency composited on white), resized to :func:`fit_to_budget` (bicubic)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("RGB")
    size = fit_to_budget(img.width, img.height, budget, multiple)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float32 tensor ``[3, H, W]`` in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _open_image(src: str | bytes, budget: int, multiple: int) -> Image.Image:
    """Decode a file path or encoded bytes fully, fix EXIF orientation and resize to the budget."""
    with Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return resize_to_budget(im, budget, multiple)


def _failure_reason(exc: BaseException) -> str:
    return "missing" if isinstance(exc, (FileNotFoundError, NotADirectoryError)) else "corrupt"


# --------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------
class DataStats:
    """Counts of used and skipped samples, per reason and per source (logged by the trainers).

    Reasons: ``missing`` (file not found), ``corrupt`` (cannot be decoded), ``bad_record`` (a
    record without the format's fields), ``no_caption`` (no text), ``bad_shard`` (a tar shard that
    cannot be opened or read). ``as_dict()`` gives flat numeric entries: ``samples``,
    ``batches_t2i``, ``batches_edit``, ``skipped``, ``skipped_<reason>`` and
    ``<source>/skipped_<reason>``.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.recent: deque[str] = deque(maxlen=20)  # the last skip messages, for debugging

    def skip(self, source: str, reason: str, detail: str = "") -> None:
        """Count one skipped sample (and warn for the first few of each reason and source)."""
        self.counts["skipped"] += 1
        self.counts[f"skipped_{reason}"] += 1
        self.counts[f"{source}/skipped_{reason}"] += 1
        msg = f"{source}: skipped ({reason}) {detail}".rstrip()
        self.recent.append(msg)
        if self.counts[f"{source}/skipped_{reason}"] <= 3:
            log.warning("%s%s", msg, "" if self.counts[f"{source}/skipped_{reason}"] < 3 else " (further ones are only counted)")

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def as_dict(self) -> dict[str, int]:
        """Flat ``{name: count}`` (numbers only)."""
        out = {"samples": 0, "batches_t2i": 0, "batches_edit": 0, "skipped": 0}
        out.update(self.counts)
        return dict(out)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = Counter(state.get("counts", {}))

    def __repr__(self) -> str:
        return f"DataStats({dict(self.counts)})"


# --------------------------------------------------------------------------------------
# samples and records
# --------------------------------------------------------------------------------------
@dataclass
class ImageRecord:
    """One sample as stored: the target image path, the text, the editing inputs (paths)."""

    image: str
    prompt: str
    refs: tuple[str, ...] = ()


@dataclass
class Sample:
    """One decoded sample: the resized target, the text, the resized editing inputs."""

    image: Image.Image
    prompt: str
    refs: list[Image.Image] = field(default_factory=list)
    key: Any = None  # where it came from: a record index, or (shard url, index in shard)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the target (the bucket key)."""
        return self.image.height, self.image.width


@dataclass
class Skipped:
    """A sample that could not be used, with the reason (one of :data:`REASONS`)."""

    reason: str
    detail: str = ""
    key: Any = None


def _resolve(p: str, base: Path) -> str:
    q = Path(os.path.expanduser(str(p)))
    return str(q if q.is_absolute() else base / q)


def _first_text(value: Any) -> str | None:
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
        text = _first_text(obj.get("txt", obj.get("prompt", obj.get("caption"))))
        refs: tuple[str, ...] = ()
    elif fmt == "caption":
        img = obj.get("image", obj.get("image_path"))
        ann = obj.get("annotation")
        text = _first_text(ann.get(caption_key) if isinstance(ann, dict) else ann)
        refs = ()
    elif fmt == "edit":
        img = obj.get("output_image")
        text = _first_text(obj.get("instruction", obj.get("prompt")))
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


def load_records(path: str | os.PathLike, fmt: str, caption_key: str = "caption", image_root: str | os.PathLike | None = None,
                 stats: DataStats | None = None, source: str = "data") -> list[ImageRecord]:
    """Parse the records file(s) at ``path``; malformed records are counted in ``stats`` and dropped."""
    out: list[ImageRecord] = []
    for f in records_files(path):
        base = Path(image_root) if image_root is not None else f.parent
        try:
            raws = list(_iter_raw(f))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{f}: not valid JSON ({exc}). Fix: a JSON list of records or one JSON object per line (.jsonl).") from None
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
        pixel_budget, multiple: sizing (:func:`fit_to_budget`).
        stats: where malformed records are counted while parsing.
        name: the source name in the statistics.
    """

    def __init__(self, path: str | os.PathLike, format: str = "t2i", caption_key: str = "caption",
                 image_root: str | os.PathLike | None = None, pixel_budget: int = 512, multiple: int = 32,
                 stats: DataStats | None = None, name: str = "data"):
        if format not in ("t2i", "caption", "edit"):
            raise ValueError(f"ImageRecordDataset: format must be t2i | caption | edit, got {format!r}")
        self.path, self.format, self.name = Path(path), format, name
        self.kind: Kind = "edit" if format == "edit" else "t2i"
        self.pixel_budget, self.multiple = pixel_budget, multiple
        self.files = records_files(path)
        self.records = load_records(path, format, caption_key, image_root, stats, name)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample | Skipped:
        rec = self.records[index]
        current = rec.image
        try:
            image = _open_image(rec.image, self.pixel_budget, self.multiple)
            refs = []
            for r in rec.refs:
                current = r
                refs.append(_open_image(r, self.pixel_budget, self.multiple))
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a skipped sample
            return Skipped(_failure_reason(exc), f"{current}: {type(exc).__name__}: {exc}"[:300], index)
        return Sample(image, rec.prompt, refs, index)


# --------------------------------------------------------------------------------------
# webdataset shards
# --------------------------------------------------------------------------------------
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


def decode_wds_sample(sample: dict[str, Any], caption_key: str, pixel_budget: int, multiple: int = 32) -> Sample | Skipped:
    """A raw webdataset sample (``{"__key__", "jpg": bytes, "txt": bytes, ...}``) -> :class:`Sample`.

    Image: the first of ``jpg, jpeg, png, webp``. Text: the ``caption_key`` entry, else ``txt``,
    else ``json[caption_key]`` (or its ``caption`` / ``txt`` / ``prompt``, or
    ``annotation[caption_key]``).
    """
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    img_key = next((k for k in IMAGE_EXTS if k in sample), None)
    if img_key is None:
        return Skipped("bad_record", f"{where}: no image ({'/'.join(IMAGE_EXTS)}) in {sorted(k for k in sample if not k.startswith('__'))}")
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
                cands = [meta.get(caption_key), meta.get("caption"), meta.get("txt"), meta.get("prompt"),
                         ann.get(caption_key) if isinstance(ann, dict) else ann]
                text = next((t for t in map(_first_text, cands) if t is not None), None)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Skipped("bad_record", f"{where}: {exc}")
    if text is None:
        return Skipped("no_caption", f"{where}: no text ({caption_key!r}, txt or json)")
    try:
        image = _open_image(sample[img_key], pixel_budget, multiple)
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


# --------------------------------------------------------------------------------------
# per-source ordered, sharded, resumable item streams
# --------------------------------------------------------------------------------------
def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) % (1 << 63) for p in parts])


def epoch_order(n: int, seed: int, source_index: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This rank's record indices for one epoch: a seeded permutation of ``range(n)``, every
    ``world_size``-th item from ``rank`` (disjoint across ranks). With fewer records than
    processes every rank takes the whole permutation."""
    perm = _rng(seed, _TAG_ORDER, source_index, epoch).permutation(n)
    return perm if n < world_size else perm[rank::world_size]


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


class _ShardStream(IterableDataset):
    """Endless decoded samples of WebDataset shards from a cursor ``(epoch, shard pos, sample j)``.

    Per epoch the shards are permuted (seeded); with at least ``world_size`` shards each rank
    reads every ``world_size``-th shard, otherwise every rank reads all shards and keeps samples
    ``j % world_size == rank``. Yields ``(cursor after the item, Sample | Skipped)``.
    """

    def __init__(self, shards: list[str], seed: int, source_index: int, rank: int, world_size: int, caption_key: str,
                 pixel_budget: int, multiple: int, start: tuple[int, int, int], name: str):
        super().__init__()
        self.shards, self.seed, self.src, self.rank, self.world = shards, seed, source_index, rank, world_size
        self.caption_key, self.budget, self.multiple, self.start, self.name = caption_key, pixel_budget, multiple, start, name

    def epoch_shards(self, epoch: int) -> tuple[list[str], bool]:
        """This rank's shards for ``epoch`` and whether samples are split by index instead."""
        perm = _rng(self.seed, _TAG_SHARDS, self.src, epoch).permutation(len(self.shards))
        order = [self.shards[i] for i in perm]
        if len(order) >= self.world:
            return order[self.rank::self.world], False
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
                raise RuntimeError(f"SFT source {self.name!r}: a whole pass over its shards gave no readable sample "
                                   f"(first shard {shards[0] if shards else '-'}); see the data/skipped_* counts")
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


def _identity(x: Any) -> Any:
    return x


class SourceStream:
    """One source as an endless stream of same-size batches (size buckets), sharded by rank.

    Samples are read in the source's seeded order; each decoded sample joins the bucket of its
    ``(H, W)``; the first bucket to hold ``batch_size`` samples is emitted. Skipped samples are
    counted in ``stats``. ``state_dict()`` = cursor + bucket contents as locators.
    """

    def __init__(self, name: str, kind: Kind, index: int, batch_size: int, seed: int, stats: DataStats, *,
                 dataset: ImageRecordDataset | None = None, shards: _ShardStream | None = None,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, weight: float = 1.0):
        if (dataset is None) == (shards is None):
            raise ValueError("SourceStream needs exactly one of dataset / shards")
        self.name, self.kind, self.index, self.batch_size, self.seed = name, kind, index, batch_size, seed
        self.dataset, self.shards, self.stats, self.weight = dataset, shards, stats, weight
        self.rank, self.world, self.num_workers = rank, world_size, num_workers
        self.cursor: tuple[int, ...] = (0, 0) if dataset is not None else (0, 0, 0)
        self.buckets: dict[tuple[int, int], list[Sample]] = {}
        self._it: Iterator | None = None

    # -- iteration ----------------------------------------------------------------------
    def _items(self) -> Iterator:
        if self.dataset is not None:
            sampler = _OrderSampler(len(self.dataset), self.seed, self.index, self.rank, self.world, tuple(self.cursor))
            src: Any = _Keyed(self.dataset)
            workers = self.num_workers
        else:
            self.shards.start = tuple(self.cursor)
            src, sampler, workers = self.shards, None, min(self.num_workers, 1)  # one worker keeps the order
        if workers == 0:
            return (src[k] for k in sampler) if sampler is not None else iter(src)
        return iter(DataLoader(src, sampler=sampler, batch_size=None, num_workers=workers, collate_fn=_identity))

    def next_item(self) -> Sample | Skipped:
        if self._it is None:
            self._it = self._items()
        cursor, item = next(self._it)
        self.cursor = tuple(cursor)
        return item

    def next_batch(self) -> list[Sample]:
        """The next ``batch_size`` samples of one size (in the order they were read)."""
        fails = 0
        limit = (len(self.dataset) if self.dataset is not None else 10**9) + 1
        while True:
            item = self.next_item()
            if isinstance(item, Skipped):
                self.stats.skip(self.name, item.reason, item.detail)
                fails += 1
                if fails > limit:
                    raise RuntimeError(f"SFT source {self.name!r}: no readable sample in a whole pass over {self.dataset.files}; "
                                       f"last: {item.detail}")
                continue
            fails = 0
            bucket = self.buckets.setdefault(item.size, [])
            bucket.append(item)
            if len(bucket) >= self.batch_size:
                del self.buckets[item.size]
                return bucket

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"cursor": list(self.cursor),
                "buckets": [[h, w, [s.key for s in items]] for (h, w), items in self.buckets.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._it = None  # a fresh reader from the restored cursor
        self.cursor = tuple(state["cursor"])
        self.buckets = {}
        for h, w, keys in state["buckets"]:
            items = []
            for key in keys:
                item = self.dataset[key] if self.dataset is not None else self.shards.load(tuple(key))
                if isinstance(item, Skipped):  # gone since the checkpoint: counted, not fatal
                    self.stats.skip(self.name, item.reason, item.detail)
                else:
                    items.append(item)
            if items:
                self.buckets[(int(h), int(w))] = items


# --------------------------------------------------------------------------------------
# the mixture
# --------------------------------------------------------------------------------------
class SFTStream:
    """Endless iterator of SFT batches mixing text-to-image and editing sources.

    Batch ``n``: its kind is drawn with probabilities ``t2i_edit_ratio`` (kinds without sources
    drop out), its source among that kind's sources by ``weight``, both from ``(seed, n)`` only;
    the batch is that source's next same-size bucket. Text-to-image captions are replaced by
    ``""`` with probability ``caption_dropout`` (from ``(seed, rank, n)``); editing never.

    Yields ``{"images": Tensor[B, 3, H, W] in [0, 1], "prompts": list[str], "ref_images":
    list[list[PIL.Image]] | None, "kind": "t2i" | "edit", "source": str}``.
    """

    def __init__(self, sources: Sequence[SourceStream], t2i_edit_ratio: tuple[float, float] = (3.0, 1.0),
                 caption_dropout: float = 0.1, seed: int = 0, rank: int = 0, stats: DataStats | None = None):
        self.sources = list(sources)
        if not self.sources:
            raise RecipeError("SFTStream needs at least one source")
        self.seed, self.rank, self.caption_dropout = seed, rank, caption_dropout
        self.stats = stats if stats is not None else DataStats()
        self.by_kind: dict[str, list[SourceStream]] = {k: [s for s in self.sources if s.kind == k and s.weight > 0] for k in ("t2i", "edit")}
        ratio = dict(zip(("t2i", "edit"), (float(t2i_edit_ratio[0]), float(t2i_edit_ratio[1]))))
        self.kind_probs = {k: (ratio[k] if self.by_kind[k] else 0.0) for k in ratio}
        total = sum(self.kind_probs.values())
        if total <= 0:
            have = [k for k in self.by_kind if self.by_kind[k]]
            raise RecipeError(f"sft.t2i_edit_ratio={list(t2i_edit_ratio)} gives no weight to the kinds the SFT sources provide ({have}). "
                              "Fix: give that kind a positive ratio, or add sources of the other kind (with weight > 0).")
        self.kind_probs = {k: v / total for k, v in self.kind_probs.items()}
        self.batches = 0

    def __iter__(self) -> SFTStream:
        return self

    def choose(self, n: int) -> SourceStream:
        """The source of batch ``n`` (same on every rank)."""
        u_kind, u_src = _rng(self.seed, _TAG_MIX, n).random(2)
        kind = "t2i" if u_kind < self.kind_probs["t2i"] else "edit"
        if not self.by_kind[kind]:
            kind = "t2i" if kind == "edit" else "edit"
        cands = self.by_kind[kind]
        w = np.cumsum([s.weight for s in cands])
        return cands[min(int(np.searchsorted(w, u_src * w[-1], side="right")), len(cands) - 1)]

    def __next__(self) -> dict[str, Any]:
        n = self.batches
        src = self.choose(n)
        samples = src.next_batch()
        prompts = [s.prompt for s in samples]
        if src.kind == "t2i" and self.caption_dropout > 0:
            drop = _rng(self.seed, _TAG_DROP, self.rank, n).random(len(samples)) < self.caption_dropout
            prompts = ["" if d else p for p, d in zip(prompts, drop)]
            self.stats.add("captions_dropped", int(drop.sum()))
        self.batches = n + 1
        self.stats.add(f"batches_{src.kind}")
        self.stats.add("samples", len(samples))
        return {"images": torch.stack([to_tensor(s.image) for s in samples]),
                "prompts": prompts,
                "ref_images": [list(s.refs) for s in samples] if src.kind == "edit" else None,
                "kind": src.kind,
                "source": src.name}

    def state_dict(self) -> dict[str, Any]:
        """Batch counter, per-source cursors and bucket contents, statistics (JSON-serialisable)."""
        return {"version": 1, "batches": self.batches, "stats": self.stats.state_dict(),
                "sources": {s.name: s.state_dict() for s in self.sources}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the stream that wrote ``state`` was."""
        names = {s.name for s in self.sources}
        if set(state["sources"]) != names:
            raise RecipeError(f"the checkpoint's SFT data stream has sources {sorted(state['sources'])}, the recipe has {sorted(names)}. "
                              "Fix: resume with the same data.sft_sources (names) as the run that wrote the checkpoint.")
        self.batches = int(state["batches"])
        self.stats.load_state_dict(state.get("stats", {}))
        for s in self.sources:
            s.load_state_dict(state["sources"][s.name])


# --------------------------------------------------------------------------------------
# building from the recipe
# --------------------------------------------------------------------------------------
def _probe(stream: SourceStream, files: Sequence[str]) -> None:
    """Fail with the file names unless at least one sample of the source can be read."""
    examples: list[str] = []
    if stream.dataset is not None:
        ds = stream.dataset
        if len(ds) == 0:
            raise RecipeError(f"SFT source {stream.name!r}: no usable record in {[str(f) for f in files]} "
                              f"(format {ds.format!r}). Fix: check the format / caption_key of the source; "
                              f"skipped: {list(stream.stats.recent)[-3:]}")
        order = epoch_order(len(ds), stream.seed, stream.index, 0, stream.rank, stream.world)
        for i in order:
            item = ds[int(i)]
            if isinstance(item, Sample):
                return
            if len(examples) < 3:
                examples.append(item.detail)
        where = "this rank's share of " if len(order) < len(ds) else ""
        raise RecipeError(f"SFT source {stream.name!r}: none of the {len(order)} records in {where}{[str(f) for f in files]} has a "
                          f"readable image, e.g. {examples}. Fix: check the image files and `image_root` (relative image paths "
                          f"are taken from image_root, else from the records file's folder).")
    sh = stream.shards
    for url in sh.shards:
        errors: list[BaseException] = []
        for raw in iter_shard(url, errors):
            item = decode_wds_sample(raw, sh.caption_key, sh.budget, sh.multiple)
            if isinstance(item, Sample):
                return
            if len(examples) < 3:
                examples.append(item.detail)
        examples.extend(f"{url}: {e}" for e in errors[:2])
    raise RecipeError(f"SFT source {stream.name!r}: no readable sample (image + text) in the shards {list(files)[:5]}"
                      f"{' ...' if len(files) > 5 else ''}, e.g. {examples[:3]}. Fix: samples need a jpg/png/webp image and a "
                      f"txt or json caption (caption_key={sh.caption_key!r}).")


def build_sft_stream(sources: Sequence[SFTSource], sft_cfg: SFTConfig, batch_size: int, seed: int,
                     resolve_path: Callable[[str], Path] | None = None, rank: int = 0, world_size: int = 1, *,
                     num_workers: int | None = None, allow_empty: bool = True) -> SFTStream | None:
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
        An :class:`SFTStream` (``next(stream)`` -> batch; ``stream.stats``; ``state_dict()``), or
        None (see ``allow_empty``).

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
        kind: Kind = "edit" if src.format == "edit" else "t2i"
        if src.format == "webdataset":
            files = expand_shards(path)
        else:
            files = [str(f) for f in records_files(path)]
        if not files:
            msg = (f"SFT source {src.name!r}: {'no shard matches' if src.format == 'webdataset' else 'no records file at'} {path}")
            if src.required:
                raise RecipeError(f"{msg}. Fix: point data.sft_sources[{index}].path at your copy of the data "
                                  "(relative paths are taken from the recipe's folder) or set `required: false`.")
            warnings.warn(f"{msg}; skipped (required: false)", stacklevel=2)
            log.warning("%s; skipped (required: false)", msg)
            continue
        common: dict[str, Any] = {"rank": rank, "world_size": world_size, "num_workers": workers, "weight": src.weight}
        if src.format == "webdataset":
            shards = _ShardStream(files, seed, index, rank, world_size, src.caption_key, sft_cfg.pixel_budget, 32, (0, 0, 0), name)
            stream = SourceStream(name, kind, index, batch_size, seed, stats, shards=shards, **common)
        else:
            ds = ImageRecordDataset(path, src.format, src.caption_key, root, sft_cfg.pixel_budget, 32, stats, name)
            stream = SourceStream(name, kind, index, batch_size, seed, stats, dataset=ds, **common)
        _probe(stream, files)
        streams.append(stream)
    if not streams:
        if allow_empty and sources:
            warnings.warn("no SFT source is available (all optional and missing): no SFT batches", stacklevel=2)
            return None
        raise RecipeError("no SFT data: data.sft_sources is empty or every source is missing. Fix: add image sources "
                          "(see docs/sft_data.md; `mrgrpo data synth --out DIR` writes a small one).")
    return SFTStream(streams, tuple(sft_cfg.t2i_edit_ratio), sft_cfg.caption_dropout, seed, rank, stats)


__all__ = [
    "IMAGE_EXTS",
    "REASONS",
    "DataStats",
    "ImageRecord",
    "ImageRecordDataset",
    "SFTStream",
    "Sample",
    "Skipped",
    "SourceStream",
    "build_sft_stream",
    "decode_wds_sample",
    "epoch_order",
    "expand_shards",
    "fit_to_budget",
    "iter_shard",
    "load_records",
    "parse_record",
    "records_files",
    "resize_to_budget",
    "to_tensor",
]
