"""The reward server under careless and hostile clients, against real `mrgrpo serve` processes.

Two servers are shared by the module (starting one costs seconds): `probe` (a toy reward reporting
the mean RGB it was given, with a token and a 1.5 s read timeout, other limits at their defaults)
and `color_match` (no token).
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from serverutil import launch, wait_ready

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def servers():
    started = [
        launch("srv_toy_rewards:Probe", "--token", TOKEN, "--read-timeout", "1.5", "--max-batch", "64"),
        launch("color_match"),
    ]
    try:
        for proc, url in started:
            wait_ready(proc, url)
        yield {"probe": started[0], "color": started[1]}
    finally:
        for proc, _ in started:
            proc.kill()
            proc.wait(timeout=10)


def b64(im: Image.Image, fmt: str = "PNG", **kw) -> str:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return base64.b64encode(buf.getvalue()).decode()


def post(url: str, body, **kw) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.post(
            f"{url}/v1/score", content=body, headers={**AUTH, "content-type": "application/json"}, timeout=60, **kw
        )
    return httpx.post(f"{url}/v1/score", json=body, headers=AUTH, timeout=60, **kw)


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ok_image() -> str:
    return b64(Image.new("RGB", (8, 8), (10, 20, 30)))


def test_every_malformed_body_is_400(servers):
    proc, url = servers["probe"]
    ok = ok_image()
    big_int = "9" * 5000
    nested_meta = '{"images": ["%s"], "prompts": ["p"], "metadata": [{"a": %s1%s}]}' % (ok, "[" * 5000, "]" * 5000)
    cases = {
        "deep arrays": ("[" * 100_000, 400),
        "deep metadata": (nested_meta, 400),
        "huge int in images": ('{"images": [%s], "prompts": ["p"]}' % big_int, 400),
        "huge int in metadata": ('{"images": ["%s"], "prompts": ["p"], "metadata": [{"x": %s}]}' % (ok, big_int), 400),
        "NaN": ('{"images": ["%s"], "prompts": ["p"], "metadata": [{"x": NaN}]}' % ok, 400),
        "invalid utf-8": (b'{"images": ["\xff\xfe"], "prompts": ["p"]}', 400),
        "list group_id": ({"images": [ok], "prompts": ["p"], "metadata": [{"group_id": [1]}]}, 400),
        "too many values": ("[" + "0," * 1_000_001 + "0]", 413),
        "empty body": (b"", 400),
    }
    for name, (body, status) in cases.items():
        r = post(url, body)
        assert r.status_code == status, (name, r.status_code, r.text[:200])
        assert r.json()["detail"], name
    # a lone surrogate in a prompt is valid JSON and must come back as valid JSON
    r = post(url, '{"images": ["%s"], "prompts": ["\\ud800"]}' % ok)
    assert r.status_code == 200 and r.json()["valid"] == [True]
    log = "".join(proc.log)
    assert "Traceback" not in log, log[-3000:]


def _solid_png(size: int, level: int) -> str:
    return b64(Image.new("RGB", (size, size), (level, level, level)), compress_level=1)


def test_health_answers_while_the_largest_request_is_decoded(servers):
    _, url = servers["probe"]
    limit = httpx.get(f"{url}/health").json()["max_request_pixels"]
    n = limit // (4096 * 4096)  # as many 4096x4096 images as the default request budget allows (4)
    body = {"images": [_solid_png(4096, 40 * k) for k in range(n)], "prompts": ["p"] * n}
    result = {}

    def send():
        t = time.perf_counter()
        result["r"] = post(url, body)
        result["s"] = time.perf_counter() - t

    worker = threading.Thread(target=send)
    worker.start()
    probes = []
    time.sleep(0.05)
    with httpx.Client(timeout=10) as client:
        while worker.is_alive():
            t = time.perf_counter()
            assert client.get(f"{url}/health").status_code == 200
            probes.append(time.perf_counter() - t)
            time.sleep(0.05)
    worker.join()
    r = result["r"]
    assert r.status_code == 200, r.text[:300]
    assert r.json()["scores"] == pytest.approx([40 * k / 255 for k in range(n)], abs=1e-3)
    print(
        f"\nrequest of {n} x 4096x4096 took {result['s']:.2f} s; {len(probes)} /health probes, "
        f"slowest {max(probes):.3f} s"
    )
    assert len(probes) >= 3
    assert max(probes) < 0.5


def test_pixel_budget_is_checked_from_headers_before_decoding(servers):
    _, url = servers["probe"]
    limit = httpx.get(f"{url}/health").json()["max_request_pixels"]

    def header_only_png(w: int, h: int) -> str:
        # a PNG whose header promises w x h pixels but whose data is cut off: decoding it would fail (400)
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
        return base64.b64encode(raw).decode()

    n = limit // (4096 * 4096) + 1
    r = post(url, {"images": [header_only_png(4096, 4096)] * n, "prompts": ["p"] * n})
    assert r.status_code == 413 and "per request" in r.json()["detail"]
    r = post(url, {"images": [header_only_png(4096, 4096)], "prompts": ["p"]})  # within the budget: decoded, truncated
    assert r.status_code == 400 and "truncated" in r.json()["detail"]
    r = post(url, {"images": [header_only_png(5000, 5000)], "prompts": ["p"]})
    assert r.status_code == 413 and "per image" in r.json()["detail"]


def test_a_failing_request_does_not_fail_the_requests_merged_with_it(servers):
    _, url = servers["probe"]
    before = httpx.get(f"{url}/health").json()["rescored_batches"]
    img = ok_image()
    with ThreadPoolExecutor(6) as pool:
        slow = pool.submit(post, url, {"images": [img], "prompts": ["slow:1.5"]})  # keeps the worker busy
        time.sleep(0.5)
        prompts = ["a", "b", "boom", "c", "d"]
        rest = [pool.submit(post, url, {"images": [img], "prompts": [p]}) for p in prompts]
        answers = dict(zip(prompts, [f.result() for f in rest]))
        assert slow.result().status_code == 200
    assert answers["boom"].status_code == 500 and "kaboom" in answers["boom"].json()["detail"]
    for p in "abcd":
        assert answers[p].status_code == 200 and answers[p].json()["valid"] == [True], (p, answers[p].text)
    assert httpx.get(f"{url}/health").json()["rescored_batches"] > before  # they really were merged


def test_bad_metadata_marks_the_image_invalid(servers):
    _, url = servers["color"]
    red = b64(Image.new("RGB", (8, 8), (255, 0, 0)))
    metadata = [{"color": ["red"]}, {"color": 3}, {"color": "RED"}, {"color": {"a": 1}}, {}]
    body = {"images": [red] * 5, "prompts": ["a red square"] * 5, "metadata": metadata}
    r = httpx.post(f"{url}/v1/score", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["valid"] == [False, False, True, False, True]
    assert out["scores"][2] == pytest.approx(1.0) and out["scores"][4] == pytest.approx(1.0)
    assert "not one of the known colour words" in out["details"]["invalid_reason"][0]


def _mpo() -> bytes:
    frames = [Image.new("RGB", (16, 16), (200, 200, 200)), Image.new("RGB", (16, 16), (0, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="MPO", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _sixteen_bit_rgb_png(level16: int) -> bytes:
    w = h = 4
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    row = b"\x00" + struct.pack(">HHH", level16, level16, level16) * w
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * h)) + chunk(b"IEND", b"")


def test_every_image_mode_is_converted_correctly(servers):
    _, url = servers["probe"]
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    cases = {  # name: (base64 image, expected mean RGB)
        "I;16 mid-grey": (b64(Image.new("I;16", (8, 8), 32896)), (128, 128, 128)),
        "I;16 white": (b64(Image.new("I;16", (8, 8), 65535)), (255, 255, 255)),
        "16-bit RGB": (base64.b64encode(_sixteen_bit_rgb_png(0x8080)).decode(), (128, 128, 128)),
        "1": (b64(Image.new("1", (8, 8), 1)), (255, 255, 255)),
        "L": (b64(Image.new("L", (8, 8), 77)), (77, 77, 77)),
        "LA transparent": (b64(Image.new("LA", (8, 8), (0, 0))), (255, 255, 255)),
        "LA half": (b64(Image.new("LA", (8, 8), (0, 128))), (127, 127, 127)),
        "RGBA opaque": (b64(Image.new("RGBA", (8, 8), (10, 20, 30, 255))), (10, 20, 30)),
        "RGBA transparent": (b64(Image.new("RGBA", (8, 8), (10, 20, 30, 0))), (255, 255, 255)),
        "P": (b64(pal), (10, 200, 30)),
        "P transparent index": (b64(pal, transparency=1), (255, 255, 255)),
        "RGB tRNS": (b64(Image.new("RGB", (8, 8), (1, 2, 3)), transparency=(1, 2, 3)), (255, 255, 255)),
        "CMYK JPEG": (b64(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100), (255, 0, 0)),
        "L JPEG": (b64(Image.new("L", (8, 8), 100), "JPEG", quality=100), (100, 100, 100)),
        "MPO (phone JPEG)": (base64.b64encode(_mpo()).decode(), (200, 200, 200)),
    }
    names = list(cases)
    r = post(url, {"images": [cases[k][0] for k in names], "prompts": ["p"] * len(names)})
    assert r.status_code == 200, r.text[:300]
    out = r.json()
    for name, mean in zip(names, out["details"]["mean_rgb"]):
        assert mean == pytest.approx(cases[name][1], abs=2.5), name
    assert all(out["valid"])
    assert out["scores"][0] == pytest.approx(128 / 255, abs=0.01)  # was 1.0 (clipped to white) before


def test_modes_pil_cannot_get_from_png_or_jpeg_are_refused_or_converted():
    from mrgrpo.reward_servers.images import ImageError, to_rgb

    assert np.asarray(to_rgb(Image.new("I", (2, 2), 65535))).tolist() == [[[255] * 3] * 2] * 2
    assert np.asarray(to_rgb(Image.new("YCbCr", (2, 2), (128, 128, 128)))).mean() == pytest.approx(128, abs=1)
    pa = Image.new("PA", (2, 2))
    pa.putpalette([9, 9, 9] * 256)
    pa.putdata([(0, 0)] * 4)
    assert np.asarray(to_rgb(pa)).tolist() == [[[255] * 3] * 2] * 2
    for mode in ("F", "LAB", "HSV"):
        with pytest.raises(ImageError, match="not supported") as err:
            to_rgb(Image.new(mode, (2, 2)))
        assert err.value.status == 415


def test_the_server_keeps_no_batch_alive_between_requests(servers):
    _, url = servers["probe"]
    big = [_solid_png(1024, 9)] * 8
    assert post(url, {"images": big, "prompts": ["p"] * 8}).status_code == 200
    time.sleep(0.3)
    out = post(url, {"images": [ok_image()], "prompts": ["p"]}).json()
    assert out["details"]["alive_before"] == 0


def test_slow_and_half_sent_requests_are_closed(servers):
    proc, url = servers["probe"]
    host, port = url.rsplit("/", 1)[-1].split(":")
    socks = []
    partial = [
        b"POST /v1/score HTT",  # half a request line
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Le",  # half the headers
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b'\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"images": [',
    ]  # half a body
    for data in partial * 3:
        s = socket.create_connection((host, int(port)))
        s.sendall(data)
        s.settimeout(8)
        socks.append(s)
    t = time.perf_counter()
    for s in socks:
        try:
            while s.recv(4096):  # a 4xx may come first; then the server closes
                pass
        except ConnectionResetError:
            pass
        s.close()
    elapsed = time.perf_counter() - t
    assert elapsed < 6, elapsed  # closed after the 1.5 s read timeout, not left open
    assert httpx.get(f"{url}/health").status_code == 200
    time.sleep(0.3)
    lines = [line for line in proc.log if "read timeout" in line]
    assert len(lines) >= len(socks), proc.log[-20:]
    assert "Traceback" not in "".join(proc.log)


def test_client_hanging_up_mid_body_logs_one_line(servers):
    proc, url = servers["probe"]
    host, port = url.rsplit("/", 1)[-1].split(":")
    before = len(proc.log)
    s = socket.create_connection((host, int(port)))
    s.sendall(
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Length: 100000\r\n\r\n"
        + b"x" * 5000
    )
    time.sleep(0.3)
    s.close()
    deadline = time.time() + 5
    while time.time() < deadline and not any("disconnected" in line for line in proc.log[before:]):
        time.sleep(0.1)
    new = proc.log[before:]
    assert sum("disconnected before sending its whole body" in line for line in new) == 1, new
    assert "Traceback" not in "".join(new)


def test_docs_pages_are_off_with_a_token_and_on_without(servers):
    _, url = servers["probe"]
    _, open_url = servers["color"]
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{url}{path}", headers=AUTH).status_code == 404, path
        assert httpx.get(f"{open_url}{path}").status_code == 200, path


def test_non_loopback_address_needs_a_token_or_insecure():
    from mrgrpo.reward_servers import cli as serve_cli

    cmd = [sys.executable, "-m", "mrgrpo.cli", "serve", "brightness", "--host", "0.0.0.0", "--port", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--insecure" in run.stderr and "Traceback" not in run.stderr

    import argparse

    def parse(*argv):
        p = argparse.ArgumentParser()
        serve_cli.add_arguments(p)
        return p.parse_args(list(argv))

    assert serve_cli.run(parse("brightness", "--host", "10.1.2.3", "--insecure", "--dry-run")) == 0
    assert serve_cli.run(parse("brightness", "--host", "10.1.2.3", "--token", "x", "--dry-run")) == 0
    assert serve_cli.run(parse("brightness", "--host", "::1", "--dry-run")) == 0
    assert serve_cli.run(parse("brightness", "--host", "myhost", "--dry-run")) == 2
