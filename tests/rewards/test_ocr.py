"""OCR reward: the formulas by hand, the real RapidOCR engine on rendered text, engine selection."""

from __future__ import annotations

import sys
import types

import pytest
from PIL import Image

from mrgrpo.rewards.ocr import (
    OCRReward,
    flowgrpo_score,
    get_engine,
    levenshtein,
    multi_segment_score,
    ngram_candidates,
    quoted_segments,
)


def test_formulas_by_hand():
    assert quoted_segments('a sign that says "OPEN" and “Late”') == ["OPEN", "Late"]
    assert quoted_segments('no quotes, or empty ""') == []
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    assert flowgrpo_score("we are OPEN now", "open") == 1.0  # substring -> d = 0
    assert flowgrpo_score("opan", "open") == pytest.approx(0.75)
    assert flowgrpo_score("zzzzzzzzzz", "open") == 0.0  # d capped at len(target)
    # multi: "OPEN" exact (4 chars), "LATE" one substitution of 4 -> (4 * 1 + 4 * 0.75) / 8
    assert multi_segment_score(["OPEN", "LATF"], ["OPEN", "LATE"]) == (pytest.approx(0.875), [1.0, 0.75])
    # length weighting: a 2-char miss weighs less than an 8-char hit
    r, per = multi_segment_score(["BIGSALES"], ["BIGSALES", "ZZ"])
    assert per == [1.0, 0.0] and r == pytest.approx(8 / 10)
    # n-gram candidates: a segment split over two OCR lines, and two segments on one line
    assert multi_segment_score(["HELLO", "WORLD"], ["HELLO WORLD"])[0] == 1.0
    assert multi_segment_score(["CAT DOG"], ["CAT", "DOG"])[0] == 1.0
    assert "catdog" in ngram_candidates(["Cat", "Dog"], case_sensitive=False)
    # DeepGen's normalisation: punctuation ignored, case kept, OCR confusions folded
    assert multi_segment_score(["HELLO!"], ["HELLO"])[0] == 1.0
    assert multi_segment_score(["hello"], ["HELLO"])[0] < 0.3
    assert multi_segment_score(["hello"], ["HELLO"], case_sensitive=False)[0] == 1.0
    assert multi_segment_score(["HELL0"], ["HELLO"])[0] == 1.0
    assert multi_segment_score(["HELL0"], ["HELLO"], confusion_fold=False)[0] == pytest.approx(0.8)


class FakeEngine:
    def __init__(self, lines):
        self.lines = lines

    def __call__(self, image):
        if self.lines is None:
            raise RuntimeError("engine crashed")
        return self.lines


def test_target_selection_and_failures_with_a_fake_engine(ocr):
    r = OCRReward()
    r.engine = FakeEngine([("HELLO", 0.9), ("junk", 0.0)])  # confidence 0 lines are dropped (Flow-GRPO: conf > 0)
    im = Image.new("RGB", (8, 8))
    out = r(
        [im] * 5,
        ['"HELLO" and "WORLD"', '"WORLD" then "HELLO"', "no quotes", "no quotes", "x"],
        [{}, {}, {}, {"ocr_text": "hello"}, {"ocr_text": ["", "HELLO"]}],
    )
    # flowgrpo scores the FIRST quoted segment (as Flow-GRPO's prompt.split('"')[1]); metadata["ocr_text"] overrides
    assert out.scores.tolist() == pytest.approx([1.0, 1 - 4 / 5, 0.0, 1.0, 1.0])
    assert out.valid.tolist() == [True, True, False, True, True]
    assert out.details["invalid_reason"][2] == "no quoted text" and out.details["recognised"][0] == ["HELLO"]
    multi = OCRReward(mode="multi")
    multi.engine = FakeEngine([("HELLO", 0.9)])
    assert multi([im], ['"HELLO" and "WORLD"']).scores.item() == pytest.approx(
        (5 * 1.0 + 5 * 0.2) / 10
    )  # WORLD vs HELLO: d = 4
    r.engine = FakeEngine(None)  # an engine error: invalid and counted as a failure, never a silent 0
    out = r([im, im], ['"A"', "none"])
    assert out.valid.tolist() == [False, False] and out.details["failures"] == 1


def test_real_rapidocr_on_rendered_text(ocr, render):
    images = [render("HELLO"), render("WORLD"), render("HELLO"), render("CAT DOG", size=(320, 96)), render("CAT")]
    prompts = [
        'a sign that says "HELLO"',
        'a sign that says "HELLO"',
        "a sign with no quoted text",
        'a poster reading "CAT" and "DOG"',
        'a poster reading "CAT" and "HORSE"',
    ]
    out = ocr(images, prompts)
    assert out.scores[0] >= 0.9  # correct text
    assert out.scores[1] <= 0.3  # wrong text
    assert out.valid.tolist() == [True, True, False, True, True]  # no quotes: invalid, not 0
    assert "HELLO" in "".join(out.details["recognised"][0]).upper()
    multi = OCRReward(mode="multi")
    assert multi.engine is ocr.engine  # one engine per process
    m = multi(images[3:], prompts[3:])
    assert m.scores[0] >= 0.9  # both segments found on one line
    assert 0.3 <= m.scores[1] <= 0.6  # CAT found (3 chars), HORSE missing (5 chars): about 3/8


def test_paddle_engine_selection(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="needs model_dir"):
        OCRReward(engine="paddle")
    with pytest.raises(ValueError, match="unknown engine 'tesseract'"):
        get_engine("tesseract")
    with pytest.raises(ValueError, match="model_dir is for engine 'paddle'"):
        OCRReward(model_dir=str(tmp_path))
    calls = {}

    class FakePaddle:  # PaddleOCR 3.x API
        def __init__(self, **kw):
            calls["init"] = kw

        def predict(self, arr):
            calls["shape"] = arr.shape
            return [{"rec_texts": ["HELLO", "noise"], "rec_scores": [0.95, 0.0]}]

    monkeypatch.setitem(sys.modules, "paddleocr", types.SimpleNamespace(__version__="3.1.0", PaddleOCR=FakePaddle))
    r = OCRReward(engine="paddle", model_dir=str(tmp_path / "v3"))
    out = r([Image.new("RGB", (20, 10))], ['"hello"'])
    assert out.scores.tolist() == [1.0] and out.details["engine"] == "paddle"
    assert calls["init"]["text_detection_model_dir"] == f"{tmp_path}/v3/det" and calls["shape"] == (10, 20, 3)

    class FakePaddle2:  # PaddleOCR 2.x API
        def __init__(self, **kw):
            calls["init2"] = kw

        def ocr(self, arr, cls=False):
            return [[[[[0, 0]] * 4, ("HELL", 0.9)]]]

    monkeypatch.setitem(sys.modules, "paddleocr", types.SimpleNamespace(__version__="2.7.3", PaddleOCR=FakePaddle2))
    r2 = OCRReward(engine="paddle", det_model_dir=str(tmp_path / "d"), rec_model_dir=str(tmp_path / "r"))
    assert r2([Image.new("RGB", (20, 10))], ['"hello"']).scores.tolist() == [pytest.approx(0.8)]
    assert calls["init2"]["det_model_dir"] == str(tmp_path / "d")
