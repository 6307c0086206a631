"""UnifiedReward-Think client against a small local OpenAI-compatible HTTP server (a stand-in for vLLM)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from mrgrpo.rewards.unified_reward import (
    DEEPGEN_TEMPLATE,
    OFFICIAL_TEMPLATE,
    UnifiedRewardPoint,
    UnifiedRewardThink,
    pairwise_win_rates,
    parse_pairwise,
    parse_point,
)


class FakeJudge:
    """Answers like the judge: prefers the brighter image (or always the first one, `biased`).

    fail_first: answer `fail_status` to the first N chat requests. delay_first: sleep that long on
    the first request (to trigger a client timeout). garble: unparsable answers for pairs with the
    level-100 image. point: pointwise answers. Tracks requests, prompts and the peak of concurrent requests.
    """

    def __init__(
        self,
        fail_first=0,
        fail_status=503,
        delay_first=0.0,
        garble=False,
        point=False,
        biased=False,
        no_tag=False,
        work_s=0.0,
        wait_for_overlap=False,
    ):
        # wait_for_overlap: the first request is held (up to 10 s) until a second one is in flight, so a client
        # that really sends concurrently always shows peak >= 2, however loaded the machine is
        self.overlap = threading.Event()
        self.wait_for_overlap = wait_for_overlap
        self.fail_first, self.fail_status, self.delay_first = fail_first, fail_status, delay_first
        self.garble, self.point, self.biased, self.no_tag, self.work_s = garble, point, biased, no_tag, work_s
        self.requests, self.prompts, self.models, self.formats = 0, [], [], []
        self.inflight = self.peak = 0
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "judge-model", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with judge.lock:
                    judge.requests += 1
                    n = judge.requests
                    judge.inflight += 1
                    judge.peak = max(judge.peak, judge.inflight)
                    if judge.inflight >= 2:
                        judge.overlap.set()
                try:
                    status, reply = self._work(n, body)
                finally:
                    # done before the reply leaves: a client may send its next request as soon as it reads this
                    # one, and that request must not count as concurrent with this one
                    with judge.lock:
                        judge.inflight -= 1
                self._send(status, reply)

            def _work(self, n, body):
                if n == 1 and judge.wait_for_overlap:
                    judge.overlap.wait(timeout=10)
                if n == 1 and judge.delay_first:
                    time.sleep(judge.delay_first)
                if n <= judge.fail_first:
                    return judge.fail_status, {"error": {"message": "overloaded"}}
                time.sleep(judge.work_s)
                content = body["messages"][0]["content"]
                with judge.lock:
                    judge.prompts.append(content[-1]["text"])
                    judge.models.append(body["model"])
                answer = judge.answer(content)
                return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
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
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, content):
        def level(c):
            url = c["image_url"]["url"]
            with self.lock:
                self.formats.append(url.split(";", 1)[0])
            raw = base64.b64decode(url.split(",", 1)[1])
            return round(Image.open(io.BytesIO(raw)).convert("L").getpixel((4, 4)) / 10) * 10

        imgs = [level(c) for c in content if c["type"] == "image_url"]
        if self.point:
            s = 1 + round(imgs[0] / 255 * 4)
            return f"Alignment Score (1-5): {s}\nCoherence Score (1-5): 5\nStyle Score (1-5): {s}"
        if self.garble and 100 in imgs:
            return "<think>hmm</think><answer>I cannot decide</answer>"
        winner = 1 if self.biased or imgs[0] > imgs[1] else 2
        if self.no_tag:
            return f"Image {winner} is better"
        return (
            "<think>1. Semantic consistency: \n    Image 1 (8/10) - ...; \n    Image 2 (7/10) - ...</think>\n"
            f"<answer>Image {winner} is better</answer>"
        )

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge_factory():
    judges = []

    def make(**kw):
        j = FakeJudge(**kw)
        judges.append(j)
        return j

    yield make
    for j in judges:
        j.close()


def gray(level):
    return Image.new("RGB", (8, 8), (level, level, level))


def test_parsers_and_arithmetic():
    assert parse_pairwise("<think>Image 1 (9/10)</think><answer>Image 2 is better</answer>") == 2
    assert parse_pairwise("<answer> image 1 is better.</answer>") == 1
    assert parse_pairwise("<answer>both are fine</answer>") is None
    assert parse_pairwise("<answer>Image 1 is better or Image 2 is better</answer>") is None
    assert parse_pairwise("Image 1 is better") is None  # no <answer>: unparsable by default
    assert parse_pairwise("Image 1 is better", require_tag=False) == 1
    assert parse_point("<answer>Final Score: 4</answer>") == 4.0 and parse_point("no score") is None
    three = "Alignment Score (1-5): 4\nCoherence Score (1-5): 2\nStyle Score (1-5): 3"
    assert parse_point(three) == pytest.approx(3.0) and parse_point(three, ["Alignment", "Style"]) == pytest.approx(3.5)
    assert parse_point(three, ["Realism"]) is None
    rates, failed = pairwise_win_rates(3, {(0, 1): 1.0, (0, 2): 1.0, (1, 2): None})
    assert rates == [1.0, 0.25, 0.25] and failed == 1
    assert sum(rates) / 3 == pytest.approx(0.5)  # a group's mean is 0.5 whatever happens


def test_group_win_rates_and_deepgen_template(judge_factory):
    judge = judge_factory()
    r = UnifiedRewardThink(base_url=judge.url, template="deepgen", backoff=0.01)
    levels = [10, 200, 100, 50, 250, 0, 150]
    meta = [{"group_id": 0}] * 3 + [{"group_id": 1}] * 4
    prompts = ["p"] * 3 + ["q"] * 4
    out = r([gray(v) for v in levels], prompts, meta)
    # group 0: 200 > 100 > 10 -> wins 2, 1, 0 of 2; group 1 (G=4): 250 > 150 > 50 > 0 -> 3, 2, 1, 0 of 3
    assert out.scores.tolist() == pytest.approx([0.0, 1.0, 0.5, 1 / 3, 1.0, 0.0, 2 / 3])
    assert out.scores[:3].mean() == pytest.approx(0.5) and out.scores[3:].mean() == pytest.approx(0.5)
    assert out.valid.all() and out.details["pairs"] == 3 + 6 and judge.requests == 9
    assert out.details["template"] == "deepgen" and out.details["failed_pairs"] == 0
    assert set(judge.prompts) == {DEEPGEN_TEMPLATE.format(prompt="p"), DEEPGEN_TEMPLATE.format(prompt="q")}
    assert set(judge.models) == {"judge-model"}  # discovered through GET /models
    assert set(judge.formats) == {"data:image/jpeg"}  # base64 data URLs (JPEG 95 by default)


def test_official_and_file_templates_and_swap(judge_factory, tmp_path):
    judge = judge_factory(biased=True)  # always says "Image 1 is better": pure position bias
    images, meta = [gray(v) for v in (10, 200, 100)], [{"group_id": 7}] * 3
    plain = UnifiedRewardThink(base_url=judge.url, template="official", backoff=0.01, image_format="png")
    out = plain(images, ["a cat"] * 3, meta)
    assert out.scores.tolist() == pytest.approx([1.0, 0.5, 0.0]) and out.details["template"] == "official"
    sent = judge.prompts[-1]
    assert sent == OFFICIAL_TEMPLATE.replace("{prompt}", "a cat") and "「a cat」" in sent
    assert "<answer>" in sent and "Image 1 is better" in sent and "Image 2 is better" in sent and "Total score" in sent
    assert judge.formats[-1] == "data:image/png"
    swapped = UnifiedRewardThink(base_url=judge.url, template="official", swap=True, backoff=0.01)
    out = swapped(images, ["a cat"] * 3, meta)
    assert out.scores.tolist() == pytest.approx([0.5, 0.5, 0.5])  # both orders: the bias cancels
    assert out.details["requests"] == 6 and out.details["swap"]
    f = tmp_path / "verbatim.txt"
    f.write_text(
        "Judge {prompt} {not a field}: <answer>Image 1 is better</answer> or <answer>Image 2 is better</answer>"
    )
    custom = UnifiedRewardThink(base_url=judge.url, template_file=str(f), backoff=0.01)
    out = custom(images[:2], ["dog"] * 2, [{"group_id": 0}] * 2)
    assert out.details["template"] == f"file:{f}" and judge.prompts[-1].startswith("Judge dog {not a field}")
    with pytest.raises(ValueError, match="must contain '{prompt}'"):
        UnifiedRewardThink(base_url=judge.url, template_text="no placeholder")
    with pytest.raises(ValueError, match="unifiedreward_think: cannot read template_file"):
        UnifiedRewardThink(base_url=judge.url, template_file=str(tmp_path / "missing.txt"))


def test_unparsable_answers_are_ties(judge_factory):
    judge = judge_factory(garble=True)
    out = UnifiedRewardThink(base_url=judge.url, backoff=0.01)(
        [gray(v) for v in (10, 100, 200)], ["p"] * 3, [{"group_id": 0}] * 3
    )
    # pairs with the 100 image are ties; 200 beats 10
    assert out.scores.tolist() == pytest.approx([(0 + 0.5) / 2, (0.5 + 0.5) / 2, (1 + 0.5) / 2])
    assert out.details["ties_unparsable"] == 2 and out.valid.all() and out.details["failures"] == 0
    untagged = judge_factory(no_tag=True)
    strict = UnifiedRewardThink(base_url=untagged.url, backoff=0.01)(
        [gray(0), gray(250)], ["p"] * 2, [{"group_id": 0}] * 2
    )
    assert strict.scores.tolist() == [0.5, 0.5] and strict.details["ties_unparsable"] == 1
    lenient = UnifiedRewardThink(base_url=untagged.url, backoff=0.01, require_answer_tag=False)
    assert lenient([gray(0), gray(250)], ["p"] * 2, [{"group_id": 0}] * 2).scores.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("status", [503, 429])
def test_retries_after_503_and_429(judge_factory, status):
    judge = judge_factory(fail_first=2, fail_status=status)
    out = UnifiedRewardThink(base_url=judge.url, model="judge-model", backoff=0.01)(
        [gray(0), gray(250)], ["p", "p"], [{"group_id": 0}] * 2
    )
    assert out.scores.tolist() == [0.0, 1.0] and out.details["failed_pairs"] == 0
    assert judge.requests == 3  # two refusals, then the answer


def test_failed_pairs_are_ties_and_reported_and_a_dead_group_is_invalid(judge_factory):
    judge = judge_factory(fail_first=2, fail_status=500)
    r = UnifiedRewardThink(base_url=judge.url, model="m", max_retries=0, backoff=0.01, max_concurrency=1)
    out = r([gray(0), gray(100), gray(250)], ["p"] * 3, [{"group_id": 0}] * 3)
    assert out.details["failed_pairs"] == 2 and len(out.details["failed"]) == 2
    assert "HTTP 500" in out.details["failed"][0]["error"] and out.valid.all()
    assert out.scores.sum().item() == pytest.approx(1.5)  # still a mean of 0.5: failed pairs are ties
    # pairs in order (0,1), (0,2), (1,2): the first two are ties, 250 beats 100
    assert out.scores.tolist() == pytest.approx([(0.5 + 0.5) / 2, (0.5 + 0.0) / 2, (0.5 + 1.0) / 2])
    dead = judge_factory(fail_first=10**6, fail_status=502)
    r = UnifiedRewardThink(base_url=dead.url, model="m", max_retries=1, backoff=0.01)
    out = r([gray(0), gray(9), gray(50), gray(60)], ["p"] * 4, [{"group_id": 0}] * 2 + [{"group_id": 1}] * 2)
    assert not out.valid.any() and out.details["failed_pairs"] == 2 and out.details["failures"] == 4
    assert dead.requests == 4  # 2 pairs x (1 try + 1 retry)
    # connection refused (nothing listening) is retried, then the group is invalid
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = UnifiedRewardThink(base_url=f"http://127.0.0.1:{port}", model="m", max_retries=1, backoff=0.01)(
        [gray(0), gray(9)], ["p"] * 2, [{"group_id": 0}] * 2
    )
    assert not out.valid.any() and "ConnectError" in out.details["failed"][0]["error"]


def test_timeout_then_retry(judge_factory):
    judge = judge_factory(delay_first=1.5)
    r = UnifiedRewardThink(base_url=judge.url, model="m", timeout=0.5, max_retries=2, backoff=0.01)
    out = r([gray(0), gray(250)], ["p"] * 2, [{"group_id": 0}] * 2)
    assert out.scores.tolist() == [0.0, 1.0] and out.details["failed_pairs"] == 0 and judge.requests == 2


def test_bounded_concurrency_and_thread_safety(judge_factory):
    judge = judge_factory(work_s=0.05, wait_for_overlap=True)
    r = UnifiedRewardThink(base_url=judge.url, model="m", max_concurrency=3, backoff=0.01)
    levels = [0, 40, 80, 120, 160, 200]  # G = 6: 15 pairs per call
    results = []

    def call():
        results.append(r([gray(v) for v in levels], ["p"] * 6, [{"group_id": 0}] * 6).scores.tolist())

    threads = [threading.Thread(target=call) for _ in range(3)]  # the trainer calls remote rewards from threads
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert judge.requests == 45 and judge.peak <= 3 and judge.peak >= 2
    assert results == [pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])] * 3
    r.close()


def test_pointwise_mode(judge_factory):
    judge = judge_factory(point=True)
    out = UnifiedRewardPoint(base_url=judge.url.removesuffix("/v1"), backoff=0.01)([gray(0), gray(255)], ["p", "q"])
    # (Alignment + Coherence + Style) / 3 = (1 + 5 + 1) / 3 and (5 + 5 + 5) / 3, mapped by (s - 1) / 4
    assert out.scores.tolist() == pytest.approx([(7 / 3 - 1) / 4, 1.0]) and out.valid.all()
    assert out.details["template"] == "unifiedreward" and "Alignment Score (1-5)" in judge.prompts[-1]
    dims = UnifiedRewardPoint(base_url=judge.url, dimensions=["Alignment"], backoff=0.01)([gray(0)], ["p"])
    assert dims.scores.tolist() == [0.0]
    missing = UnifiedRewardPoint(base_url=judge.url, dimensions=["Realism"], backoff=0.01)([gray(0)], ["p"])
    assert not missing.valid.any() and missing.details["unparsable"] == 1 and missing.details["failures"] == 0
    dead = judge_factory(fail_first=10**6)
    out = UnifiedRewardPoint(base_url=dead.url, model="m", max_retries=0)([gray(0)], ["p"])
    assert not out.valid.any() and out.details["failures"] == 1 and "HTTP 503" in out.details["errors"][0]


def test_unhashable_group_ids_are_grouped_by_their_text(judge_factory):
    judge = judge_factory()
    r = UnifiedRewardThink(base_url=judge.url, template="deepgen", backoff=0.01)
    levels = [10, 200, 100, 50, 250, 0, 150]
    meta = [{"group_id": [0]}] * 3 + [{"group_id": {"g": 1}}] * 4  # careless metadata: a list and an object
    out = r([gray(v) for v in levels], ["p"] * 3 + ["q"] * 4, meta)
    assert out.scores.tolist() == pytest.approx([0.0, 1.0, 0.5, 1 / 3, 1.0, 0.0, 2 / 3]) and out.valid.all()
