"""SFT images: decoding from a path or bytes, EXIF orientation, the reason an image is skipped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sft_util import BUDGET, img, png_bytes

from mrgrpo.imaging import FITTED_KEY
from mrgrpo.sft_data.images import failure_reason, fit_to_budget, open_image


def test_path_and_bytes_decode_alike_at_the_budget(tmp_path):
    src = img(60, 40, 3)
    src.save(tmp_path / "a.png")
    a = open_image(str(tmp_path / "a.png"), BUDGET, 32)
    b = open_image(png_bytes(src), BUDGET, 32)
    assert a.mode == "RGB" and a.size == fit_to_budget(60, 40, BUDGET) == (96, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.info[FITTED_KEY] == (BUDGET, 32)  # a policy will not size it a second time


def test_exif_orientation_is_applied_before_sizing():
    src = Image.new("RGB", (60, 40), (255, 0, 0))
    src.paste((0, 0, 255), (0, 0, 30, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise (portrait)
    buf = io.BytesIO()
    src.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    out = open_image(buf.getvalue(), BUDGET, 32)
    assert out.size == fit_to_budget(40, 60, BUDGET) == (64, 96)  # sized as displayed
    top, bottom = np.asarray(out)[5, 32], np.asarray(out)[90, 32]
    assert top[2] > 200 > top[0] and bottom[0] > 200 > bottom[2]  # the blue half is now on top


def test_failure_reasons(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        open_image(str(tmp_path / "nope.png"), BUDGET, 32)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(Exception) as corrupt:
        open_image(str(tmp_path / "bad.png"), BUDGET, 32)
    assert failure_reason(missing.value) == "missing" and failure_reason(corrupt.value) == "corrupt"
    assert failure_reason(NotADirectoryError()) == "missing"
