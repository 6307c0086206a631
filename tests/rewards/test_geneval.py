"""GenEval without mmdet: the rules on drawn images with known answers (controlled detections through the code
path below the detector), mmdet's post-processing on hand-made logits, and the whole reward on tiny random models."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mrgrpo.rewards.geneval import grader as G
from mrgrpo.rewards.geneval.color import object_crop
from mrgrpo.rewards.geneval.detector import instances_from_logits, masks_to_boxes
from mrgrpo.rewards.geneval.reward import load_classnames, load_metadata, spec_for

NAMES = load_classnames()
RGB = {
    "red": (220, 20, 20),
    "blue": (20, 40, 220),
    "green": (20, 180, 40),
    "yellow": (240, 220, 20),
    "black": (10, 10, 10),
    "white": (250, 250, 250),
}


def scene(shapes, size=(160, 120)):
    """Draw filled shapes ``(class, colour, (x1, y1, x2, y2), score)`` on white; return the image and its Instances."""
    im = Image.new("RGB", size, "white")
    masks = []
    for _, colour, box, _ in shapes:
        ImageDraw.Draw(im).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=RGB[colour])
        m = np.zeros((size[1], size[0]), dtype=bool)
        m[box[1] : box[3], box[0] : box[2]] = True
        masks.append(m)
    masks = np.stack(masks) if masks else np.zeros((0, size[1], size[0]), dtype=bool)
    inst = G.Instances(
        np.array([NAMES.index(c) for c, *_ in shapes]),
        np.array([s for *_, s in shapes]),
        masks_to_boxes(torch.from_numpy(masks)).numpy(),
        masks,
    )
    return im, inst


def mean_colour(image, objects, classname):
    """A stand-in for CLIP that reads colours right: the nearest named colour to the mean of the grey-backed crop's
    non-grey pixels (uses the real crop code)."""
    out = []
    for o in objects:
        px = np.asarray(object_crop(image, o)).reshape(-1, 3).astype(float)
        px = px[np.abs(px - 0x99).sum(1) > 6]
        mean = px.mean(0)
        out.append(min(RGB, key=lambda c: np.linalg.norm(mean - np.array(RGB[c]))))
    return out


def grade(image, inst, spec):
    objects = G.objects_by_class(inst, NAMES, G.threshold_for(spec))
    return G.evaluate(image, objects, spec, mean_colour)


def test_boxes_from_masks_are_exclusive_extents():
    im, inst = scene([("dog", "red", (10, 20, 50, 60), 0.9)])
    assert inst.boxes.tolist() == [[10, 20, 50, 60]]
    assert masks_to_boxes(torch.zeros(1, 4, 4, dtype=torch.bool)).tolist() == [[0, 0, 0, 0]]


def test_single_two_object_and_colour():
    im, inst = scene([("dog", "red", (10, 10, 50, 50), 0.95), ("cat", "blue", (90, 50, 140, 100), 0.8)])
    assert grade(im, inst, {"tag": "single_object", "include": [{"class": "dog", "count": 1}]}).correct
    two = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "horse", "count": 1}]}
    v = grade(im, inst, two)
    assert not v.correct and v.clauses == [1.0, 0.0] and v.credit == 0.5 and "expected horse>=1, found 0" in v.reason
    assert grade(
        im,
        inst,
        {
            "tag": "color_attr",
            "include": [{"class": "dog", "count": 1, "color": "red"}, {"class": "cat", "count": 1, "color": "blue"}],
        },
    ).correct
    v = grade(im, inst, {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}]})
    assert not v.correct and v.clauses == [1.0, 0.0] and "expected red cat>=1, found 0 red; and 1 blue" in v.reason


def test_confidence_thresholds_and_counting():
    two = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}]}
    im, inst = scene(
        [
            ("dog", "red", (5, 5, 35, 35), 0.95),
            ("dog", "red", (50, 5, 80, 35), 0.92),
            ("dog", "red", (100, 5, 130, 35), 0.6),
        ]
    )
    assert grade(im, inst, two).correct  # the third dog is below the counting threshold 0.9
    assert not grade(im, inst, {**two, "tag": "single_object"}).correct  # ... but above 0.3 for other tags
    im, inst = scene(
        [
            ("dog", "red", (5, 5, 35, 35), 0.95),
            ("dog", "red", (50, 5, 80, 35), 0.92),
            ("dog", "red", (100, 5, 130, 35), 0.91),
        ]
    )
    v = grade(im, inst, two)
    assert not v.correct and v.clauses == [1.0, 0.0] and "expected dog<3, found 3" in v.reason
    im, inst = scene([("dog", "red", (5, 5, 35, 35), 0.95), ("dog", "red", (50, 5, 80, 35), 0.9)])
    v = grade(im, inst, two)  # 0.9 is not > 0.9
    assert not v.correct and v.clauses == [0.5, 1.0] and v.credit == 0.75
    im, inst = scene([("cat", "red", (5, 5, 35, 35), 0.3)])
    assert not grade(im, inst, {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}).correct


def test_relative_position():
    right = {
        "tag": "position",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["right of", 0]}],
    }
    im, inst = scene([("dog", "red", (5, 40, 45, 80), 0.9), ("cat", "blue", (110, 40, 150, 80), 0.9)])
    assert grade(im, inst, right).correct
    left = json.loads(json.dumps(right).replace("right of", "left of"))
    v = grade(im, inst, left)
    assert not v.correct and v.clauses == [1.0, 1.0, 0.0] and "expected cat left of target, found right of" in v.reason
    # overlapping, nearly concentric boxes: no relation at all
    im, inst = scene([("dog", "red", (40, 30, 120, 100), 0.9), ("cat", "blue", (50, 40, 115, 95), 0.9)])
    assert not grade(im, inst, right).correct
    assert G.relative_position(inst_obj(inst, 1), inst_obj(inst, 0)) == set()
    # above / below: image y grows downwards; a diagonal offset counts for both axes only beyond 60 degrees
    a, b = (np.array([60, 0, 80, 20, 1.0]), None), (np.array([60, 90, 80, 110, 1.0]), None)
    assert G.relative_position(a, b) == {"above"} and G.relative_position(b, a) == {"below"}
    c = (np.array([140, 90, 160, 110, 1.0]), None)  # offset (-80, -90): both components beyond cos 60
    assert G.relative_position(a, c) == {"left of", "above"}
    d = (np.array([100, 90, 120, 110, 1.0]), None)  # offset (-40, -90): only "above"
    assert G.relative_position(a, d) == {"above"}
    # the target clause failed: no target
    im, inst = scene([("cat", "blue", (110, 40, 150, 80), 0.9)])
    v = grade(im, inst, right)
    assert not v.correct and "no target for cat" in v.reason and v.clauses == [0.0, 1.0, 0.0]


def inst_obj(inst, i):
    return (np.append(inst.boxes[i], inst.scores[i]), inst.masks[i])


def test_max_objects_and_nms():
    shapes = [("dog", "red", (5 + 3 * i, 5, 35 + 3 * i, 35), 0.99 - 0.01 * i) for i in range(5)]
    im, inst = scene(shapes)
    assert len(G.objects_by_class(inst, NAMES, max_objects=3)["dog"]) == 3
    objs = G.objects_by_class(inst, NAMES)
    assert [round(o[0][4], 2) for o in objs["dog"]] == [0.99, 0.98, 0.97, 0.96, 0.95]  # most confident first
    assert len(G.objects_by_class(inst, NAMES, max_overlap=0.5)["dog"]) == 2  # greedy NMS at IoU 0.5
    assert G.compute_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0 and G.compute_iou([0, 0, 9, 9], [20, 20, 29, 29]) == 0.0


def test_object_crop_masks_onto_grey():
    im, inst = scene([("dog", "red", (10, 10, 50, 50), 0.9)])
    tri = np.zeros((120, 160), dtype=bool)
    tri[10:50, 10:30] = True  # half of the square
    crop = np.asarray(object_crop(im, (np.array([10, 10, 50, 50, 0.9]), tri)))
    assert crop.shape == (40, 40, 3)
    assert (crop[:, :20] == RGB["red"]).all() and (crop[:, 20:] == 0x99).all()
    with pytest.raises(ValueError, match="mask of shape"):
        object_crop(im, (np.array([0, 0, 5, 5, 1.0]), np.zeros((3, 3), dtype=bool)))


def test_instances_from_logits_matches_mmdet_rule():
    # 3 queries, 2 classes (+ no-object); masks at half resolution of an 8x8 image
    cls = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 1.0], [-5.0, -5.0, 5.0]])
    masks = torch.full((3, 4, 4), -8.0)
    masks[0, :2, :2] = 8.0
    masks[1, 2:, 1:4] = 8.0
    inst = instances_from_logits(cls, masks, (8, 8), max_per_image=2)
    probs = cls.softmax(-1)
    assert inst.labels.tolist() == [0, 1]
    up = torch.nn.functional.interpolate(masks[None], size=(8, 8), mode="bilinear", align_corners=False)[0]
    for k, q in enumerate([0, 1]):
        binary = up[q] > 0
        expected = probs[q, k].item() * up[q].sigmoid()[binary].mean().item()
        assert inst.scores[k] == pytest.approx(expected, rel=1e-5)
        assert (inst.masks[k] == binary.numpy()).all()
    assert inst.boxes[0].tolist() == [0, 0, 4, 4] and inst.boxes[1].tolist() == [2, 4, 8, 8]
    # pruning by class probability keeps exactly the detections that can pass that threshold
    torch.manual_seed(0)
    cls, masks = torch.randn(20, 6) * 3, torch.randn(20, 5, 5) * 4
    full = instances_from_logits(cls, masks, (12, 10), max_per_image=100)
    for t in (0.1, 0.3, 0.6):
        fast = instances_from_logits(cls, masks, (12, 10), max_per_image=100, min_score=t)
        sel = full.scores > t
        assert sorted(fast.scores[fast.scores > t].tolist()) == pytest.approx(sorted(full.scores[sel].tolist()))
        assert len(fast.labels) < len(full.labels)
    # mmdet's order: upsample to the padded input, drop the padding, resize to the image
    padded = torch.full((20, 8, 8), 9.0)  # the padding says "object", the content (top-left 5x5) says "none"
    padded[:, :5, :5] = -9.0
    assert instances_from_logits(cls, padded, (12, 10)).masks.any()
    cropped = instances_from_logits(cls, padded, (12, 10), crop=((16, 16), (10, 10)))
    assert cropped.masks.shape[1:] == (12, 10) and not cropped.masks.any()
    assert instances_from_logits(torch.tensor([[-9.0, 9.0]]), masks[:1], (4, 4), min_score=0.5).labels.shape == (0,)


def test_summary_is_mean_over_tags():
    rows = [
        {"tag": "a", "prompt": "p1", "correct": True},
        {"tag": "a", "prompt": "p1", "correct": False},
        {"tag": "a", "prompt": "p2", "correct": False},
        {"tag": "b", "prompt": "p3", "correct": True},
    ]
    s = G.summarize(rows)
    assert s["tags"] == {"a": pytest.approx(1 / 3), "b": 1.0}
    assert s["overall"] == pytest.approx((1 / 3 + 1) / 2)  # not the image mean (0.5)
    assert s["correct_images"] == 0.5 and s["prompts"] == 3 and s["correct_prompts"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no results"):
        G.summarize([])


def test_shipped_metadata():
    rows = load_metadata()
    assert len(rows) == 553 and len(NAMES) == 80
    assert {r["tag"] for r in rows} == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert all(q["class"] in NAMES for r in rows for q in r["include"] + r.get("exclude", []))
    assert all(q.get("color", "red") in G.COLORS for r in rows for q in r["include"])
    assert spec_for("a photo of a bench", {})["include"] == [{"class": "bench", "count": 1}]
    assert spec_for("no such prompt", {}) is None


def _tiny_mask2former(folder):
    pytest.importorskip("scipy")  # transformers' Mask2Former builds its matcher with scipy
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    swin = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    cfg = Mask2FormerConfig(
        backbone_config=swin,
        num_labels=80,
        hidden_dim=32,
        num_queries=10,
        encoder_layers=1,
        decoder_layers=2,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        mask_feature_size=32,
        feature_size=32,
        num_attention_heads=2,
        use_pretrained_backbone=False,
    )
    Mask2FormerForUniversalSegmentation(cfg).eval().save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, size_divisor=32).save_pretrained(folder)
    return folder


def test_reward_end_to_end_on_tiny_models(tmp_path):
    from tiny_reward_models import save_tiny_hf_clip

    from mrgrpo.rewards.base import build_reward

    det = _tiny_mask2former(tmp_path / "m2f")
    clip = save_tiny_hf_clip(tmp_path / "clip")
    kw = {
        "detector": str(det),
        "detector_size": {"shortest_edge": 64, "longest_edge": 96},
        "clip_model": str(clip),
        "device": "cpu",
        "batch_size": 2,
        "threshold": 0.0,
        "counting_threshold": 0.0,
    }
    reward = build_reward("geneval", kw)
    images = [
        Image.new("RGB", (64, 48), "red"),
        Image.effect_noise((80, 80), 50).convert("RGB"),
        Image.new("RGB", (70, 70)),
    ]
    meta = [{"tag": "color_attr", "include": [{"class": "dog", "count": 1, "color": "red"}]}, {}, {}]
    out = reward(images, ["x", "a photo of two clocks", "not a geneval prompt"], meta)
    assert out.valid.tolist() == [True, True, False] and out.details["no_spec"] == 1
    assert ((out.scores >= 0) & (out.scores <= 1)).all() and out.scores.dtype == torch.float32
    insts = reward.grader.detector(images[:2])
    for im, inst in zip(images, insts):
        assert inst.masks.shape == (len(inst.labels), im.height, im.width) and inst.labels.max() < 80
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        nonempty = inst.masks.any(axis=(1, 2))
        expected = masks_to_boxes(torch.from_numpy(inst.masks[nonempty])).numpy()
        np.testing.assert_array_equal(inst.boxes[nonempty], expected)
    colours = reward.grader.classify_colors(images[0], [(np.array([0, 0, 30, 30, 1.0]), None)] * 2, "dog")
    assert len(colours) == 2 and set(colours) <= set(G.COLORS)
    rows = reward.grader.results(images[:2], [meta[0], spec_for("a photo of two clocks", None)])
    assert G.summarize(rows)["images"] == 2 and {r["tag"] for r in rows} == {"color_attr", "counting"}
    strict = build_reward("geneval", {**kw, "mode": "strict"})
    s = strict(images, ["x", "a photo of two clocks", "y"], meta)
    assert set(s.scores[s.valid].tolist()) <= {0.0, 1.0}
    with pytest.raises(TypeError, match="unknown argument"):
        build_reward("geneval", {**kw, "detectr": "x"})
    with pytest.raises(ValueError, match="80 classes but the class-name list has 2"):
        names = tmp_path / "names.txt"
        names.write_text("dog\ncat\n")
        build_reward("geneval", {**kw, "classnames": str(names)})


def test_training_prompts_are_disjoint_and_well_formed(tmp_path):
    from pathlib import Path

    from mrgrpo.rewards.geneval.prompts import main, make_prompts

    evals = {r["prompt"] for r in load_metadata()}
    recs = make_prompts(per_tag=30, seed=1)
    assert not evals & {r["prompt"] for r in recs} and len({r["prompt"] for r in recs}) == len(recs)
    for r in recs:
        assert all(q["class"] in NAMES for q in r["include"] + r.get("exclude", []))
        for q in r["include"]:
            assert q.get("color", "red") in G.COLORS and not (q["class"] == "person" and "color" in q)
        if r["tag"] == "counting":
            assert r["exclude"][0]["count"] == r["include"][0]["count"] + 1
    # a drawn image matching a generated position prompt passes, the mirrored one fails
    pos = next(r for r in recs if r["tag"] == "position" and r["include"][1]["position"][0] == "left of")
    b, a = pos["include"][0]["class"], pos["include"][1]["class"]
    im, inst = scene([(a, "red", (5, 40, 45, 80), 0.9), (b, "blue", (110, 40, 150, 80), 0.9)])
    assert grade(im, inst, pos).correct
    im, inst = scene([(a, "red", (110, 40, 150, 80), 0.9), (b, "blue", (5, 40, 45, 80), 0.9)])
    assert not grade(im, inst, pos).correct
    # the shipped training file is what the generator writes
    shipped = Path(__file__).resolve().parents[2] / "recipes" / "prompts" / "geneval_train.jsonl"
    main([str(tmp_path / "t.jsonl"), "--per-tag", "200", "--seed", "0"])
    assert (tmp_path / "t.jsonl").read_text() == shipped.read_text()


@pytest.mark.parametrize("recipe", ["sd3_pickscore.yaml", "sd3_geneval.yaml"])
def test_new_recipes_name_valid_reward_arguments(recipe):
    from pathlib import Path

    from mrgrpo.config import load_recipe
    from mrgrpo.registry import REWARDS
    from mrgrpo.rewards.base import check_kwargs
    from mrgrpo.rewards.geneval.reward import GenEvalGrader, GenEvalReward

    cfg = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / recipe)
    for key, spec in cfg.rewards.items():
        factory = REWARDS.get(spec.name or key)
        if factory is GenEvalReward:
            kwargs = dict(spec.kwargs)
            assert kwargs.pop("mode") in ("partial", "strict")
            check_kwargs(GenEvalGrader, kwargs, key)
        else:
            check_kwargs(factory, spec.kwargs, key)
    if recipe == "sd3_geneval.yaml":  # the evaluation prompts are the shipped GenEval metadata, graded strictly
        assert (
            cfg.resolve_path(cfg.eval.sources[0].path).read_text()
            == (
                Path(__file__).resolve().parents[2] / "rewards" / "geneval" / "assets" / "evaluation_metadata.jsonl"
            ).read_text()
        )
