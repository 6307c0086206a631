"""The remote reward client against a fake server that misbehaves: never a crash, never a silent 0."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from mrgrpo.rewards.remote import RemoteReward, check_answer


class FakeServer:
    """Answers /v1/score as `mode` says: ok, garbage, html, wrong_count, nan, inf, strings, list, hang,
    trickle, bad_valid."""

    def __init__(self, mode: str = "ok", health: dict | None = None):
        self.mode, self.health, self.sizes = mode, health or {"needs_groups": False}, []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                self._send(200, json.dumps(server.health).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                n = len(body["images"])
                server.sizes.append(n)
                mode = server.mode
                scores = [0.25 + 0.5 * (k % 2) for k in range(n)]
                if mode == "hang":
                    server.stop.wait(30)
                    return
                if mode == "trickle":
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", "1000000")
                    self.end_headers()
                    while not server.stop.is_set():
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.1)
                    return
                answers = {
                    "ok": {"scores": scores, "valid": [True] * n},
                    "wrong_count": {"scores": scores[:-1], "valid": [True] * (n - 1)},
                    "strings": {"scores": ["high"] * n, "valid": [True] * n},
                    "list": scores,
                    "bad_valid": {"scores": scores, "valid": "yes"},
                }
                if mode in answers:
                    return self._send(200, json.dumps(answers[mode]).encode())
                if mode in ("nan", "inf"):  # Python's json writes NaN / Infinity literals
                    bad = float("nan") if mode == "nan" else float("inf")
                    answer = {"scores": [scores[0], bad] + scores[2:], "valid": [True] * n}
                    return self._send(200, json.dumps(answer).encode())
                if mode == "html":
                    return self._send(200, b"<html>proxy error</html>")
                self._send(200, b"\x00\xff garbage")

            def _send(self, status, data):
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    servers = []

    def make(mode="ok", **kw):
        s = FakeServer(mode, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def images(n, size=8):
    return [Image.new("RGB", (size, size), (k * 20, 0, 0)) for k in range(n)]


@pytest.mark.parametrize("mode", ["garbage", "html", "wrong_count", "strings", "list", "bad_valid"])
def test_a_bad_answer_marks_the_chunk_invalid_and_is_logged(fake, mode, caplog):
    server = fake(mode)
    client = RemoteReward(server.url, max_retries=1, backoff=0.01, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="mrgrpo.rewards.remote"):
        out = client(images(3), ["p"] * 3)
    assert not out.valid.any() and out.scores.tolist() == [0.0, 0.0, 0.0]
    assert out.details["failures"] == 3 and len(out.details["errors"]) == 2  # two chunks, both failed after retries
    assert "failed after 2 attempts" in out.details["errors"][0]
    assert any("invalid (masked)" in r.message for r in caplog.records)
    assert server.sizes == [2, 1, 2, 1] or sorted(server.sizes) == [1, 1, 2, 2]  # each chunk tried twice


@pytest.mark.parametrize("mode", ["nan", "inf"])
def test_a_non_finite_score_makes_only_that_image_invalid(fake, mode, caplog):
    server = fake(mode)
    client = RemoteReward(server.url, max_retries=0)
    with caplog.at_level(logging.WARNING, logger="mrgrpo.rewards.remote"):
        out = client(images(4), ["p"] * 4)
    assert out.valid.tolist() == [True, False, True, True]
    assert out.scores.tolist() == pytest.approx([0.25, 0.0, 0.25, 0.75])
    assert out.details["failures"] == 1 and "non-finite" in out.details["errors"][0]
    assert any("non-finite" in r.message for r in caplog.records)


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_a_hanging_server_is_cut_off_after_the_timeout(fake, mode):
    server = fake(mode)
    client = RemoteReward(server.url, timeout=1.0, max_retries=0)
    t = time.perf_counter()
    out = client(images(2), ["p"] * 2)
    elapsed = time.perf_counter() - t
    assert not out.valid.any() and out.details["failures"] == 2
    assert elapsed < 5, elapsed


def test_a_misbehaving_server_is_skipped_for_a_good_one(fake):
    bad, good = fake("garbage"), fake("ok")
    client = RemoteReward([bad.url, good.url], max_retries=2, backoff=0.01)
    out = client(images(2), ["p"] * 2)
    assert out.valid.all() and out.scores.tolist() == pytest.approx([0.25, 0.75]) and out.details["failures"] == 0


def test_requests_respect_the_server_pixel_budget(fake):
    server = fake("ok", health={"needs_groups": False, "max_request_pixels": 250, "max_images": 64})
    client = RemoteReward(server.url, batch_size=64)
    out = client(images(5, size=10), ["p"] * 5)  # 100 pixels each: at most 2 per request
    assert out.valid.all() and sorted(server.sizes) == [1, 2, 2]
    grouped = fake("ok", health={"needs_groups": True, "max_request_pixels": 250})
    client = RemoteReward(grouped.url, batch_size=64)
    meta = [{"group_id": g} for g in (0, 0, 1, 1, 2)]
    assert client(images(5, size=10), ["p"] * 5, meta).valid.all()
    assert grouped.sizes == [2, 2, 1]  # whole groups, two groups would be 400 pixels


def test_check_answer_rejects_what_the_protocol_does_not_allow():
    from mrgrpo.rewards.remote import BadAnswer

    assert check_answer({"scores": [1, 0.5], "valid": [True, False]}, 2)[:2] == ([1.0, 0.0], [True, False])
    assert check_answer({"scores": [10**400]}, 1)[1] == [False]  # too big for a float: invalid, not a crash
    for bad in ([1.0], {"scores": [True]}, {"scores": [1.0], "valid": [1]}, {"scores": None}, {"scores": [1.0, 2.0]}):
        with pytest.raises(BadAnswer):
            check_answer(bad, 1)
