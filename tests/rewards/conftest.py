import pytest
from PIL import Image, ImageDraw, ImageFont


def _render(text: str, size=(256, 96), font_size=40) -> Image.Image:
    """Black text on white, drawn with Pillow's bundled scalable font."""
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text(
        (12, (size[1] - font_size) // 2 - 4), text, fill="black", font=ImageFont.load_default(size=font_size)
    )
    return im


@pytest.fixture(scope="session")
def render():
    return _render


@pytest.fixture(scope="session")
def ocr():
    """The real RapidOCR-backed reward, built once per session (the engine is shared by every OCRReward)."""
    pytest.importorskip("rapidocr_onnxruntime")
    from mrgrpo.rewards.base import build_reward

    return build_reward("ocr")
