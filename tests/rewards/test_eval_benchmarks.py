"""``mrgrpo eval --benchmark``: the OCR metrics and the GenEval summary against hand computations, prompt-file
handling, and the three benchmarks end to end on the toy policy with tiny local reward models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mrgrpo.benchmarks import (
    geneval_official,
    normalised_edit_distance,
    ocr_derive,
    ocr_targets,
    ocr_words,
    word_accuracy,
)
from mrgrpo.eval import EvalPrompt, _apply_reward_args, first_per_category, load_eval_prompts


# -- metrics against hand computations ---------------------------------------------------------------
def test_ocr_words_normalise_case_and_punctuation():
    assert ocr_words("Jazz  Night, FRIDAY!  -- 42") == ["jazz", "night", "friday", "42"]


@pytest.mark.parametrize(
    "recognised,targets,acc,ned",
    [
        (["Closed on Sundays"], ["Closed on Sundays"], 1.0, 0.0),
        # 2 of 3 words; "closedonsundays" vs "closedonmondays": 2 substitutions (s->m, u->o) over 15
        (["closed on", "Mondays"], ["Closed on Sundays"], 2 / 3, 2 / 15),
        ([], ["Route 42"], 0.0, 1.0),  # nothing read: every character inserted, d = len(t)
        # multiset: one "the" read, two wanted; t = "thethecat" (9), r = "thecat" (6): 3 deletions / 9
        (["the cat"], ["the the cat"], 2 / 3, 3 / 9),
        # extra text read: r = "abcxyz" (6), t = "abc" (3): 3 deletions / max(6, 3)
        (["abc xyz"], ["abc"], 1.0, 3 / 6),
        # two segments: words from both; t = "physicsnotes", r = "physicsnotez"
        (["PHYSICS", "notez"], ["Physics", "Notes"], 1 / 2, 1 / 12),
    ],
)
def test_word_accuracy_and_ned_match_hand_values(recognised, targets, acc, ned):
    assert word_accuracy(recognised, targets) == pytest.approx(acc)
    assert normalised_edit_distance(recognised, targets) == pytest.approx(ned)


def test_metric_inputs_without_text_are_errors():
    with pytest.raises(ValueError, match="no target word"):
        word_accuracy(["x"], ["!!"])
    with pytest.raises(ValueError, match="no target character"):
        normalised_edit_distance(["x"], [" "])


def test_ocr_targets_and_derive_from_reward_details():
    assert ocr_targets('a sign "Open" and "Late Night"', None) == ["Open", "Late Night"]
    assert ocr_targets('a sign "Open"', {"ocr_text": ["A", " "]}) == ["A"]
    prompts = [EvalPrompt('a sign that says "Open Late"'), EvalPrompt("no quotes"), EvalPrompt('"Route 42"')]
    details = {"recognised": [["OPEN", "late"], ["open"], None, None, ["Route 4Z"], []]}
    scored = {
        "ocr": {
            "scores": torch.zeros(3, 2),
            "valid": torch.tensor([[True, True], [False, False], [True, True]]),
            "details": details,
        }
    }
    d = ocr_derive(prompts, scored)
    assert d["word_accuracy"]["valid"].tolist() == [[True, True], [False, False], [True, True]]
    assert d["word_accuracy"]["scores"].flatten().tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.5, 0.0])
    # "openlate" vs "open": 4 / 8; "route42" vs "route4z": 1 / 7; nothing read: 1
    assert d["edit_distance"]["scores"].flatten().tolist() == pytest.approx([0.0, 0.5, 0.0, 0.0, 1 / 7, 1.0])


def test_geneval_summary_from_reward_details_by_hand():
    prompts = [
        EvalPrompt("a photo of a cat", "single_object", {"include": [{"class": "cat", "count": 1}]}),
        EvalPrompt("a photo of a dog", "single_object", {"include": [{"class": "dog", "count": 1}]}),
        EvalPrompt("a photo of two cats", "counting", {"include": [{"class": "cat", "count": 2}]}),
    ]
    correct = [True, True, False, False, True, None]  # prompt-major, 2 images each; None = not graded
    scored = {"geneval": {"scores": torch.zeros(3, 2), "details": {"correct": correct}}}
    s = geneval_official(prompts, scored)
    # single_object: 2 of 4 images; counting: 1 of 1 graded; overall = mean over tags
    assert s["tags"] == {"single_object": 0.5, "counting": 1.0} and s["overall"] == pytest.approx(0.75)
    assert s["counts"] == {"single_object": [2, 4], "counting": [1, 1]} and s["images"] == 5
    assert s["correct_prompts"] == pytest.approx(2 / 3) and s["correct_images"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="no image could be graded"):
        geneval_official(prompts[:1], {"geneval": {"scores": torch.zeros(1, 1), "details": {"correct": [None]}}})


# -- prompt files and options -------------------------------------------------------------------------------
def test_drawbench_csv_layout_and_limit_per_category(tmp_path):
    f = tmp_path / "drawbench.csv"
    f.write_text('Prompts,Category\n"A red colored car.",Colors\nA cat,Counting\n"A blue, big bird.",Colors\n,x\n')
    ps = load_eval_prompts(f)
    assert [(p.prompt, p.category) for p in ps] == [
        ("A red colored car.", "Colors"),
        ("A cat", "Counting"),
        ("A blue, big bird.", "Colors"),
    ]
    assert [p.prompt for p in first_per_category(ps, 1)] == ["A red colored car.", "A cat"]
    assert first_per_category(ps, None) == ps
    bad = tmp_path / "bad.csv"
    bad.write_text("text\nhello\n")
    with pytest.raises(ValueError, match="no `prompt`"):
        load_eval_prompts(bad)
    with pytest.raises(ValueError, match="--limit"):
        first_per_category(ps, 0)


def test_reward_args_reach_the_named_reward():
    specs = {"pickscore": ("pickscore", {}), "clip": ("clip", {"batch_size": 4})}
    _apply_reward_args(specs, ["pickscore.model=/models/pick", "clip.batch_size=2", "clip.device=cuda:1"])
    assert specs == {
        "pickscore": ("pickscore", {"model": "/models/pick"}),
        "clip": ("clip", {"batch_size": 2, "device": "cuda:1"}),
    }
    with pytest.raises(ValueError, match="no reward labelled 'hps'"):
        _apply_reward_args(specs, ["hps.device=cpu"])
    with pytest.raises(ValueError, match="LABEL.KEY=VALUE"):
        _apply_reward_args(specs, ["pickscore=3"])


# -- end to end on the toy policy ----------------------------------------------------------------------------
@pytest.fixture
def toy_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is much faster on a shared CPU
    from mrgrpo.registry import POLICIES

    policy = POLICIES.build("deepgen-toy")
    policy.set_stage("rl")
    policy.save(str(tmp_path / "policy"))
    yield str(tmp_path / "policy")
    torch.set_num_threads(old)


def _eval(*args):
    from mrgrpo.cli import main

    assert main(["eval", *args, "--steps", "2"]) == 0


def test_geneval_benchmark_end_to_end(tmp_path, toy_policy):
    from test_geneval import _tiny_mask2former
    from tiny_reward_models import save_tiny_hf_clip

    det = _tiny_mask2former(tmp_path / "m2f")
    clip = save_tiny_hf_clip(tmp_path / "clip")
    out = tmp_path / "geneval"
    args = [f"geneval.{k}={v}" for k, v in (("detector", det), ("clip_model", clip), ("device", "cpu"))]
    args += ["geneval.threshold=0.0", "geneval.counting_threshold=0.0"]
    args += ['geneval.detector_size={"shortest_edge": 64, "longest_edge": 96}']
    _eval(toy_policy, "--benchmark", "geneval", "--limit", "1", "--samples", "2", "--out", str(out),
          *[a for x in args for a in ("--reward-arg", x)])  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    bench, cats = res["benchmark"], res["categories"]
    tags = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    assert list(bench["tags"]) == tags and bench["images"] == 12 and bench["prompts"] == 6
    for t in tags:  # the official per-tag accuracy is the strict reward's mean over the tag's images
        assert bench["tags"][t] == pytest.approx(cats[t]["geneval"]) and bench["counts"][t][1] == 2
    assert bench["overall"] == pytest.approx(sum(cats[t]["geneval"] for t in tags) / 6)
    md = (out / "results.md").read_text()
    assert "| single_object | 1 |" in md and "**overall** (mean over tags)" in md and (out / "grid.png").is_file()


def test_ocr_benchmark_end_to_end(tmp_path, toy_policy):
    pytest.importorskip("rapidocr_onnxruntime")
    prompts = tmp_path / "ocr.jsonl"
    prompts.write_text('{"prompt": "a sign that says \\"Open\\"", "tag": "sign"}\n{"prompt": "\\"Route 42\\""}\n')
    step = tmp_path / "run" / "checkpoints" / "step-000010"  # a checkpoint keeps the policy in policy/
    step.mkdir(parents=True)
    shutil.copytree(toy_policy, step / "policy")
    out = tmp_path / "ocr"
    _eval(str(step), "--benchmark", "ocr", "--prompts", str(prompts), "--samples", "1", "--out", str(out))
    res = json.loads((out / "results.json").read_text())
    assert set(res["categories"]["overall"]) == {"prompts", "ocr", "word_accuracy", "edit_distance"}
    for row in res["prompts"]:  # a 32-pixel toy image: whatever was read, the metrics are in range
        assert 0 <= row["word_accuracy"] <= 1 and 0 <= row["edit_distance"] <= 1 and 0 <= row["ocr"] <= 1
    assert "| sign | 1 |" in (out / "results.md").read_text()


def test_ocr_metrics_on_a_real_reading(render, ocr):
    """The OCR engine on rendered text: a legible word is read back exactly (accuracy 1, distance 0)."""
    prompts = [EvalPrompt('a sign that reads "HELLO"')]
    r = ocr([render("HELLO")], [prompts[0].prompt])
    scored = {"ocr": {"scores": r.scores.view(1, 1), "valid": r.valid.view(1, 1), "details": r.details}}
    d = ocr_derive(prompts, scored)
    assert d["word_accuracy"]["scores"].item() == 1.0 and d["edit_distance"]["scores"].item() == 0.0


def test_drawbench_needs_prompts_and_scores_pickscore_and_clip(tmp_path, toy_policy, capsys):
    open_clip = pytest.importorskip("open_clip")
    from test_clip import TINY_CLIP
    from tiny_reward_models import save_tiny_hf_clip

    from mrgrpo.cli import main

    assert main(["eval", toy_policy, "--benchmark", "drawbench", "--out", str(tmp_path / "x")]) == 2
    assert "needs --prompts" in capsys.readouterr().err
    pick = save_tiny_hf_clip(tmp_path / "pick")
    open_clip.factory._MODEL_CONFIGS["mrgrpo-tiny-clip"] = TINY_CLIP
    ckpt = tmp_path / "clip.pt"
    torch.save(open_clip.create_model("mrgrpo-tiny-clip", pretrained=None).state_dict(), ckpt)
    (tmp_path / "clip.json").write_text(json.dumps(TINY_CLIP))
    csv = tmp_path / "db.csv"
    csv.write_text("Prompts,Category\nA red car.,Colors\nTwo cats.,Counting\nA blue bird.,Colors\n")
    out = tmp_path / "db"
    opts = [
        f"pickscore.model={pick}",
        f"pickscore.processor={pick}",
        "pickscore.device=cpu",
        "clip.model_name=mrgrpo-tiny-clip-eval",
        f"clip.pretrained={ckpt}",
        f"clip.model_config={tmp_path / 'clip.json'}",
        "clip.device=cpu",
    ]
    _eval(toy_policy, "--benchmark", "drawbench", "--prompts", str(csv), "--samples", "2", "--out", str(out),
          *[a for x in opts for a in ("--reward-arg", x)])  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    cats = res["categories"]
    assert set(cats) == {"Colors", "Counting", "overall"} and "benchmark" not in res
    colors = [p["pickscore"] for p in res["prompts"] if p["category"] == "Colors"]
    assert cats["Colors"]["pickscore"] == pytest.approx(sum(colors) / 2)
    assert all(-1 <= p["clip"] <= 1 for p in res["prompts"])


def test_uint8_generation_scores_like_float(toy_policy):
    """Benchmarks keep images as uint8: the same images (and scores) as the float path."""
    from mrgrpo.eval import generate, load_policy, score_images, to_uint8
    from mrgrpo.rewards.base import build_reward

    policy = load_policy(toy_policy)
    prompts = [EvalPrompt("a red circle"), EvalPrompt("two blue squares")]
    kw = dict(samples=2, seed=3, num_steps=2, cfg_scale=3.0, height=32, width=32)
    f, u = generate(policy, prompts, **kw), generate(policy, prompts, **kw, as_uint8=True)
    assert u.dtype == torch.uint8 and torch.equal(u, to_uint8(f)) and f.dtype == torch.float32
    reward = {"b": build_reward("brightness", {})}
    a, b = score_images(f, prompts, reward)["b"], score_images(u, prompts, reward)["b"]
    assert torch.equal(a["scores"], b["scores"])
