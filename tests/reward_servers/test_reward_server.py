"""The real uvicorn reward server in a subprocess, and the remote client."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from mrgrpo.rewards.base import build_reward
from mrgrpo.rewards.remote import encode_png


def render(text: str) -> Image.Image:
    im = Image.new("RGB", (256, 96), "white")
    ImageDraw.Draw(im).text((12, 20), text, fill="black", font=ImageFont.load_default(size=40))
    return im


def test_remote_ocr_equals_in_process(server_factory):
    pytest.importorskip("rapidocr_onnxruntime")
    _, url = server_factory("ocr")
    images = [render("HELLO"), render("WORLD"), render("OPEN")]
    prompts = ['"HELLO"', '"HELLO"', "no quotes"]
    local = build_reward("ocr")(images, prompts)
    remote = build_reward("remote", {"urls": [url]})(images, prompts)
    assert remote.scores.tolist() == pytest.approx(local.scores.tolist(), abs=1e-6)
    assert remote.valid.tolist() == local.valid.tolist() == [True, True, False]


def test_200_concurrent_requests_from_8_threads(server_factory):
    proc, url = server_factory("brightness", "--max-batch", "32")
    shades = list(range(0, 250, 5))

    def one(i: int):
        level = shades[i % len(shades)]
        body = {"images": [encode_png(Image.new("RGB", (8, 8), (level, level, level)))], "prompts": ["p"]}
        r = httpx.post(f"{url}/v1/score", json=body, timeout=60)
        return level, r.status_code, r.json()["scores"][0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert len(results) == 200
    for level, status, score in results:
        assert status == 200 and score == pytest.approx(level / 255.0, abs=2e-3)


def _b64(im: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_malformed_requests_get_4xx_and_server_keeps_serving(server_factory):
    _, url = server_factory("brightness", "--max-images", "4", "--max-pixels", "10000", "--max-body-mb", "0.5")
    ok = _b64(Image.new("RGB", (8, 8)), "PNG")
    cases = {
        "not json": (b"{not json", 400, "not valid JSON"),
        "bad base64": ({"images": ["@@@"], "prompts": ["p"]}, 400, "not valid base64"),
        "not an image": ({"images": [base64.b64encode(b"hello").decode()], "prompts": ["p"]}, 400, "not a PNG or JPEG"),
        "gif": ({"images": [_b64(Image.new("RGB", (8, 8)), "GIF")], "prompts": ["p"]}, 400, "send PNG or JPEG"),
        "length mismatch": ({"images": [ok, ok], "prompts": ["p"]}, 400, "length mismatch"),
        "too many images": ({"images": [ok] * 5, "prompts": ["p"] * 5}, 413, "over the limit of 4"),
        "too many pixels": ({"images": [_b64(Image.new("RGB", (200, 200)), "PNG")], "prompts": ["p"]}, 413, "pixels"),
        "body too large": ({"images": [ok], "prompts": ["x" * 600_000]}, 413, "bytes is over the limit"),
        "missing field": ({"images": [ok]}, 400, "must be lists"),
    }
    for name, (body, status, needle) in cases.items():
        if isinstance(body, bytes):
            r = httpx.post(f"{url}/v1/score", content=body, headers={"content-type": "application/json"})
        else:
            r = httpx.post(f"{url}/v1/score", json=body)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert needle in r.json()["detail"], (name, r.text)
        assert httpx.get(f"{url}/health").status_code == 200
    r = httpx.post(f"{url}/v1/score", json={"images": [ok], "prompts": ["p"]})
    assert r.status_code == 200 and r.json()["valid"] == [True]


def test_token_is_enforced(server_factory):
    _, url = server_factory("brightness", "--token", "s3cret")
    body = {"images": [encode_png(Image.new("RGB", (8, 8), "white"))], "prompts": ["p"]}
    assert httpx.post(f"{url}/v1/score", json=body).status_code == 401
    assert httpx.post(f"{url}/v1/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    good = httpx.post(f"{url}/v1/score", json=body, headers={"Authorization": "Bearer s3cret"})
    assert good.status_code == 200 and good.json()["scores"][0] == pytest.approx(1.0, abs=1e-3)
    client = build_reward("remote", {"urls": url, "token": "s3cret"})
    assert client([Image.new("RGB", (8, 8), "black")], ["p"]).scores.tolist() == pytest.approx([0.0], abs=1e-3)


def test_remote_client_round_robin_and_dead_server(server_factory):
    from serverutil import free_port

    _, url = server_factory("brightness")
    dead = f"http://127.0.0.1:{free_port()}"
    client = build_reward("remote", {"urls": [dead, url], "max_retries": 2, "backoff": 0.01})
    out = client([Image.new("RGB", (8, 8), "white")], ["p"])  # the dead URL fails, the retry goes to the live one
    assert out.valid.all() and out.details["failures"] == 0
    only_dead = build_reward("remote", {"urls": [dead], "max_retries": 1, "backoff": 0.01})
    out = only_dead([Image.new("RGB", (8, 8))] * 2, ["p", "q"])
    assert not out.valid.any() and out.details["failures"] == 2 and "failed after 2 attempts" in out.details["errors"][0]


def test_vllm_command_line(capsys):
    from mrgrpo.cli import main
    from mrgrpo.reward_servers.vllm import build_vllm_command

    cmd = build_vllm_command("CodeGoat24/UnifiedReward-Think-qwen3vl-8b", port=8001, tensor_parallel=2, data_parallel=4)
    assert cmd[:3] == ["vllm", "serve", "CodeGoat24/UnifiedReward-Think-qwen3vl-8b"]
    joined = " ".join(cmd)
    for part in ("--port 8001", "--tensor-parallel-size 2", "--data-parallel-size 4", '--limit-mm-per-prompt {"image": 2}',
                 "--enable-prefix-caching", "--served-model-name UnifiedReward-Think-qwen3vl-8b", "--host 127.0.0.1"):
        assert part in joined, part
    assert main(["serve", "unifiedreward-think", "--model", "/models/judge", "--tp", "2", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("vllm serve /models/judge") and "--tensor-parallel-size 2" in printed
