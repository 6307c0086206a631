"""GenEval's grading rules, below the detector: pure functions of detected objects.

Follows GenEval's ``evaluation/evaluate_images.py`` (Ghosh et al., 2023; MIT): per class, keep
detections above ``THRESHOLD`` (0.3; ``COUNTING_THRESHOLD`` 0.9 for the ``counting`` tag), most
confident first, at most ``MAX_OBJECTS`` (16), optional greedy NMS (``MAX_OVERLAP`` 1.0 = off).
An ``include`` clause needs ``count`` objects of its class, optionally of a ``color`` (CLIP
zero-shot over GenEval's ten colours, on the ``count`` most confident objects) and at a
``position`` relative to an earlier clause's objects (boxes' centre offset beyond
``POSITION_THRESHOLD`` (0.1) times the summed box sizes, direction within 60 degrees of the
axis); an ``exclude`` clause fails when ``count`` or more objects of its class are found. An
image is correct when every clause holds.

:func:`evaluate` returns that strict verdict (identical logic to the official script) and a
per-clause partial credit for RL (see its docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
MAX_OVERLAP = 1.0  # NMS IoU threshold; 1.0 disables NMS (GenEval's default)
POSITION_THRESHOLD = 0.1
COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]

# one detected object: (box [x1, y1, x2, y2, score] float array, mask [H, W] bool array or None)
Obj = tuple[np.ndarray, Any]
# classify_colors(image, objects, classname) -> one colour name (of COLORS) per object
ColorFn = Callable[[Any, Sequence[Obj], str], list[str]]


@dataclass
class Instances:
    """Detector output for one image (K instances).

    Attributes:
        labels: ``[K]`` int class indices into the class-name list.
        scores: ``[K]`` float confidences in [0, 1].
        boxes: ``[K, 4]`` float ``x1, y1, x2, y2`` in pixels (``x2``/``y2`` exclusive, as mmdet's mask2bbox).
        masks: ``[K, H, W]`` bool, or None.
    """

    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray | None = None


@dataclass
class Verdict:
    """The grade of one image: ``correct`` (all clauses, GenEval's verdict), ``credit`` in [0, 1]
    (mean per-clause partial credit), ``clauses`` (per-clause credits), ``reason`` (failures, as GenEval words them)."""

    correct: bool
    credit: float
    clauses: list[float] = field(default_factory=list)
    reason: str = ""


def compute_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU of two ``x1, y1, x2, y2`` boxes with GenEval's inclusive-pixel (+1) areas."""

    def area(b):
        return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)

    inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])])
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def objects_by_class(
    inst: Instances,
    classnames: Sequence[str],
    threshold: float = THRESHOLD,
    max_objects: int = MAX_OBJECTS,
    max_overlap: float = MAX_OVERLAP,
) -> dict[str, list[Obj]]:
    """``{classname: [(box5, mask), ...]}`` most confident first, thresholded (``score > threshold``), capped, NMS'd."""
    out: dict[str, list[Obj]] = {}
    labels = np.asarray(inst.labels).reshape(-1)
    scores = np.asarray(inst.scores, dtype=np.float64).reshape(-1)
    boxes = np.asarray(inst.boxes, dtype=np.float64).reshape(-1, 4)
    for index, name in enumerate(classnames):
        found = np.nonzero(labels == index)[0]
        if not len(found):
            continue
        found = found[np.argsort(-scores[found], kind="stable")]
        ids: list[int] = found[scores[found] > threshold][:max_objects].tolist()
        kept: list[Obj] = []
        while ids:
            top = ids.pop(0)
            box5 = np.append(boxes[top], scores[top])
            kept.append((box5, None if inst.masks is None else inst.masks[top]))
            if max_overlap < 1:
                ids = [j for j in ids if compute_iou(boxes[top], boxes[j]) < max_overlap]
        if kept:
            out[name] = kept
    return out


def relative_position(obj_a: Obj, obj_b: Obj, position_threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of A to B among ``left of``, ``right of``, ``above``, ``below`` (image y grows downwards)."""
    boxes = np.array([obj_a[0][:4], obj_b[0][:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - position_threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def evaluate(
    image: Any,
    objects: dict[str, list[Obj]],
    metadata: dict[str, Any],
    classify_colors: ColorFn,
    position_threshold: float = POSITION_THRESHOLD,
) -> Verdict:
    """Grade one image against its GenEval metadata (``include`` / ``exclude`` clauses).

    ``correct`` follows the official script exactly. Partial credit, one entry per clause:
    an include's count ``min(found, count) / count``; its colour (if any) the share of its
    ``count`` most confident objects with the right colour, ``right / count``; its position (if
    any) the share of (object, target object) pairs in the right relation, 0 without a target;
    an exclude 1 when fewer than ``count`` objects are found, else 0. ``credit`` is their mean.
    """
    correct = True
    reasons: list[str] = []
    clauses: list[float] = []
    matched_groups: list[list[Obj] | None] = []
    for req in metadata.get("include", []):
        classname, count = req["class"], int(req["count"])
        matched = True
        found = objects.get(classname, [])[:count]
        clauses.append(min(len(found), count) / count)
        colors = None
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {classname}>={count}, found {len(found)}")
        elif "color" in req:
            colors = classify_colors(image, found, classname)
            if colors.count(req["color"]) < count:
                correct = matched = False
                reasons.append(
                    f"expected {req['color']} {classname}>={count}, found {colors.count(req['color'])} "
                    f"{req['color']}; and " + ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                )
        if "color" in req:
            if colors is None and found:
                colors = classify_colors(image, found, classname)
            clauses.append(min((colors or []).count(req["color"]), count) / count)
        if "position" in req:
            expected_rel, target_group = req["position"]
            target = matched_groups[target_group] if target_group < len(matched_groups) else None
            pairs = [(o, t) for o in found for t in (target or [])]
            good = sum(expected_rel in relative_position(o, t, position_threshold) for o, t in pairs)
            clauses.append(good / len(pairs) if pairs else 0.0)
            if matched:
                if target is None:
                    correct = matched = False
                    reasons.append(f"no target for {classname} to be {expected_rel}")
                else:
                    for o, t in pairs:  # the official loop stops at the first failing pair
                        rels = relative_position(o, t, position_threshold)
                        if expected_rel not in rels:
                            correct = matched = False
                            reasons.append(
                                f"expected {classname} {expected_rel} target, found {' and '.join(rels)} target"
                            )
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        classname, count = req["class"], int(req["count"])
        n = len(objects.get(classname, []))
        clauses.append(0.0 if n >= count else 1.0)
        if n >= count:
            correct = False
            reasons.append(f"expected {classname}<{count}, found {n}")
    credit = sum(clauses) / len(clauses) if clauses else 0.0
    return Verdict(correct, credit, clauses, "\n".join(reasons))


def threshold_for(
    metadata: dict[str, Any], threshold: float = THRESHOLD, counting_threshold: float = COUNTING_THRESHOLD
) -> float:
    """The confidence threshold GenEval uses for this prompt's tag."""
    return counting_threshold if metadata.get("tag") == "counting" else threshold


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """GenEval's summary of per-image results ``{"tag", "prompt", "correct", ...}`` (as ``summary_scores.py``).

    Returns ``{"overall": mean over tags of the tag's image accuracy, "tags": {tag: accuracy},
    "counts": {tag: [correct, total]}, "images": N, "prompts": distinct prompts,
    "correct_images": share of images correct, "correct_prompts": share of prompts with any correct image}``.
    Tags appear in first-seen order. The overall score is GenEval's headline number.
    """
    if not results:
        raise ValueError("geneval: no results to summarise")
    by_tag: dict[str, list[bool]] = {}
    by_prompt: dict[str, bool] = {}
    for r in results:
        by_tag.setdefault(r["tag"], []).append(bool(r["correct"]))
        key = r.get("metadata") or r["prompt"]
        key = key if isinstance(key, str) else repr(sorted(key.items()))
        by_prompt[key] = by_prompt.get(key, False) or bool(r["correct"])
    tags = {t: sum(v) / len(v) for t, v in by_tag.items()}
    return {
        "overall": float(np.mean(list(tags.values()))),
        "tags": tags,
        "counts": {t: [sum(v), len(v)] for t, v in by_tag.items()},
        "images": len(results),
        "prompts": len(by_prompt),
        "correct_images": sum(bool(r["correct"]) for r in results) / len(results),
        "correct_prompts": sum(by_prompt.values()) / len(by_prompt),
    }
