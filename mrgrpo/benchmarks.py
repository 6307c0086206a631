"""Benchmarks of ``mrgrpo eval --benchmark``: GenEval, an OCR test set, DrawBench-style preference scoring.

A :class:`Benchmark` names its default prompt file, its rewards (registry name + default kwargs),
a default number of images per prompt, and two hooks run on the scored images:

* ``derive(prompts, scored)``: extra per-image columns (``{"scores": [P, S], "valid": [P, S]}``)
  computed from the rewards' details, e.g. the OCR word accuracy;
* ``official(prompts, scored)``: the benchmark's own summary (e.g. GenEval's), written to
  ``results.json`` under ``benchmark`` and as a second table in ``results.md``.

OCR metrics (per image; the targets are the prompt's double-quoted segments, or
``metadata["ocr_text"]``; the recognised text is the OCR lines the ``ocr`` reward kept):

* **word accuracy**: target words found among the recognised words, over the number of target words.
  Words are whitespace-separated tokens, lower-cased, with everything but letters and digits removed
  (empty tokens dropped); matching is on multisets (a recognised word matches at most one target word).
* **normalised edit distance** (NED): ``Levenshtein(r, t) / max(len(r), len(t))`` in [0, 1] (0 = exact,
  lower is better), with ``t`` the target segments and ``r`` the recognised lines, each concatenated
  and normalised the same way (lower-case, letters and digits only, no whitespace).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrgrpo.eval import EvalPrompt

Scored = dict[str, dict[str, Any]]  # reward label -> {"scores": [P, S], "valid": [P, S], "details": dict}

ROOT = Path(__file__).resolve().parent.parent
OCR_PROMPTS = ROOT / "recipes" / "prompts" / "eval_text_render.txt"


# -- OCR metrics -----------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def ocr_words(text: str) -> list[str]:
    """Whitespace tokens, lower-cased, letters and digits only (empty tokens dropped)."""
    return [w for w in (_norm(t) for t in text.split()) if w]


def word_accuracy(recognised: Sequence[str], targets: Sequence[str]) -> float:
    """Share of the target words found (multiset match) among the recognised words; see the module docstring."""
    want = ocr_words(" ".join(targets))
    if not want:
        raise ValueError("word_accuracy: no target word with a letter or digit")
    have = Counter(ocr_words(" ".join(recognised)))
    hits = sum(min(n, have[w]) for w, n in Counter(want).items())
    return hits / len(want)


def normalised_edit_distance(recognised: Sequence[str], targets: Sequence[str]) -> float:
    """``Levenshtein(r, t) / max(len(r), len(t))`` of the normalised concatenations; see the module docstring."""
    from mrgrpo.rewards.ocr import levenshtein

    r, t = _norm("".join(recognised)), _norm("".join(targets))
    if not t:
        raise ValueError("normalised_edit_distance: no target character that is a letter or digit")
    return levenshtein(r, t) / max(len(r), len(t))


def ocr_targets(prompt: str, meta: dict[str, Any] | None) -> list[str]:
    """The texts an image must show: ``meta["ocr_text"]`` (a string or list) or else every quoted segment."""
    from mrgrpo.rewards.ocr import quoted_segments

    explicit = (meta or {}).get("ocr_text")
    if isinstance(explicit, str) and explicit.strip():
        return [explicit]
    if isinstance(explicit, (list, tuple)):
        return [s for s in explicit if isinstance(s, str) and s.strip()]
    return quoted_segments(prompt)


def ocr_derive(prompts: Sequence[EvalPrompt], scored: Scored) -> Scored:
    """``word_accuracy`` and ``edit_distance`` columns from the ``ocr`` reward's recognised lines."""
    import torch

    ocr = scored["ocr"]
    n_p, n_s = ocr["scores"].shape
    recognised = ocr["details"]["recognised"]
    acc, ned = torch.zeros(n_p, n_s), torch.zeros(n_p, n_s)
    valid = torch.zeros(n_p, n_s, dtype=torch.bool)
    for i, p in enumerate(prompts):
        targets = ocr_targets(p.prompt, p.fields)
        if not ocr_words(" ".join(targets)):
            continue
        for s in range(n_s):
            lines = recognised[i * n_s + s]
            if lines is None or not bool(ocr["valid"][i, s]):  # not scored (engine error): left out
                continue
            acc[i, s] = word_accuracy(lines, targets)
            ned[i, s] = normalised_edit_distance(lines, targets)
            valid[i, s] = True
    return {"word_accuracy": {"scores": acc, "valid": valid}, "edit_distance": {"scores": ned, "valid": valid}}


# -- GenEval ---------------------------------------------------------------------------------------
def geneval_rows(prompts: Sequence[EvalPrompt], scored: Scored) -> list[dict[str, Any]]:
    """GenEval-format rows ``{"tag", "prompt", "correct", "metadata"}``, one per graded image."""
    g = scored["geneval"]
    n_s = g["scores"].shape[1]
    correct = g["details"]["correct"]
    rows = []
    for i, p in enumerate(prompts):
        spec = json.dumps({"prompt": p.prompt, **p.fields}, sort_keys=True)
        for s in range(n_s):
            c = correct[i * n_s + s]
            if c is not None:
                rows.append({"tag": p.category, "prompt": p.prompt, "correct": bool(c), "metadata": spec})
    return rows


def geneval_official(prompts: Sequence[EvalPrompt], scored: Scored) -> dict[str, Any]:
    """GenEval's summary (overall = mean over tags of the share of correct images; per tag; image/prompt accuracy)."""
    from mrgrpo.rewards.geneval.reward import geneval_score

    rows = geneval_rows(prompts, scored)
    if not rows:
        from mrgrpo.errors import DataError

        raise DataError(
            "geneval: no image could be graded: no prompt has a GenEval spec. Fix: use GenEval-format records "
            "(`include`, `tag`) or GenEval's own prompts"
        )
    return geneval_score(rows)


def geneval_markdown(summary: dict[str, Any]) -> str:
    """GenEval's summary as a Markdown table (one row per tag, then the overall score)."""
    lines = ["| GenEval tag | correct / images | accuracy |", "|---|---|---|"]
    for tag, acc in summary["tags"].items():
        c, n = summary["counts"][tag]
        lines.append(f"| {tag} | {c} / {n} | {acc:.3f} |")
    lines.append(f"| **overall** (mean over tags) | {summary['images']} images | **{summary['overall']:.3f}** |")
    lines.append(
        f"\nimage accuracy {summary['correct_images']:.3f}, prompt accuracy (any image correct) "
        f"{summary['correct_prompts']:.3f} over {summary['prompts']} prompts"
    )
    return "\n".join(lines)


# -- the registry ----------------------------------------------------------------------------------
@dataclass
class Benchmark:
    """A named benchmark: default prompts, rewards ``{label: (registry name, kwargs)}``, images per prompt, hooks."""

    name: str
    prompts: Path | None
    rewards: dict[str, tuple[str, dict[str, Any]]]
    samples: int
    derive: Callable[[Sequence[EvalPrompt], Scored], Scored] | None = None
    official: Callable[[Sequence[EvalPrompt], Scored], dict[str, Any]] | None = None
    markdown: Callable[[dict[str, Any]], str] | None = None


def _geneval_metadata() -> Path:
    from mrgrpo.rewards.geneval.reward import METADATA_FILE

    return METADATA_FILE


BENCHMARKS: dict[str, Callable[[], Benchmark]] = {
    "geneval": lambda: Benchmark(
        "geneval",
        _geneval_metadata(),
        {"geneval": ("geneval", {"mode": "strict"})},
        samples=4,  # GenEval's protocol: 4 images per prompt
        official=geneval_official,
        markdown=geneval_markdown,
    ),
    "ocr": lambda: Benchmark(
        "ocr",
        OCR_PROMPTS,
        {"ocr": ("ocr", {"mode": "multi"})},
        samples=4,
        derive=ocr_derive,
    ),
    "drawbench": lambda: Benchmark(
        "drawbench",
        None,  # DrawBench's prompts are not shipped: --prompts names the user's copy (.csv, .jsonl or .txt)
        {"pickscore": ("pickscore", {}), "clip": ("clip", {})},
        samples=4,
    ),
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; ValueError listing the choices otherwise."""
    if name not in BENCHMARKS:
        from mrgrpo.errors import UsageError

        raise UsageError(f"--benchmark {name!r}: unknown; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]()
