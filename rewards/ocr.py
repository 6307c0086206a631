"""OCR text-rendering reward: the Flow-GRPO formula, DeepGen's released scorer, and an extended variant.

Targets come from the prompt's double-quoted text (straight ``"..."`` or curly ``“...”``);
``metadata[i]["ocr_text"]`` (a string or a list of strings) overrides them. A prompt with no
target has no OCR reward: the image is invalid (masked by the trainer), never a 0.

``mode="flowgrpo"`` (Flow-GRPO, ``flow_grpo/ocr.py``): the target is the FIRST quoted segment (as
Flow-GRPO's ``prompt.split('"')[1]``); the recognised text is every OCR line with confidence
> ``min_confidence`` (0) concatenated; both are lower-cased with whitespace removed;
``d = 0`` if the target is a substring of the recognised text else ``Levenshtein(rec, target)``;
``r = 1 - min(d, len(target)) / len(target)``.

``mode="multi"`` (an extension of DeepGen's scorer, NOT equal to it: see ``deepgen``): EVERY quoted segment is
scored on its own against n-gram candidates of the OCR output (single lines, runs of up to
``ngram_max`` adjacent lines, the whole text concatenated, and -- our addition -- runs of words
within the text so that two segments rendered on one line are each found); per segment
``r_s = 1 - min(d_s, len_s) / len_s`` with ``d_s`` the smallest Levenshtein distance over the
candidates; the image's reward is the length-weighted mean ``sum(len_s * r_s) / sum(len_s)``.
Normalisation as DeepGen's defaults: whitespace removed, punctuation removed
(``ignore_punct``), case kept (``case_sensitive``), common OCR confusions folded (``confusion_fold``:
0/o/O, 1/i/j/l/I, 5/s, v/w; the smaller of the plain and the folded distance counts).

``mode="deepgen"`` (the scorer of DeepGen's released RL run, its ``ocr_scorer_service``; the
paper recipes use it): reproduces the released rules exactly. Targets: every ``"..."`` segment
(straight double quotes only). Normalisation: whitespace removed, then everything but ASCII
letters and digits (``ignore_punct``), case kept (``case_sensitive``). Candidates: the normalised
non-empty OCR lines, the concatenations of 2..``ngram_max`` adjacent ones, and all of them joined
(duplicates dropped). Distance per segment: the smallest over the candidates of
``min(Levenshtein(c, t), Levenshtein(fold(c), fold(t)))`` with ``fold`` mapping 0->o, 1/i/j->l,
5->s, v->w (lower-case only; ``confusion_fold``), capped at ``len(t)``; the image's reward is the
length-weighted mean of ``1 - d / len(t)``. OCR lines with confidence below ``min_confidence`` are
dropped (the release keeps a line whose confidence equals it). Deliberate deviations: a prompt
with no quoted text (or none with a scorable character) is invalid, and an engine error is
invalid and counted, where the release returns a silent 0.

Engines (one shared instance per process and configuration, calls serialised by a lock):
``rapidocr`` (``rapidocr-onnxruntime``; PP-OCR ONNX models ship in the wheel: offline, CPU; the
default) and ``paddle`` (PaddleOCR 2.x or 3.x with its models in a local ``model_dir``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mrgrpo.rewards.base import Reward, RewardOutput

_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')
# DeepGen's confusion classes (0/o, 1/i/j/l, 5/s, v/w), extended to the upper-case look-alikes O, I, V
_CONFUSIONS = str.maketrans({"0": "o", "O": "o", "1": "l", "i": "l", "j": "l", "I": "l", "5": "s", "v": "w", "V": "W"})


def quoted_segments(prompt: str) -> list[str]:
    """Every double-quoted segment of the prompt (straight or curly quotes), in order."""
    return [a or b for a, b in _QUOTED.findall(prompt or "") if (a or b).strip()]


def normalise(text: str, *, case_sensitive: bool = False, ignore_punct: bool = False) -> str:
    """Whitespace removed; optionally punctuation removed (keeps letters and digits of any script); lower-cased
    unless ``case_sensitive``."""
    s = re.sub(r"\s+", "", text or "")
    if ignore_punct:
        s = "".join(ch for ch in s if ch.isalnum())
    return s if case_sensitive else s.lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; unit costs)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def flowgrpo_score(recognised: str, target: str) -> float:
    """``1 - min(d, len(t)) / len(t)`` with ``d = 0`` for a substring match, else Levenshtein
    (lower-case, no spaces)."""
    rec, tgt = normalise(recognised), normalise(target)
    if not tgt:
        raise ValueError("empty OCR target")
    d = 0 if tgt in rec else levenshtein(rec, tgt)
    return 1.0 - min(d, len(tgt)) / len(tgt)


def ngram_candidates(
    lines: Sequence[str], *, ngram_max: int = 3, case_sensitive: bool = True, ignore_punct: bool = True
) -> list[str]:
    """Normalised candidate strings of the OCR output (order kept, duplicates dropped).

    Lines, runs of up to ``ngram_max`` adjacent lines, the whole text, and runs of up to 8
    consecutive words of the text (so a segment that shares a line with other text is found).
    """
    norm = lambda s: normalise(s, case_sensitive=case_sensitive, ignore_punct=ignore_punct)  # noqa: E731
    toks = [t for t in (norm(line) for line in lines) if t]
    cands = list(toks)
    for n in range(2, max(1, ngram_max) + 1):
        cands += ["".join(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if toks:
        cands.append("".join(toks))
    words = [w for w in (norm(w) for line in lines for w in line.split()) if w]
    for i in range(len(words)):
        for j in range(i + 1, min(len(words), i + 8) + 1):
            cands.append("".join(words[i:j]))
    return list(dict.fromkeys(c for c in cands if c))


def best_distance(tgt: str, cands: Sequence[str], folded_tgt: str = "", folded: Sequence[str] | None = None) -> int:
    """The smallest Levenshtein distance from ``tgt`` to a candidate, at most ``len(tgt)``.

    With ``folded`` (each candidate with look-alike characters folded, same order) a candidate's distance is
    the smaller of its plain one and its folded one to ``folded_tgt``. Folding keeps lengths, so a candidate
    whose length differs from ``tgt``'s by at least the best distance so far is skipped.
    """
    best = len(tgt)
    for k, c in enumerate(cands):
        if abs(len(c) - len(tgt)) >= best:  # both distances are at least the length difference: cannot improve
            continue
        d = levenshtein(c, tgt)
        if folded is not None and d > 0:
            d = min(d, levenshtein(folded[k], folded_tgt))
        best = min(best, d)
        if best == 0:
            break
    return best


def multi_segment_score(
    lines: Sequence[str],
    segments: Sequence[str],
    *,
    ngram_max: int = 3,
    case_sensitive: bool = True,
    ignore_punct: bool = True,
    confusion_fold: bool = True,
) -> tuple[float, list[float]]:
    """Length-weighted mean over segments of the best ``1 - min(d, len) / len`` over the n-gram candidates.

    Returns (reward, per-segment rewards). Raises ValueError when no segment is left after normalisation.
    """
    norm = lambda s: normalise(s, case_sensitive=case_sensitive, ignore_punct=ignore_punct)  # noqa: E731
    cands = ngram_candidates(lines, ngram_max=ngram_max, case_sensitive=case_sensitive, ignore_punct=ignore_punct)
    folded = [c.translate(_CONFUSIONS) for c in cands] if confusion_fold else []
    total, weight, per_segment = 0.0, 0, []
    for seg in segments:
        tgt = norm(seg)
        if not tgt:
            continue
        best = best_distance(tgt, cands, tgt.translate(_CONFUSIONS), folded if confusion_fold else None)
        r = 1.0 - min(best, len(tgt)) / len(tgt)
        per_segment.append(r)
        total += r * len(tgt)
        weight += len(tgt)
    if weight == 0:
        raise ValueError("empty OCR target")
    return total / weight, per_segment


# -- DeepGen's released scorer ---------------------------------------------------------------------
_DEEPGEN_QUOTED = re.compile(r'"([^"]+)"')
_DEEPGEN_NOT_ASCII_ALNUM = re.compile(r"[^A-Za-z0-9]+")
# the release's confusion table: lower-case only, applied to case-kept text
_DEEPGEN_FOLD = str.maketrans({"0": "o", "1": "l", "i": "l", "j": "l", "5": "s", "v": "w"})


def deepgen_segments(prompt: str) -> list[str]:
    """Every ``"..."`` segment of the prompt (straight double quotes only), in order, as the release reads them."""
    return _DEEPGEN_QUOTED.findall(prompt or "")


def deepgen_normalise(text: str, *, case_sensitive: bool = True, ignore_punct: bool = True) -> str:
    """Whitespace removed; with ``ignore_punct`` every character but ASCII letters and digits removed; lower-cased
    unless ``case_sensitive`` (the release's order of operations)."""
    s = re.sub(r"\s+", "", text or "")
    if ignore_punct:
        s = _DEEPGEN_NOT_ASCII_ALNUM.sub("", s)
    return s if case_sensitive else s.lower()


def deepgen_candidates(
    lines: Sequence[str], *, ngram_max: int = 3, case_sensitive: bool = True, ignore_punct: bool = True
) -> list[str]:
    """The release's candidate strings: normalised non-empty lines, joins of 2..``ngram_max`` adjacent
    ones, and all lines joined; order kept, duplicates dropped."""
    norm = [deepgen_normalise(x, case_sensitive=case_sensitive, ignore_punct=ignore_punct) for x in lines]
    toks = [t for t in norm if t]
    cands = list(toks)
    for n in range(2, max(1, int(ngram_max)) + 1):
        cands += ["".join(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if toks:
        cands.append("".join(toks))
    return list(dict.fromkeys(cands))


def deepgen_score(
    lines: Sequence[str],
    segments: Sequence[str],
    *,
    ngram_max: int = 3,
    case_sensitive: bool = True,
    ignore_punct: bool = True,
    confusion_fold: bool = True,
) -> tuple[float, list[float]]:
    """DeepGen's released OCR reward of one image from its OCR ``lines`` and target ``segments``.

    Returns (``sum_s len_s * r_s / sum_s len_s``, per-segment ``r_s``; a segment with no scorable
    character has ``r_s = 0`` and weight 0). Raises ValueError when no segment has a scorable
    character (the release returns 0 there; the reward marks the image invalid instead).
    """
    cands = deepgen_candidates(lines, ngram_max=ngram_max, case_sensitive=case_sensitive, ignore_punct=ignore_punct)
    folded = [c.translate(_DEEPGEN_FOLD) for c in cands] if confusion_fold else []
    total, weight, per_segment = 0.0, 0, []
    for seg in segments:
        tgt = deepgen_normalise(seg, case_sensitive=case_sensitive, ignore_punct=ignore_punct)
        if not tgt:
            per_segment.append(0.0)
            continue
        best = best_distance(tgt, cands, tgt.translate(_DEEPGEN_FOLD), folded if confusion_fold else None)
        r = 1.0 - min(best, len(tgt)) / len(tgt)
        per_segment.append(r)
        total += r * len(tgt)
        weight += len(tgt)
    if weight == 0:
        raise ValueError("no OCR target with a scorable character")
    return total / weight, per_segment


# -- engines -------------------------------------------------------------------------------------
class RapidOCREngine:
    """``rapidocr-onnxruntime`` (offline: its PP-OCR ONNX models ship in the wheel)."""

    def __init__(self, **engine_kwargs: Any):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ImportError(
                "the OCR reward's default engine needs rapidocr-onnxruntime. Fix: pip install 'mrgrpo[ocr]'."
            ) from exc
        self.engine = RapidOCR(**engine_kwargs)
        self.lock = threading.Lock()  # one onnxruntime session set shared by all threads

    def __call__(self, image: Any) -> list[tuple[str, float]]:
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        with self.lock:
            result, _ = self.engine(bgr)
        return [(str(text), float(conf)) for _box, text, conf in (result or [])]


class PaddleOCREngine:
    """PaddleOCR (3.x ``predict`` API, or 2.x ``ocr``) with models from a local folder (never downloaded).

    ``model_dir`` holds ``det/`` and ``rec/`` (or give ``det_model_dir`` / ``rec_model_dir``).
    """

    def __init__(
        self,
        model_dir: str | None = None,
        det_model_dir: str | None = None,
        rec_model_dir: str | None = None,
        lang: str = "en",
        **engine_kwargs: Any,
    ):
        det = det_model_dir or (f"{model_dir}/det" if model_dir else None)
        rec = rec_model_dir or (f"{model_dir}/rec" if model_dir else None)
        if not det or not rec:
            raise ValueError(
                "ocr engine 'paddle' needs model_dir (a local folder with det/ and rec/ PaddleOCR models) "
                "or det_model_dir and rec_model_dir: models are never downloaded at run time."
            )
        try:
            import paddleocr
        except ImportError as exc:
            raise ImportError(
                "ocr engine 'paddle' needs paddleocr and paddlepaddle. Fix: pip install 'mrgrpo[paddle]', "
                "or use engine: rapidocr (offline, the default)."
            ) from exc
        major = int(str(getattr(paddleocr, "__version__", "3")).split(".")[0] or 3)
        self.v3 = major >= 3
        if self.v3:
            self.engine = paddleocr.PaddleOCR(
                lang=lang,
                text_detection_model_dir=det,
                text_recognition_model_dir=rec,
                use_doc_orientation_classify=False,
                use_doc_unwarping=False,
                use_textline_orientation=False,
                **engine_kwargs,
            )
        else:
            self.engine = paddleocr.PaddleOCR(
                lang=lang, det_model_dir=det, rec_model_dir=rec, use_angle_cls=False, show_log=False, **engine_kwargs
            )
        self.lock = threading.Lock()

    def __call__(self, image: Any) -> list[tuple[str, float]]:
        arr = np.asarray(image.convert("RGB"))
        with self.lock:
            res = self.engine.predict(arr) if self.v3 else self.engine.ocr(arr, cls=False)
        out: list[tuple[str, float]] = []
        if self.v3:
            for page in res or []:
                for text, conf in zip(page.get("rec_texts", []) or [], page.get("rec_scores", []) or []):
                    out.append((str(text), float(conf)))
        else:
            for item in (res[0] if res else None) or []:
                text, conf = item[1]
                out.append((str(text), float(conf or 0.0)))
        return out


MODES = ("flowgrpo", "deepgen", "multi")
ENGINES = {"rapidocr": RapidOCREngine, "paddle": PaddleOCREngine}
_ENGINE_CACHE: dict[tuple, Any] = {}
_ENGINE_LOCK = threading.Lock()


def get_engine(engine: str = "rapidocr", **kwargs: Any):
    """One shared OCR engine per (engine, options) in the process: models load once."""
    if engine not in ENGINES:
        raise ValueError(f"ocr: unknown engine {engine!r}; choose one of {sorted(ENGINES)}")
    key = (engine, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    with _ENGINE_LOCK:
        if key not in _ENGINE_CACHE:
            _ENGINE_CACHE[key] = ENGINES[engine](**kwargs)
        return _ENGINE_CACHE[key]


class OCRReward(Reward):
    """Text-rendering accuracy of the quoted text of the prompt, in [0, 1].

    Args:
        mode: ``"flowgrpo"`` (first quoted segment, substring or Levenshtein), ``"deepgen"`` (DeepGen's
            released scorer, exactly) or ``"multi"`` (every segment, extended candidates, length-weighted).
        engine: ``"rapidocr"`` (default, offline) or ``"paddle"``.
        model_dir / det_model_dir / rec_model_dir: PaddleOCR model folders (engine ``paddle``).
        engine_kwargs: passed to the engine's constructor.
        min_confidence: OCR lines with confidence at or below it are ignored (Flow-GRPO: 0); in
            ``deepgen`` mode lines BELOW it are ignored (the release's rule; its default 0 keeps all).
        ngram_max, case_sensitive, ignore_punct, confusion_fold: ``deepgen`` / ``multi`` options
            (defaults: the release's 3, True, True, True).
    """

    name = "ocr"

    def __init__(
        self,
        mode: str = "flowgrpo",
        engine: str = "rapidocr",
        model_dir: str | None = None,
        det_model_dir: str | None = None,
        rec_model_dir: str | None = None,
        engine_kwargs: dict | None = None,
        min_confidence: float = 0.0,
        ngram_max: int = 3,
        case_sensitive: bool = True,
        ignore_punct: bool = True,
        confusion_fold: bool = True,
    ):
        if mode not in MODES:
            raise ValueError(f"ocr: mode must be 'flowgrpo', 'deepgen' or 'multi', got {mode!r}")
        if ngram_max < 1:
            raise ValueError(f"ocr: ngram_max must be >= 1, got {ngram_max}")
        self.mode = mode
        kwargs = dict(engine_kwargs or {})
        if engine == "paddle":
            kwargs.update(model_dir=model_dir, det_model_dir=det_model_dir, rec_model_dir=rec_model_dir)
        elif model_dir or det_model_dir or rec_model_dir:
            raise ValueError(f"ocr: model_dir is for engine 'paddle'; engine {engine!r} ships its own models")
        self.engine_name = engine
        self.engine = get_engine(engine, **kwargs)
        self.min_confidence = float(min_confidence)
        self.multi_options: dict[str, Any] = dict(
            ngram_max=int(ngram_max),
            case_sensitive=bool(case_sensitive),
            ignore_punct=bool(ignore_punct),
            confusion_fold=bool(confusion_fold),
        )

    def targets(self, prompt: str, meta: dict | None) -> list[str]:
        """The target segments of one image (``metadata["ocr_text"]`` first, else the quoted text)."""
        explicit = meta.get("ocr_text") if isinstance(meta, dict) else None
        if isinstance(explicit, str) and explicit.strip():
            segments = [explicit]
        elif isinstance(explicit, (list, tuple)) and any(isinstance(s, str) and s.strip() for s in explicit):
            segments = [s for s in explicit if isinstance(s, str) and s.strip()]
        elif self.mode == "deepgen":
            segments = deepgen_segments(prompt)
        else:
            segments = quoted_segments(prompt)
        if self.mode == "flowgrpo":
            return segments[:1] if segments and normalise(segments[0]) else []
        ignore_punct = self.multi_options["ignore_punct"]
        if self.mode == "deepgen":
            return [s for s in segments if deepgen_normalise(s, ignore_punct=ignore_punct)]
        return [s for s in segments if normalise(s, case_sensitive=True, ignore_punct=ignore_punct)]

    def read_lines(self, image: Any) -> list[str]:
        """The OCR lines of one image kept by the mode's confidence rule (``deepgen``: non-empty lines with
        confidence >= ``min_confidence``; otherwise confidence > ``min_confidence``)."""
        if self.mode == "deepgen":
            return [t for t, c in self.engine(image) if t and c >= self.min_confidence]
        return [t for t, c in self.engine(image) if c > self.min_confidence]

    def score(self, images, prompts, metadata):
        scores, valid, recognised, reasons = [], [], [], []
        failures = 0
        for im, prompt, meta in zip(images, prompts, metadata):
            segments = self.targets(prompt, meta)
            if not segments:
                quoted = deepgen_segments(prompt) if self.mode == "deepgen" else quoted_segments(prompt)
                why = "no scorable character in the quoted text" if quoted else "no quoted text"
                scores.append(0.0), valid.append(False), recognised.append(None), reasons.append(why)
                continue
            try:
                lines = self.read_lines(im)
            except Exception as exc:  # a broken image or engine error: could not score, counted as a failure
                failures += 1
                scores.append(0.0), valid.append(False), recognised.append(None), reasons.append(f"engine error: {exc}")
                continue
            recognised.append(lines)
            if self.mode == "flowgrpo":
                scores.append(flowgrpo_score("".join(lines), segments[0]))
            elif self.mode == "deepgen":
                scores.append(deepgen_score(lines, segments, **self.multi_options)[0])
            else:
                scores.append(multi_segment_score(lines, segments, **self.multi_options)[0])
            valid.append(True)
            reasons.append(None)
        return RewardOutput(
            torch.tensor(scores),
            torch.tensor(valid),
            {
                "mode": self.mode,
                "engine": self.engine_name,
                "recognised": recognised,
                "invalid_reason": reasons,
                "failures": failures,
            },
        )
