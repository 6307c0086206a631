"""UnifiedReward-Think client against a small local OpenAI-compatible server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from mrgrpo.rewards.unified_reward import (DEEPGEN_TEMPLATE, UnifiedRewardPoint, UnifiedRewardThink, pairwise_win_rates,
                                           parse_pairwise, parse_point)


class FakeJudge:
    """Prefers the brighter image; answers 503 to the first `fail_first` requests; garbles some answers."""

    def __init__(self, fail_first=0, garble=False, point=False):
        self.fail_first, self.garble, self.point = fail_first, garble, point
        self.requests, self.prompts = 0, []
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self._send(200, {"data": [{"id": "judge-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with judge.lock:
                    judge.requests += 1
                    n = judge.requests
                if n <= judge.fail_first:
                    return self._send(503, {"error": "overloaded"})
                content = body["messages"][0]["content"]
                judge.prompts.append(content[-1]["text"])
                levels = [int(c["image_url"]["url"].__len__()) for c in content if c["type"] == "image_url"]
                text = judge.answer(content)
                self._send(200, {"choices": [{"message": {"content": text}}], "model": body["model"], "levels": levels})

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, content):
        import base64
        import io

        def level(c):
            raw = base64.b64decode(c["image_url"]["url"].split(",", 1)[1])
            return Image.open(io.BytesIO(raw)).convert("L").getpixel((0, 0))

        imgs = [level(c) for c in content if c["type"] == "image_url"]
        if self.point:
            return f"<think>fine</think><answer>Final Score: {1 + round(imgs[0] / 255 * 4)}</answer>"
        if self.garble and 100 in imgs:
            return "<think>hmm</think><answer>I cannot decide</answer>"
        winner = 1 if imgs[0] > imgs[1] else 2
        return f"<think>1. Semantic: ...</think>\n<answer>Image {winner} is better</answer>"

    def close(self):
        self.server.shutdown()


def gray(level):
    return Image.new("RGB", (8, 8), (level, level, level))


def test_parsers_and_arithmetic():
    assert parse_pairwise("<think>..</think><answer>Image 2 is better</answer>") == 2
    assert parse_pairwise("<answer>image 1 is better.</answer>") == 1
    assert parse_pairwise("<answer>both are fine</answer>") is None
    assert parse_point("<answer>Final Score: 4</answer>") == 4.0 and parse_point("no score") is None
    rates, failed = pairwise_win_rates(3, {(0, 1): 1.0, (0, 2): 1.0, (1, 2): None})
    assert rates == [1.0, 0.25, 0.25] and failed == 1
    assert sum(rates) / 3 == pytest.approx(0.5)


def test_group_win_rates_and_template():
    judge = FakeJudge()
    try:
        r = UnifiedRewardThink(base_url=judge.url, template="deepgen", backoff=0.01)
        levels = [10, 200, 100, 50, 250, 0]
        meta = [{"group_id": 0}] * 3 + [{"group_id": 1}] * 3
        out = r([gray(v) for v in levels], ["p"] * 3 + ["q"] * 3, meta)
        # group 0: 200 > 100 > 10 -> wins 2, 1, 0 of 2; group 1: 250 > 50 > 0
        assert out.scores.tolist() == pytest.approx([0.0, 1.0, 0.5, 0.5, 1.0, 0.0])
        assert out.valid.all() and out.details["pairs"] == 6 and out.details["template"] == "deepgen"
        assert judge.prompts[0] == DEEPGEN_TEMPLATE.format(prompt="p") or judge.prompts[0] == DEEPGEN_TEMPLATE.format(prompt="q")
        off = UnifiedRewardThink(base_url=judge.url, template="official", swap=True, backoff=0.01)
        out2 = off([gray(v) for v in levels[:3]], ["p"] * 3, meta[:3])
        assert out2.scores.tolist() == pytest.approx([0.0, 1.0, 0.5]) and out2.details["template"] == "official"
        assert "<answer>" in judge.prompts[-1] and "Image 1 is better" in judge.prompts[-1]
    finally:
        judge.close()


def test_unparsable_answers_are_ties():
    judge = FakeJudge(garble=True)
    try:
        out = UnifiedRewardThink(base_url=judge.url, backoff=0.01)([gray(v) for v in (10, 100, 200)], ["p"] * 3, [{"group_id": 0}] * 3)
        # pairs with the 100 image are ties; 200 beats 10
        assert out.scores.tolist() == pytest.approx([(0 + 0.5) / 2, (0.5 + 0.5) / 2, (1 + 0.5) / 2])
        assert out.details["ties"] == 2 and out.valid.all()
    finally:
        judge.close()


def test_retries_after_503():
    judge = FakeJudge(fail_first=2)
    try:
        out = UnifiedRewardThink(base_url=judge.url, model="judge-model", backoff=0.01)([gray(0), gray(255)], ["p", "p"], [{"group_id": 0}] * 2)
        assert out.scores.tolist() == [0.0, 1.0] and out.details["failed_pairs"] == 0
        assert judge.requests == 3
    finally:
        judge.close()


def test_group_where_every_pair_failed_is_invalid():
    judge = FakeJudge(fail_first=10**6)
    try:
        out = UnifiedRewardThink(base_url=judge.url, model="m", max_retries=1, backoff=0.01)([gray(0), gray(9)], ["p", "p"], [{"group_id": 0}] * 2)
        assert not out.valid.any() and out.details["failed_pairs"] == 1 and out.details["failures"] == 2
    finally:
        judge.close()


def test_pointwise_mode():
    judge = FakeJudge(point=True)
    try:
        out = UnifiedRewardPoint(base_url=judge.url, backoff=0.01)([gray(0), gray(255)], ["p", "q"])
        assert out.scores.tolist() == pytest.approx([0.0, 1.0]) and out.valid.all()
    finally:
        judge.close()
