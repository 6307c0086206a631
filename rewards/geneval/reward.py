"""The ``geneval`` reward (per-clause partial credit, or GenEval's strict verdict) and GenEval scoring for evaluation.

Each image is graded against its GenEval spec: ``metadata[i]`` carrying ``include`` (and
optionally ``exclude`` and ``tag``), as the records of GenEval's ``evaluation_metadata.jsonl`` do
when used as a prompt file; without them, the prompt is looked up in the shipped GenEval metadata;
a prompt with no spec is invalid (``details["no_spec"]``).

For evaluation, :meth:`GenEvalGrader.results` gives GenEval-format per-image rows and
:func:`geneval_score` the official summary (the overall score is the mean over the six tags of
the share of images whose every clause holds).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from mrgrpo.rewards import hf_clip
from mrgrpo.rewards.base import Reward, RewardOutput
from mrgrpo.rewards.geneval import grader as G

DATA = Path(__file__).parent / "assets"
METADATA_FILE = DATA / "evaluation_metadata.jsonl"


def load_metadata(path: str | Path = METADATA_FILE) -> list[dict[str, Any]]:
    """GenEval prompt specs, one JSON object a line (``tag``, ``include``, ``exclude``, ``prompt``)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not JSON ({exc})") from exc
    return rows


def load_classnames(path: str | Path = DATA / "object_names.txt") -> list[str]:
    """The 80 COCO class names in detector order."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@lru_cache(maxsize=1)
def _spec_by_prompt() -> dict[str, dict[str, Any]]:
    return {r["prompt"]: r for r in load_metadata()}


def spec_for(prompt: str, meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The GenEval spec of one image: from its metadata when it has ``include``, else the shipped one of its prompt."""
    if meta and "include" in meta:
        return meta
    return _spec_by_prompt().get(prompt)


def geneval_score(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """GenEval's official summary of per-image results (see :func:`mrgrpo.rewards.geneval.grader.summarize`)."""
    return G.summarize(results)


class GenEvalGrader:
    """Mask2Former detection + CLIP colour + GenEval's rules.

    Args:
        detector, detector_processor: Mask2Former instance model (hub id or folder) and its processor.
        detector_size: ``"mmdet"`` (shorter side 800, longer <= 1333, as GenEval's mmdet pipeline),
            ``"processor"`` (the processor's own), or a processor ``size`` dict.
        clip_model, clip_processor: CLIP for colours (default ``openai/clip-vit-large-patch14``).
        classnames: file with the detector's class names in label order (default GenEval's 80 COCO names).
        threshold, counting_threshold, max_objects, max_overlap, position_threshold: GenEval's options
            (defaults 0.3, 0.9, 16, 1.0, 0.1 as the official script).
        device, dtype, batch_size: where, in what precision, and how many images per detector pass.
    """

    def __init__(
        self,
        detector: str = "facebook/mask2former-swin-small-coco-instance",
        detector_processor: str | None = None,
        detector_size: str | dict = "mmdet",
        clip_model: str = "openai/clip-vit-large-patch14",
        clip_processor: str | None = None,
        classnames: str | None = None,
        threshold: float = G.THRESHOLD,
        counting_threshold: float = G.COUNTING_THRESHOLD,
        max_objects: int = G.MAX_OBJECTS,
        max_overlap: float = G.MAX_OVERLAP,
        position_threshold: float = G.POSITION_THRESHOLD,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 8,
    ):
        from mrgrpo.rewards.geneval.color import ColorClassifier
        from mrgrpo.rewards.geneval.detector import MMDET_TEST_SIZE, Mask2FormerDetector

        if isinstance(detector_size, str) and detector_size not in ("mmdet", "processor"):
            raise ValueError(
                f"geneval: detector_size must be 'mmdet', 'processor' or a size dict, got {detector_size!r}"
            )
        size = (
            {"mmdet": MMDET_TEST_SIZE, "processor": None}.get(detector_size)
            if isinstance(detector_size, str)
            else dict(detector_size)
        )
        self.device = hf_clip.resolve_device(device)
        self.dtype = hf_clip.resolve_dtype(dtype, self.device, "geneval")
        # pairs whose class probability cannot pass the lowest threshold are dropped before their masks are computed
        self.detector = Mask2FormerDetector(
            detector,
            detector_processor,
            size,
            self.device,
            self.dtype,
            batch_size,
            min_score=min(threshold, counting_threshold),
        )
        self.classnames = load_classnames(classnames) if classnames else load_classnames()
        if len(self.classnames) != self.detector.num_classes:
            raise ValueError(
                f"geneval: the detector has {self.detector.num_classes} classes but the class-name list "
                f"has {len(self.classnames)}. Fix: pass `classnames` (a file, one name a line, "
                "label order)."
            )
        clip, proc = hf_clip.load_clip(clip_model, clip_processor, self.device, self.dtype, "geneval")
        self.classify_colors = ColorClassifier(clip, proc)
        self.threshold, self.counting_threshold = threshold, counting_threshold
        self.max_objects, self.max_overlap, self.position_threshold = max_objects, max_overlap, position_threshold

    def grade_instances(self, image: Any, inst: G.Instances, spec: dict[str, Any]) -> G.Verdict:
        """Grade one image from its detections (the path below the detector)."""
        threshold = G.threshold_for(spec, self.threshold, self.counting_threshold)
        objects = G.objects_by_class(inst, self.classnames, threshold, self.max_objects, self.max_overlap)
        return G.evaluate(image, objects, spec, self.classify_colors, self.position_threshold)

    def grade(self, images: Sequence[Any], specs: Sequence[dict[str, Any]]) -> list[G.Verdict]:
        """Detect and grade each image against its spec."""
        return [self.grade_instances(im, inst, spec) for im, inst, spec in zip(images, self.detector(images), specs)]

    def results(self, images: Sequence[Any], specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """GenEval-format rows ``{"tag", "prompt", "correct", "reason", "metadata", "credit"}``
        for :func:`geneval_score`."""
        return [
            {
                "tag": s.get("tag", "unknown"),
                "prompt": s.get("prompt", ""),
                "correct": v.correct,
                "reason": v.reason,
                "metadata": json.dumps(s, sort_keys=True),
                "credit": v.credit,
            }
            for s, v in zip(specs, self.grade(images, specs))
        ]


class GenEvalReward(Reward):
    """GenEval as a reward: ``credit`` (per-clause partial credit, mean over clauses, in [0, 1]) or ``strict``
    (1 when every clause holds, else 0; GenEval's verdict). Other arguments: as :class:`GenEvalGrader`."""

    name = "geneval"

    def __init__(self, mode: str = "partial", **grader_kwargs: Any):
        if mode not in ("partial", "strict"):
            raise ValueError(f"geneval: mode must be 'partial' or 'strict', got {mode!r}")
        from mrgrpo.rewards.base import check_kwargs

        check_kwargs(GenEvalGrader, grader_kwargs, "geneval")
        self.mode = mode
        self.grader = GenEvalGrader(**grader_kwargs)
        self.lock = threading.Lock()

    def score(self, images, prompts, metadata):
        specs = [spec_for(p, m) for p, m in zip(prompts, metadata)]
        keep = [i for i, s in enumerate(specs) if s is not None]
        scores = torch.zeros(len(images))
        valid = torch.zeros(len(images), dtype=torch.bool)
        correct: list[bool | None] = [None] * len(images)
        reasons: list[str | None] = [None] * len(images)
        if keep:
            with self.lock:
                verdicts = self.grader.grade([images[i] for i in keep], [specs[i] for i in keep])
            for i, v in zip(keep, verdicts):
                scores[i] = v.credit if self.mode == "partial" else float(v.correct)
                valid[i], correct[i], reasons[i] = True, v.correct, v.reason
        strict = [c for c in correct if c is not None]
        return RewardOutput(
            scores,
            valid,
            {
                "mode": self.mode,
                "no_spec": len(images) - len(keep),
                "correct": correct,
                "strict_accuracy": sum(strict) / len(strict) if strict else None,
                "reasons": reasons,
            },
        )
