"""The toy-world graders against hand-drawn images: right and wrong colour, shape, count, position, word."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from mrgrpo.rewards.base import build_reward
from mrgrpo.toy_world.grammar import COLORS

RED, BLUE, GREEN = COLORS["red"], COLORS["blue"], COLORS["green"]


def canvas(size: int = 32) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.new("RGB", (size, size), (255, 255, 255))
    return im, ImageDraw.Draw(im)


def circle(d, x, y, r, fill):
    d.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def square(d, x, y, r, fill):
    d.rectangle((x - r, y - r, x + r, y + r), fill=fill)


def triangle(d, x, y, r, fill):
    d.polygon([(x - r, y + r), (x + r, y + r), (x, y - r)], fill=fill)


def grade(name: str, image: Image.Image, prompt: str) -> tuple[float, bool]:
    out = build_reward(name)([image], [prompt])
    return float(out.scores[0]), bool(out.valid[0])


@pytest.fixture
def red_circle():
    im, d = canvas()
    circle(d, 16, 16, 7, RED)
    return im


def test_colour_right_and_wrong(red_circle):
    assert grade("toy_color_strict", red_circle, "a red circle") == (1.0, True)
    assert grade("toy_color_strict", red_circle, "a blue circle") == (0.0, True)
    soft_right, _ = grade("toy_color", red_circle, "a red circle")
    soft_wrong, _ = grade("toy_color", red_circle, "a green circle")
    assert soft_right == pytest.approx(1.0) and soft_wrong == pytest.approx(0.0)


def test_colour_tolerates_slightly_off_pixels():
    im, d = canvas()
    circle(d, 16, 16, 7, (200, 50, 40))  # not the palette red, but nearest to it
    assert grade("toy_color_strict", im, "a red circle")[0] == 1.0


@pytest.mark.parametrize("draw,shape", [(circle, "circle"), (square, "square"), (triangle, "triangle")])
def test_shape_right_and_wrong(draw, shape):
    im, d = canvas()
    draw(d, 15, 16, 8, BLUE)
    for other in ("circle", "square", "triangle"):
        score, valid = grade("toy_shape_strict", im, f"a blue {other}")
        assert valid and score == float(other == shape), (shape, other)
    soft_right = grade("toy_shape", im, f"a blue {shape}")[0]
    soft_wrong = max(grade("toy_shape", im, f"a blue {o}")[0] for o in ("circle", "square", "triangle") if o != shape)
    assert soft_right > 0.9 and soft_right > soft_wrong + 0.1


@pytest.mark.parametrize("draw,shape", [(circle, "circle"), (square, "square"), (triangle, "triangle")])
def test_shape_margin_is_above_half_only_for_the_drawn_shape(draw, shape):
    im, d = canvas()
    draw(d, 15, 16, 8, BLUE)
    for other in ("circle", "square", "triangle"):
        score, valid = grade("toy_shape_margin", im, f"a blue {other}")
        assert valid and (score > 0.5) == (other == shape), (shape, other, score)
    # the plain soft IoU scores a square drawn for "a circle" high (pi/4); the margin scores it low
    im, d = canvas()
    square(d, 15, 16, 8, BLUE)
    assert grade("toy_shape", im, "a blue circle")[0] > 0.7
    assert grade("toy_shape_margin", im, "a blue circle")[0] < 0.45


def test_shape_rejects_a_fragmented_blob():
    im, d = canvas()
    for x in range(8, 24, 4):  # stripes: neither a square nor a circle
        d.rectangle((x, 8, x + 1, 24), fill=RED)
    assert grade("toy_shape_strict", im, "a red square")[0] == 0.0
    assert grade("toy_geneval", im, "a red square")[0] == 0.0


def test_count_by_connected_components():
    im, d = canvas()
    square(d, 8, 8, 4, GREEN)
    square(d, 24, 24, 4, GREEN)
    assert grade("toy_count_strict", im, "two green squares") == (1.0, True)
    assert grade("toy_count_strict", im, "three green squares") == (0.0, True)
    assert grade("toy_geneval", im, "two green squares")[0] == 1.0
    assert grade("toy_geneval", im, "two green circles")[0] == 0.0
    assert grade("toy_count", im, "three green squares")[0] == pytest.approx(2 / 3)
    square(d, 24, 8, 4, GREEN)
    assert grade("toy_count_strict", im, "three green squares")[0] == 1.0
    # touching objects are one component
    im2, d2 = canvas()
    square(d2, 10, 16, 5, GREEN)
    square(d2, 20, 16, 5, GREEN)
    assert grade("toy_count_strict", im2, "two green squares")[0] == 0.0


def test_count_ignores_specks():
    im, d = canvas()
    square(d, 12, 12, 5, GREEN)
    im.putpixel((28, 28), GREEN)
    assert grade("toy_count_strict", im, "one green square")[0] == 1.0


def test_position_left_of_and_above():
    im, d = canvas()
    circle(d, 7, 16, 5, RED)
    square(d, 25, 16, 5, BLUE)
    assert grade("toy_position_strict", im, "a red circle left of a blue square") == (1.0, True)
    assert grade("toy_position_strict", im, "a blue square left of a red circle") == (0.0, True)
    assert grade("toy_position_strict", im, "a red circle above a blue square") == (0.0, True)
    assert grade("toy_geneval", im, "a red circle left of a blue square")[0] == 1.0
    assert grade("toy_geneval", im, "a red square left of a blue square")[0] == 0.0  # wrong shape of A
    im2, d2 = canvas()
    circle(d2, 16, 6, 5, RED)
    square(d2, 16, 25, 5, BLUE)
    assert grade("toy_position_strict", im2, "a red circle above a blue square")[0] == 1.0
    assert grade("toy_position_strict", im2, "a blue square above a red circle")[0] == 0.0


def test_grader_that_does_not_apply_is_invalid(red_circle):
    assert grade("toy_position", red_circle, "a red circle")[1] is False
    assert grade("toy_color", red_circle, "a photo of a cat")[1] is False


def test_empty_image_fails_every_clause():
    im, _ = canvas()
    for name in ("toy_color_strict", "toy_shape_strict", "toy_count_strict", "toy_geneval"):
        assert grade(name, im, "a red circle") == (0.0, True), name


def test_word_through_ocr():
    pytest.importorskip("rapidocr_onnxruntime")
    from mrgrpo.sft_data.synth import _font

    im, d = canvas()
    d.text((6, 10), "cat", fill=(0, 0, 0), font=_font(10))  # 13 x 8 px of text
    assert grade("toy_word_strict", im, 'the word "cat"') == (1.0, True)
    assert grade("toy_word_strict", im, 'the word "dog"') == (0.0, True)
    assert grade("toy_word", red_circle_image(), 'the word "cat"')[0] < 0.5


def red_circle_image() -> Image.Image:
    im, d = canvas()
    circle(d, 16, 16, 7, RED)
    return im
