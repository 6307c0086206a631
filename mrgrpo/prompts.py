"""Prompt sources for MR-GRPO: files, weights, reward mixtures, deterministic resumable sampling.

Formats (``PromptSource.format``, ``auto`` = by extension):

* ``.txt``   one prompt a line (blank lines and lines starting with ``#`` are skipped);
* ``.jsonl`` one JSON object a line with ``prompt`` (or ``instruction``/``txt``) and optional fields;
  editing records carry ``image`` (a path) or ``images`` (a list of paths);
* ``.csv``   a header with a ``prompt`` column; other columns become fields.

Extra fields travel with the prompt into reward ``metadata`` (e.g. ``ocr_text``).

Sampling is a pure function of ``(seed, step)`` plus per-source cursors, identical on every
process: each step draws the GLOBAL list of prompts and each rank takes its slice, so a run on
N processes sees exactly the prompts of a 1-process run, and a resumed run the prompts of an
uninterrupted one. The image-dataset side of ``data`` (pre-training / SFT records, WebDataset)
lives in :mod:`mrgrpo.sft_data`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrgrpo.config import PromptSource, RecipeError

log = logging.getLogger(__name__)

_PROMPT_KEYS = ("prompt", "instruction", "txt", "caption")


@dataclass
class PromptRecord:
    """One prompt: its text, reference images (editing), source and extra fields."""

    prompt: str
    source: str
    images: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedSource:
    """A prompt source with its records and mixture."""

    name: str
    records: list[PromptRecord]
    weight: float
    rewards: dict[str, float]
    kind: str


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    ext = path.suffix.lower()
    if ext in (".txt", ".text"):
        return "txt"
    if ext in (".jsonl", ".json"):
        return "jsonl"
    if ext == ".csv":
        return "csv"
    raise RecipeError(
        f"prompt file {path}: cannot tell the format from {ext!r}. Fix: use .txt/.jsonl/.csv or set `format:`."
    )


def _record_from_mapping(obj: dict[str, Any], source: str, where: str, base: Path) -> PromptRecord:
    key = next((k for k in _PROMPT_KEYS if isinstance(obj.get(k), str)), None)
    if key is None:
        raise RecipeError(
            f"{where}: no prompt text (expected one of the keys {list(_PROMPT_KEYS)}). Fix: add a `prompt` field."
        )
    images_raw = obj.get("images", obj.get("image", obj.get("input_image", [])))
    if isinstance(images_raw, str):
        images_raw = [images_raw]
    elif images_raw is None:
        images_raw = []
    if not isinstance(images_raw, list) or not all(isinstance(x, str) for x in images_raw):
        raise RecipeError(f"{where}: `image`/`images` must be a path or a list of paths, got {images_raw!r}.")
    images = [str(p if Path(p).is_absolute() else base / p) for p in images_raw]
    extra = {k: v for k, v in obj.items() if k not in (key, "images", "image", "input_image")}
    return PromptRecord(obj[key], source, images, extra)


def _read_records(p: Path, fmt: str, source: str) -> list[PromptRecord]:
    """The records of prompt file ``p`` in format ``fmt`` (``txt | jsonl | csv``), in file order."""
    records: list[PromptRecord] = []
    if fmt == "txt":
        for line in p.read_text(encoding="utf-8-sig").splitlines():
            text = line.strip()
            if text and not text.startswith("#"):
                records.append(PromptRecord(text, source))
    elif fmt == "jsonl":
        text = p.read_text(encoding="utf-8-sig")
        if p.suffix.lower() == ".json" and text.lstrip().startswith("["):
            try:
                items = [(i + 1, obj) for i, obj in enumerate(json.loads(text))]
            except json.JSONDecodeError as exc:
                raise RecipeError(
                    f"{p}:{exc.lineno}: not valid JSON ({exc.msg}). Fix: a JSON list of objects, "
                    "or one JSON object per line (.jsonl)."
                ) from None
        else:
            items = []
            for i, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        items.append((i, json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise RecipeError(
                            f"{p}:{i}: not valid JSON ({exc.msg}). Fix: one JSON object per line."
                        ) from None
        for i, obj in items:
            if not isinstance(obj, dict):
                raise RecipeError(f"{p}:{i}: expected a JSON object, got {type(obj).__name__}.")
            records.append(_record_from_mapping(obj, source, f"{p}:{i}", p.parent))
    elif fmt == "csv":
        with p.open(newline="", encoding="utf-8-sig") as fh:
            for i, row in enumerate(csv.DictReader(fh), 2):
                records.append(_record_from_mapping(dict(row), source, f"{p}:{i}", p.parent))
    else:  # the recipe schema restricts `format`; direct callers may pass anything
        raise RecipeError(f"prompt file {p}: unknown format {fmt!r}. Fix: use auto, txt, jsonl or csv.")
    return records


def load_prompt_file(path: str | Path, *, source: str, fmt: str = "auto", kind: str = "t2i") -> list[PromptRecord]:
    """Read a prompt file into records; raises :class:`RecipeError` with the line on bad input."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(
            f"prompt file {p} of source {source!r} does not exist. Fix: point `path` at an existing file."
        )
    fmt = _detect_format(p, fmt)
    try:
        records = _read_records(p, fmt, source)
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"prompt file {p}: not UTF-8 text ({exc.reason} at byte {exc.start}). Fix: save it as UTF-8."
        ) from None
    if kind == "edit":
        for r in records:
            if not r.images:
                raise RecipeError(
                    f"{p}: editing source {source!r} has a record without a reference image ({r.prompt[:40]!r}). "
                    "Fix: add `image` to every record."
                )
            for img in r.images:
                if not Path(img).is_file():
                    raise RecipeError(f"{p}: reference image {img} does not exist (record {r.prompt[:40]!r}).")
    if not records:
        raise RecipeError(
            f"prompt file {p} of source {source!r} holds no prompts. Fix: add prompts or remove the source."
        )
    return records


def load_sources(sources: Sequence[PromptSource], resolve: Callable[[str], Path]) -> list[LoadedSource]:
    """Load every source; optional (``required: false``) missing files are skipped with a warning."""
    loaded = []
    for src in sources:
        path = resolve(src.path)
        if not path.exists() and not src.required:
            log.warning("prompt source %r skipped: %s does not exist", src.name, path)
            continue
        records = load_prompt_file(path, source=src.name, fmt=src.format, kind=src.kind)
        loaded.append(LoadedSource(src.name, records, src.weight, dict(src.rewards), src.kind))
    if not loaded:
        raise RecipeError("no prompt source could be loaded. Fix: point data.sources at existing prompt files.")
    return loaded


class PromptSampler:
    """Draws the global prompt list of each step, deterministically from ``(seed, step)``.

    Sources are picked with probability proportional to ``len(records) * weight``
    (``prompts_x_weight``) or ``weight``; within a source prompts are walked in a seeded
    permutation per epoch (every prompt once before any repeats). The state is the per-source
    cursor, so :meth:`state_dict` / :meth:`load_state_dict` resume exactly.
    """

    def __init__(
        self, sources: Sequence[LoadedSource], *, seed: int, sampling: str = "prompts_x_weight", shuffle: bool = True
    ):
        self.sources = list(sources)
        self.seed = int(seed)
        self.shuffle = shuffle
        for s in self.sources:
            if not (math.isfinite(s.weight) and s.weight >= 0):
                raise RecipeError(f"prompt source {s.name!r} has weight {s.weight}. Fix: a finite weight >= 0.")
        if sampling not in ("prompts_x_weight", "weight"):
            raise RecipeError(f"unknown source sampling {sampling!r}. Fix: prompts_x_weight or weight.")
        raw = np.array(
            [(len(s.records) if sampling == "prompts_x_weight" else 1.0) * s.weight for s in self.sources],
            dtype=np.float64,
        )
        if raw.sum() <= 0:
            raise RecipeError("all prompt sources have zero weight. Fix: give one source a positive weight.")
        self.probs = raw / raw.sum()
        self.cursors = [0] * len(self.sources)

    def _permutation(self, src_idx: int, epoch: int) -> np.ndarray:
        n = len(self.sources[src_idx].records)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, 7919, src_idx, epoch]).permutation(n)

    def sample(self, step: int, n: int) -> list[PromptRecord]:
        """The ``n`` global prompts of ``step`` (advances the cursors)."""
        rng = np.random.default_rng([self.seed, 104729, step])
        picks = rng.choice(len(self.sources), size=n, p=self.probs)
        out = []
        for s in picks:
            s = int(s)
            n_rec = len(self.sources[s].records)
            epoch, pos = divmod(self.cursors[s], n_rec)
            out.append(self.sources[s].records[int(self._permutation(s, epoch)[pos])])
            self.cursors[s] += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"cursors": list(self.cursors), "sources": [s.name for s in self.sources]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("sources") != [s.name for s in self.sources]:
            raise RecipeError(
                f"cannot resume: checkpoint prompt sources {state.get('sources')} differ from the recipe's "
                f"{[s.name for s in self.sources]}."
            )
        self.cursors = [int(c) for c in state["cursors"]]


def reward_weight_matrix(
    records: Sequence[PromptRecord], sources: Sequence[LoadedSource], reward_names: Sequence[str]
) -> np.ndarray:
    """Per-record mixture weights ``[N, R]`` (columns in ``reward_names`` order)."""
    by_name = {s.name: s.rewards for s in sources}
    return np.array([[float(by_name[r.source].get(k, 0.0)) for k in reward_names] for r in records], dtype=np.float32)


def rank_slice(n_global: int, rank: int, world_size: int) -> slice:
    """The contiguous slice of a global list of ``n_global`` items owned by ``rank``."""
    per = math.ceil(n_global / world_size)
    return slice(rank * per, min(n_global, (rank + 1) * per))
