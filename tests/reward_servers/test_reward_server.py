"""The real uvicorn reward server in a subprocess on loopback, and the remote client."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from mrgrpo.rewards.base import build_reward
from mrgrpo.rewards.remote import RemoteRequestError, encode_png


def render(text: str) -> Image.Image:
    im = Image.new("RGB", (256, 96), "white")
    ImageDraw.Draw(im).text((12, 20), text, fill="black", font=ImageFont.load_default(size=40))
    return im


def shade(level: int, size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), (level, level, level))


def test_remote_ocr_equals_in_process(server_factory):
    pytest.importorskip("rapidocr_onnxruntime")
    _, url = server_factory("ocr")
    images = [render("HELLO"), render("WORLD"), render("OPEN")]
    prompts = ['"HELLO"', '"HELLO"', "no quotes"]
    local = build_reward("ocr")(images, prompts)
    remote = build_reward("remote", {"urls": [url]})(images, prompts)
    assert remote.scores.tolist() == pytest.approx(local.scores.tolist(), abs=1e-6)
    assert remote.valid.tolist() == local.valid.tolist() == [True, True, False]
    assert remote.details["server"][0]["recognised"] == local.details["recognised"]  # per-image details come back too


def test_200_concurrent_requests_from_8_threads(server_factory):
    proc, url = server_factory("brightness", "--max-batch", "32")
    shades = list(range(0, 250, 5))

    def one(i: int):
        level = shades[i % len(shades)]
        body = {"images": [encode_png(shade(level))], "prompts": ["p"], "metadata": [{"group_id": i, "source": "s"}]}
        r = httpx.post(f"{url}/v1/score", json=body, timeout=60)
        return level, r.status_code, r.json()["scores"][0], r.json()["valid"][0]

    t = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    elapsed = time.perf_counter() - t
    print(f"\n200 concurrent requests from 8 threads: {elapsed:.2f} s")
    assert len(results) == 200
    for level, status, score, valid in results:
        assert status == 200 and valid and score == pytest.approx(level / 255.0, abs=2e-3)
    health = httpx.get(f"{url}/health").json()
    assert health["images_scored"] == 200 and health["largest_call"] <= 32 and health["calls"] <= 200


def test_max_batch_splits_requests_and_keeps_groups_whole(server_factory):
    _, url = server_factory("srv_toy_rewards:GroupRank", "--max-batch", "4")
    assert httpx.get(f"{url}/health").json()["needs_groups"] is True
    # 3 groups of 3, interleaved in the request: the server regroups them, never splits one, answers in request order
    reds = [10, 200, 90, 30, 100, 250, 20, 40, 60]
    gids = [0, 1, 2, 0, 1, 2, 0, 1, 2]
    images = [Image.new("RGB", (4, 4), (v, 0, 0)) for v in reds]
    body = {
        "images": [encode_png(im) for im in images],
        "prompts": ["p"] * 9,
        "metadata": [{"group_id": g} for g in gids],
    }
    out = httpx.post(f"{url}/v1/score", json=body, timeout=30).json()
    assert out["scores"] == pytest.approx([0.0, 1.0, 0.5, 1.0, 0.5, 1.0, 0.5, 0.0, 0.0])
    health = httpx.get(f"{url}/health").json()
    assert health["largest_call"] <= 4 and health["calls"] == 3  # one group per call: 3 + 3 > 4
    # the remote client keeps groups whole too, with a batch size that would otherwise cut them
    client = build_reward("remote", {"urls": url, "batch_size": 4, "needs_groups": True, "max_concurrency": 2})
    res = client(images, ["p"] * 9, [{"group_id": g} for g in gids])
    assert res.scores.tolist() == pytest.approx(out["scores"]) and res.valid.all()
    assert all(d["group_sizes"] == [3] for d in res.details["server"])
    auto = build_reward("remote", {"urls": url, "batch_size": 4})  # needs_groups read from /health
    assert (
        auto.needs_groups
        and auto(images, ["p"] * 9, [{"group_id": g} for g in gids]).scores.tolist() == res.scores.tolist()
    )
    assert not build_reward("remote", {"urls": url, "needs_groups": False}).needs_groups


def _b64(im: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_malformed_requests_get_4xx_and_server_keeps_serving(server_factory):
    _, url = server_factory("brightness", "--max-images", "4", "--max-pixels", "10000", "--max-body-mb", "0.5")
    ok = _b64(Image.new("RGB", (8, 8)), "PNG")
    png = base64.b64decode(_b64(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG"))
    truncated = base64.b64encode(png[: len(png) // 2]).decode()
    big_chunks = (b"x" * 65536 for _ in range(10))  # 640 kB streamed without a content-length
    cases = {
        "not json": (b"{not json", 400, "not valid JSON"),
        "json array": (b"[1, 2]", 400, "must be a JSON object"),
        "bad base64": ({"images": ["@@@"], "prompts": ["p"]}, 400, "not valid base64"),
        "not an image": ({"images": [base64.b64encode(b"hello").decode()], "prompts": ["p"]}, 400, "not a PNG or JPEG"),
        "truncated png": ({"images": [truncated], "prompts": ["p"]}, 400, "truncated"),
        "gif": ({"images": [_b64(Image.new("RGB", (8, 8)), "GIF")], "prompts": ["p"]}, 415, "send PNG or JPEG"),
        "length mismatch": ({"images": [ok, ok], "prompts": ["p"]}, 400, "length mismatch"),
        "metadata mismatch": ({"images": [ok], "prompts": ["p"], "metadata": [{}, {}]}, 400, "length mismatch"),
        "metadata not list": (
            {"images": [ok], "prompts": ["p"], "metadata": {"a": 1}},
            400,
            "`metadata` must be a list",
        ),
        "prompt not str": ({"images": [ok], "prompts": [3]}, 400, "must be strings"),
        "unknown field": ({"images": [ok], "prompts": ["p"], "pickle": "gASV"}, 400, "unknown field"),
        "no images": ({"images": [], "prompts": []}, 400, "no images"),
        "too many images": ({"images": [ok] * 5, "prompts": ["p"] * 5}, 413, "over the limit of 4"),
        "too many pixels": ({"images": [_b64(Image.new("RGB", (200, 200)), "PNG")], "prompts": ["p"]}, 413, "pixels"),
        "body too large": ({"images": [ok], "prompts": ["x" * 600_000]}, 413, "over the limit"),
        "chunked too large": (big_chunks, 413, "over the limit"),
        "missing field": ({"images": [ok]}, 400, "must be lists"),
    }
    for name, (body, status, needle) in cases.items():
        if isinstance(body, dict):
            r = httpx.post(f"{url}/v1/score", json=body)
        else:
            r = httpx.post(f"{url}/v1/score", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (name, r.status_code, r.text)
        assert needle in r.json()["detail"], (name, r.text)
        assert httpx.get(f"{url}/health").status_code == 200, name
    jpeg = _b64(Image.new("RGB", (8, 8), "white"), "JPEG")
    r = httpx.post(f"{url}/v1/score", json={"images": [ok, "data:image/jpeg;base64," + jpeg], "prompts": ["p", "q"]})
    assert (
        r.status_code == 200
        and r.json()["valid"] == [True, True]
        and r.json()["scores"][1] == pytest.approx(1.0, abs=0.01)
    )


def test_reward_errors_are_500_and_the_server_survives(server_factory):
    _, url = server_factory("srv_toy_rewards:explode")
    body = {"images": [encode_png(shade(0))], "prompts": ["boom"]}
    r = httpx.post(f"{url}/v1/score", json=body)
    assert r.status_code == 500 and "kaboom" in r.json()["detail"]
    assert httpx.post(f"{url}/v1/score", json=dict(body, prompts=["fine"])).json()["scores"] == [1.0]


def test_token_is_enforced(server_factory):
    _, url = server_factory("brightness", "--token", "s3cret")
    body = {"images": [encode_png(shade(255))], "prompts": ["p"]}
    assert httpx.post(f"{url}/v1/score", json=body).status_code == 401
    bad = httpx.post(f"{url}/v1/score", json=body, headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and "bearer token" in bad.json()["detail"]
    good = httpx.post(f"{url}/v1/score", json=body, headers={"Authorization": "Bearer s3cret"})
    assert good.status_code == 200 and good.json()["scores"][0] == pytest.approx(1.0, abs=1e-3)
    assert httpx.get(f"{url}/health").status_code == 200  # health needs no token
    client = build_reward("remote", {"urls": url, "token": "s3cret"})
    assert client([shade(0)], ["p"]).scores.tolist() == pytest.approx([0.0], abs=1e-3)
    with pytest.raises(RemoteRequestError, match="rejected the request \\(401\\)"):
        build_reward("remote", {"urls": url, "token": "nope"})([shade(0)], ["p"])


def test_remote_client_round_robin_and_dead_server(server_factory):
    from serverutil import free_port

    _, url = server_factory("brightness")
    dead = f"http://127.0.0.1:{free_port()}"
    client = build_reward("remote", {"urls": [dead, url], "max_retries": 2, "backoff": 0.01})
    out = client([shade(255)], ["p"])  # the dead URL fails, the retry goes to the live one
    assert out.valid.all() and out.details["failures"] == 0
    only_dead = build_reward("remote", {"urls": [dead], "max_retries": 1, "backoff": 0.01, "batch_size": 1})
    out = only_dead([shade(0)] * 2, ["p", "q"])
    assert (
        not out.valid.any() and out.details["failures"] == 2 and "failed after 2 attempts" in out.details["errors"][0]
    )
