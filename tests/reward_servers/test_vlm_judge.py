"""The VQAScore-style VLM judge against a local OpenAI-compatible server that returns logprobs."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from mrgrpo.rewards.base import build_reward
from mrgrpo.rewards.vlm_judge import VQASCORE_TEMPLATE, yes_probability


class FakeVLM:
    """P(Yes) = the image's mean grey level / 255 (split over "Yes" and " yes"); "No" gets the rest.

    fail_first: answer 503 to the first N chat requests. no_logprobs: reply without logprobs.
    """

    def __init__(self, fail_first=0, no_logprobs=False):
        self.fail_first, self.no_logprobs = fail_first, no_logprobs
        self.requests, self.texts, self.bodies = 0, [], []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "vlm", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with fake.lock:
                    fake.requests += 1
                    n = fake.requests
                    fake.bodies.append({k: v for k, v in body.items() if k != "messages"})
                if n <= fake.fail_first:
                    return self._send(503, {"error": "busy"})
                content = body["messages"][0]["content"]
                url = content[0]["image_url"]["url"]
                im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L")
                p = float(np.asarray(im, dtype=np.float64).mean()) / 255.0
                with fake.lock:
                    fake.texts.append(content[1]["text"])
                choice = {"index": 0, "message": {"role": "assistant", "content": "Yes" if p > 0.5 else "No"}}
                if not fake.no_logprobs:
                    tops = [
                        {"token": "Yes", "logprob": math.log(max(p * 0.9, 1e-12))},
                        {"token": " yes", "logprob": math.log(max(p * 0.1, 1e-12))},
                        {"token": "No", "logprob": math.log(max(1 - p, 1e-12))},
                    ]
                    choice["logprobs"] = {
                        "content": [{"token": choice["message"]["content"], "logprob": -0.1, "top_logprobs": tops}]
                    }
                self._send(200, {"choices": [choice]})

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

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_vlm():
    made = []

    def make(**kw):
        made.append(FakeVLM(**kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _grey(level):
    return Image.new("RGB", (16, 16), (level, level, level))


def test_p_yes_from_logprobs(fake_vlm):
    fake = fake_vlm()
    reward = build_reward("vlm_judge", {"base_url": fake.url, "max_concurrency": 4})
    levels = [0, 51, 204, 255]
    out = reward([_grey(v) for v in levels], ["a cat", "a dog", "a red car", "snow"])
    expected = [v / 255 for v in levels]
    assert out.scores.tolist() == pytest.approx(expected, abs=2e-3)  # PNG keeps the grey level exactly
    assert out.valid.all() and out.details["failures"] == 0
    asked = ["a cat", "a dog", "a red car", "snow"]
    assert sorted(fake.texts) == sorted(VQASCORE_TEMPLATE.replace("{prompt}", p) for p in asked)
    assert all(b["logprobs"] is True and b["top_logprobs"] == 20 and b["max_tokens"] == 1 for b in fake.bodies)
    norm = build_reward("vlm_judge", {"base_url": fake.url, "normalize": True})
    assert norm([_grey(51)], ["x"]).scores.item() == pytest.approx(0.2, abs=2e-3)


def test_questions_from_metadata_and_template_file(fake_vlm, tmp_path):
    fake = fake_vlm()
    tpl = tmp_path / "check.txt"
    tpl.write_text("Prompt: {prompt}\nQuestion: {question} Answer yes or no.\n")
    reward = build_reward("vlm_judge", {"base_url": fake.url, "template_file": str(tpl)})
    meta = [{"questions": ["Is there a cat?", "Is it red?"]}, {"questions": "Is it snowing?"}, {}]
    out = reward([_grey(102), _grey(153), _grey(255)], ["a red cat", "snow", "none"], meta)
    assert out.valid.tolist() == [True, True, False]  # no question -> invalid, not a silent 0
    assert out.scores[:2].tolist() == pytest.approx([0.4, 0.6], abs=2e-3)
    assert out.details["no_question"] == 1 and out.details["requests"] == 3
    assert "Prompt: a red cat\nQuestion: Is it red? Answer yes or no." in fake.texts
    assert out.details["template"] == f"file:{tpl}"


def test_retries_and_failure_masking(fake_vlm):
    flaky = fake_vlm(fail_first=2)
    reward = build_reward("vlm_judge", {"base_url": flaky.url, "backoff": 0.01, "max_retries": 3, "max_concurrency": 1})
    out = reward([_grey(255)], ["x"])
    assert out.valid.all() and out.scores.item() == pytest.approx(1.0, abs=1e-3) and flaky.requests == 3
    down = build_reward(
        "vlm_judge",
        {
            "base_url": flaky.url.replace(flaky.url.split(":")[-1].split("/")[0], "1"),
            "model": "vlm",
            "backoff": 0.01,
            "max_retries": 1,
            "timeout": 2,
        },
    )
    out = down([_grey(10), _grey(20)], ["x", "y"])
    assert not out.valid.any() and out.details["failures"] == 2
    bare = build_reward("vlm_judge", {"base_url": fake_vlm(no_logprobs=True).url})
    out = bare([_grey(200)], ["x"])
    assert not out.valid.any() and "no logprobs" in out.details["errors"][0]


def test_yes_probability_and_bad_templates():
    tops = [
        {"token": "YES", "logprob": math.log(0.3)},
        {"token": "no.", "logprob": math.log(0.6)},
        {"token": "maybe", "logprob": math.log(0.1)},
    ]
    choice = {"logprobs": {"content": [{"token": "no.", "logprob": math.log(0.6), "top_logprobs": tops}]}}
    assert yes_probability(choice) == pytest.approx(0.3)
    assert yes_probability(choice, normalize=True) == pytest.approx(1 / 3)
    assert yes_probability({"message": {"content": "Yes"}}) is None
    with pytest.raises(ValueError, match="must contain"):
        build_reward("vlm_judge", {"template_text": "Is it good?"})
    with pytest.raises(ValueError, match="template must be one of"):
        build_reward("vlm_judge", {"template": "nope"})
    with pytest.raises(ValueError, match="cannot read template_file"):
        build_reward("vlm_judge", {"template_file": "/no/such/file.txt"})
