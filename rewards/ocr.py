"""OCR text-rendering reward (Flow-GRPO formula, and DeepGen's multi-segment variant).

Target: the text inside the prompt's double quotes (``metadata[i]["ocr_text"]`` overrides).
``mode="flowgrpo"``: the quoted segments joined; recognised text = every OCR line with
confidence > 0; both lower-cased with spaces removed; ``d = 0`` if the target is a substring
of the recognised text else ``Levenshtein(rec, target)``; ``r = 1 - min(d, len(target)) / len(target)``.
``mode="multi"``: every quoted segment scored on its own against the best-matching n-gram
window of the recognised text (n-gram candidates), then the length-weighted mean.
A prompt with no quoted text has no target: the image is invalid (masked), not 0.

Engines: ``rapidocr`` (``rapidocr-onnxruntime``: PP-OCR ONNX models shipped in the wheel,
offline, CPU; the default) and ``paddle`` (PaddleOCR with a local ``model_dir``).
"""

from __future__ import annotations

import re
import threading
from typing import Any, Sequence

import numpy as np
import torch

from mrgrpo.rewards.base import Reward, RewardOutput

_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')


def quoted_segments(prompt: str) -> list[str]:
    """Every double-quoted segment of the prompt (straight or curly quotes)."""
    return [a or b for a, b in _QUOTED.findall(prompt) if (a or b).strip()]


def normalise(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


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
    """``1 - min(d, len(t)) / len(t)`` with ``d = 0`` for a substring match, else Levenshtein."""
    rec, tgt = normalise(recognised), normalise(target)
    if not tgt:
        raise ValueError("empty OCR target")
    d = 0 if tgt in rec else levenshtein(rec, tgt)
    return 1.0 - min(d, len(tgt)) / len(tgt)


def multi_segment_score(lines: Sequence[str], segments: Sequence[str]) -> float:
    """Length-weighted mean over segments of the best score against n-gram windows of the OCR words."""
    words = [w for line in lines for w in line.split()]
    candidates = {normalise(" ".join(words[i:j])) for i in range(len(words)) for j in range(i + 1, min(len(words), i + 8) + 1)}
    candidates |= {normalise(line) for line in lines}
    candidates.discard("")
    total, weight = 0.0, 0
    for seg in segments:
        tgt = normalise(seg)
        if not tgt:
            continue
        best = max((1.0 - min(0 if tgt in c else levenshtein(c, tgt), len(tgt)) / len(tgt) for c in candidates), default=0.0)
        total += best * len(tgt)
        weight += len(tgt)
    if weight == 0:
        raise ValueError("empty OCR target")
    return total / weight


class _RapidEngine:
    def __init__(self):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ImportError("the OCR reward's default engine needs rapidocr-onnxruntime. Fix: pip install 'mrgrpo[ocr]'.") from exc
        self.engine = RapidOCR()
        self.lock = threading.Lock()  # onnxruntime sessions are shared; serialise calls from threads

    def __call__(self, image: Any) -> list[tuple[str, float]]:
        with self.lock:
            result, _ = self.engine(np.asarray(image.convert("RGB"))[:, :, ::-1])
        return [(text, float(conf)) for _box, text, conf in (result or [])]


class _PaddleEngine:
    def __init__(self, model_dir: str | None, lang: str = "en"):
        try:
            from paddleocr import PaddleOCR
        except ImportError as exc:
            raise ImportError("engine='paddle' needs paddleocr and paddlepaddle. Fix: pip install 'mrgrpo[paddle]'.") from exc
        if model_dir is None:
            raise ValueError("engine='paddle' needs model_dir (a local folder of PaddleOCR models): models are never downloaded at run time.")
        self.engine = PaddleOCR(lang=lang, text_detection_model_dir=f"{model_dir}/det", text_recognition_model_dir=f"{model_dir}/rec",
                                use_doc_orientation_classify=False, use_doc_unwarping=False, use_textline_orientation=False)
        self.lock = threading.Lock()

    def __call__(self, image: Any) -> list[tuple[str, float]]:
        with self.lock:
            res = self.engine.predict(np.asarray(image.convert("RGB")))
        out = []
        for page in res or []:
            for text, conf in zip(page.get("rec_texts", []), page.get("rec_scores", [])):
                out.append((text, float(conf)))
        return out


_ENGINES: dict[tuple, Any] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(engine: str = "rapidocr", model_dir: str | None = None):
    """One shared OCR engine per configuration (loading the models once per process)."""
    key = (engine, model_dir)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            if engine == "rapidocr":
                _ENGINES[key] = _RapidEngine()
            elif engine == "paddle":
                _ENGINES[key] = _PaddleEngine(model_dir)
            else:
                raise ValueError(f"unknown OCR engine {engine!r}; choose 'rapidocr' or 'paddle'")
        return _ENGINES[key]


class OCRReward(Reward):
    """Text-rendering accuracy of the quoted text in the prompt, in [0, 1].

    Args:
        mode: ``"flowgrpo"`` (one joined target) or ``"multi"`` (per segment, length-weighted).
        engine: ``"rapidocr"`` (default, offline) or ``"paddle"``.
        model_dir: PaddleOCR model folder (engine ``paddle``).
        min_confidence: OCR lines at or below it are ignored (Flow-GRPO: 0).
    """

    name = "ocr"

    def __init__(self, mode: str = "flowgrpo", engine: str = "rapidocr", model_dir: str | None = None, min_confidence: float = 0.0):
        if mode not in ("flowgrpo", "multi"):
            raise ValueError(f"ocr: mode must be 'flowgrpo' or 'multi', got {mode!r}")
        self.mode = mode
        self.engine = get_engine(engine, model_dir)
        self.min_confidence = min_confidence

    def score(self, images, prompts, metadata):
        scores, valid, texts = [], [], []
        for im, prompt, meta in zip(images, prompts, metadata):
            explicit = (meta or {}).get("ocr_text")
            segments = [explicit] if explicit else quoted_segments(prompt)
            if not segments or not normalise("".join(segments)):
                scores.append(0.0)
                valid.append(False)
                texts.append(None)
                continue
            lines = [t for t, c in self.engine(im) if c > self.min_confidence]
            texts.append(lines)
            if self.mode == "flowgrpo":
                scores.append(flowgrpo_score(" ".join(lines), " ".join(segments)))
            else:
                scores.append(multi_segment_score(lines, segments))
            valid.append(True)
        return RewardOutput(torch.tensor(scores), torch.tensor(valid), {"recognised": texts})
