"""Built-in rewards: pixel, OCR (real RapidOCR on rendered text), CLIP (tiny model on disk), wrappers."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from mrgrpo.rewards.base import RewardOutput, as_reward, build_reward
from mrgrpo.rewards.ocr import flowgrpo_score, levenshtein, multi_segment_score, quoted_segments


def render(text: str, size=(256, 96), font_size=40) -> Image.Image:
    im = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(im)
    draw.text((12, 20), text, fill="black", font=ImageFont.load_default(size=font_size))
    return im


def test_pixel_rewards():
    white, black = Image.new("RGB", (16, 16), "white"), Image.new("RGB", (16, 16), "black")
    out = build_reward("brightness")([white, black], ["x", "y"])
    assert out.scores.tolist() == pytest.approx([1.0, 0.0], abs=1e-3)
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    cm = build_reward("color_match")([red, blue, red], ["a red square", "a red square", "a square"])
    assert cm.scores[0] == pytest.approx(1.0) and cm.scores[1] < 0.5
    assert cm.valid.tolist() == [True, True, False]  # no colour named: invalid, not 0
    noisy = Image.effect_noise((64, 64), 100).convert("RGB")
    jpeg = build_reward("jpeg_compressibility")([Image.new("RGB", (64, 64), "gray"), noisy], ["a", "b"])
    assert jpeg.scores[0] > jpeg.scores[1]


def test_ocr_formula_by_hand():
    assert quoted_segments('a sign that says "OPEN" and “Late”') == ["OPEN", "Late"]
    assert levenshtein("kitten", "sitting") == 3
    assert flowgrpo_score("we are OPEN now", "open") == 1.0  # substring -> d = 0
    assert flowgrpo_score("opan", "open") == pytest.approx(0.75)
    assert flowgrpo_score("zzzzzzzzzz", "open") == 0.0  # d capped at len(target)
    # multi: "OPEN" found exactly (4 chars), "LATE" misses one char of 4 -> (4*1 + 4*0.75)/8
    assert multi_segment_score(["OPEN", "LATF"], ["OPEN", "LATE"]) == pytest.approx(0.875)


@pytest.fixture(scope="module")
def ocr():
    pytest.importorskip("rapidocr_onnxruntime")
    return build_reward("ocr")


def test_ocr_real_engine(ocr):
    images = [render("HELLO"), render("WORLD"), render("HELLO")]
    prompts = ['a sign that says "HELLO"', 'a sign that says "HELLO"', "a sign with no quoted text"]
    out = ocr(images, prompts)
    assert out.scores[0] >= 0.9
    assert out.scores[1] <= 0.5
    assert out.valid.tolist() == [True, True, False]


def test_ocr_metadata_target_and_multi_mode(ocr):
    out = ocr([render("CAT")], ["no quotes here"], [{"ocr_text": "CAT"}])
    assert out.valid.all() and out.scores[0] >= 0.9
    multi = build_reward("ocr", {"mode": "multi"})
    assert multi.engine is ocr.engine  # one engine per process
    out = multi([render("CAT DOG", size=(320, 96))], ['"CAT" and "DOG"'])
    assert out.scores[0] >= 0.9


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def test_clip_score_is_the_cosine(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from open_clip import factory

    factory._MODEL_CONFIGS["mrgrpo-tiny-clip"] = TINY_CLIP
    torch.manual_seed(0)
    model = open_clip.create_model("mrgrpo-tiny-clip", pretrained=None)
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    reward = build_reward("clip", {"model_name": "mrgrpo-tiny-clip", "pretrained": str(ckpt), "model_config": TINY_CLIP, "device": "cpu"})
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue", "white")]
    prompts = ["a red square", "a blue square " + "very " * 100, "white"]  # the second exceeds 77 tokens
    out = reward(images, prompts)
    # independent computation with the saved weights
    ref = open_clip.create_model("mrgrpo-tiny-clip", pretrained=None)
    ref.load_state_dict(torch.load(ckpt))
    ref.eval()
    _, _, preprocess = open_clip.create_model_and_transforms("mrgrpo-tiny-clip", pretrained=None)
    tok = open_clip.get_tokenizer("mrgrpo-tiny-clip")(prompts)
    assert tok.shape[1] == 77
    with torch.no_grad():
        fi = ref.encode_image(torch.stack([preprocess(im) for im in images]))
        ft = ref.encode_text(tok)
    cos = torch.nn.functional.cosine_similarity(fi, ft, dim=-1)
    torch.testing.assert_close(out.scores, cos, atol=1e-5, rtol=1e-5)


def test_plain_function_rewards_are_wrapped():
    def half_broken(images, prompts):
        return [0.3, None, float("nan")]

    r = as_reward(half_broken)
    out = r([Image.new("RGB", (4, 4))] * 3, ["a", "b", "c"])
    assert out.scores.tolist() == pytest.approx([0.3, 0.0, 0.0]) and out.valid.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        r([Image.new("RGB", (4, 4))] * 2, ["a"])
    assert isinstance(RewardOutput([1.0]).valid, torch.Tensor)
