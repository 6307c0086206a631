"""Load-and-abuse benchmark of the reward server: valid clients alone, then valid and hostile clients together.

One `mrgrpo serve color_match --token T` on loopback. Valid clients send requests of small images
(random flat colours, a colour word in the prompt or in metadata) and check every answer against
the in-process reward. Hostile clients cycle through careless and malicious requests: deep
nesting, huge integers, NaN, too many JSON values, wrong tokens, garbage and truncated images,
GIF, a decompression bomb header, requests over the pixel budget, the largest allowed request
(4 x 4096x4096), bad metadata, half-sent requests held open (slow loris), bodies cut off midway.

Reports (JSON to stdout and --out): valid requests answered correctly (must be 100 %), p50/p99
latency of valid requests without and with the hostile mix, the hostile requests by kind and
status (a 5xx is a failure), and the server's peak RSS.

    python benchmarks/server_abuse.py [--duration 60] [--baseline 20] [--valid-clients 4] [--hostile-clients 6]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import random
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reward_servers"))

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
WORDS = ["red", "green", "blue", "yellow", "orange", "purple", "white", "black", "gray", "cyan"]


def png_b64(im: Image.Image, fmt: str = "PNG", **kw) -> str:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return base64.b64encode(buf.getvalue()).decode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_png(w: int, h: int) -> str:
    """A PNG whose header claims w x h pixels (a decompression bomb's header), with almost no data."""
    raw = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return base64.b64encode(raw + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))).decode()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.valid = Counter()
        self.hostile: dict[str, Counter] = defaultdict(Counter)
        self.wrong: list[str] = []

    def add_valid(self, phase: str, seconds: float, ok: bool, why: str = "") -> None:
        with self.lock:
            self.latency[phase].append(seconds)
            self.valid[(phase, ok)] += 1
            if not ok and len(self.wrong) < 20:
                self.wrong.append(why)

    def add_hostile(self, kind: str, outcome: str) -> None:
        with self.lock:
            self.hostile[kind][outcome] += 1


def valid_client(
    url: str, seed: int, stop: threading.Event, phase: list[str], stats: Stats, ready: threading.Barrier
) -> None:
    import httpx

    from mrgrpo.rewards.pixel import ColorMatch  # imported before the clock starts (see main)

    rng = random.Random(seed)
    reward = ColorMatch()
    with httpx.Client(timeout=120, headers=AUTH) as client:
        client.get(f"{url}/health")
        ready.wait()
        while not stop.is_set():
            n = rng.randint(1, 8)
            ims = [Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3))) for _ in range(n)]
            words = [rng.choice(WORDS) for _ in range(n)]
            use_meta = rng.random() < 0.5
            prompts = [f"a {w} square" if not use_meta else "a square" for w in words]
            meta = [{"color": w} if use_meta else {"group_id": k} for k, w in enumerate(words)]
            expected = reward(ims, prompts, meta)
            body = json.dumps({"images": [png_b64(im) for im in ims], "prompts": prompts, "metadata": meta})
            current = phase[0]
            t = time.perf_counter()
            try:
                r = client.post(f"{url}/v1/score", content=body)
                seconds = time.perf_counter() - t
                out = r.json() if r.status_code == 200 else None
            except Exception as exc:  # noqa: BLE001 - counted as a wrong answer
                stats.add_valid(current, time.perf_counter() - t, False, f"{type(exc).__name__}: {exc}")
                continue
            ok = (
                out is not None
                and out["valid"] == expected.valid.tolist()
                and np.allclose(out["scores"], expected.scores.tolist(), atol=1e-6)
            )
            stats.add_valid(current, seconds, ok, "" if ok else f"{r.status_code}: {r.text[:200]}")


def hostile_bodies(rng: random.Random, side: int = 4096) -> dict[str, tuple[bytes, dict]]:
    """Request bodies (and headers) of each hostile kind; "largest allowed" has 4 images of side x side."""
    ok = png_b64(Image.new("RGB", (16, 16), (200, 10, 10)))
    big = [png_b64(Image.new("RGB", (side, side), (v, v, v)), compress_level=1) for v in (10, 90, 170, 250)]
    one = lambda **kw: json.dumps({"images": [ok], "prompts": ["a red square"], **kw})  # noqa: E731
    gif = png_b64(Image.new("RGB", (16, 16)), "GIF")
    noise = base64.b64decode(png_b64(Image.effect_noise((64, 64), 40).convert("RGB")))
    truncated = base64.b64encode(noise[:300]).decode()
    bodies = {
        "deep nesting": "[" * 100_000,
        "deep metadata": '{"images": ["%s"], "prompts": ["p"], "metadata": [{"a": %s1%s}]}'
        % (ok, "[" * 5000, "]" * 5000),
        "huge int": '{"images": [%s], "prompts": ["p"]}' % ("9" * 5000),
        "NaN": '{"images": ["%s"], "prompts": ["p"], "metadata": [{"x": NaN}]}' % ok,
        "too many values": "[" + "0," * 1_100_000 + "0]",
        "not json": "{images: ",
        "garbage base64": json.dumps({"images": ["@@@" * 100], "prompts": ["p"]}),
        "truncated png": json.dumps({"images": [truncated], "prompts": ["p"]}),
        "gif": json.dumps({"images": [gif], "prompts": ["p"]}),
        "bomb header": json.dumps({"images": [header_png(100_000, 100_000)], "prompts": ["p"]}),
        "over request budget": json.dumps({"images": [header_png(4096, 4096)] * 5, "prompts": ["p"] * 5}),
        "largest allowed": json.dumps({"images": big, "prompts": ["a gray square"] * 4}),
        "bad metadata": one(metadata=[{"color": ["red"]}]),
        "list group_id": one(metadata=[{"group_id": [1, 2]}]),
        "too many images": json.dumps({"images": [ok] * 300, "prompts": ["p"] * 300}),
    }
    out = {k: (v.encode(), AUTH) for k, v in bodies.items()}
    out["wrong token"] = (one().encode(), {"Authorization": "Bearer x"})
    return out


def raw_attack(host: str, port: int, kind: str, read_timeout: float) -> str:
    """Slow loris (half the headers, then nothing) or a body cut off midway; returns what happened."""
    s = socket.create_connection((host, port), timeout=read_timeout + 10)
    try:
        if kind == "slow loris":
            s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Le")
            t = time.perf_counter()
            while s.recv(4096):
                pass
            return f"closed after {time.perf_counter() - t:.0f} s"
        s.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b"\r\nContent-Length: 1000000\r\n\r\n"
            + b'{"images": ["'
            + b"A" * 20000
        )
        return "hung up"
    except OSError as exc:
        return type(exc).__name__
    finally:
        s.close()


RAW_KINDS = ("slow loris", "hang up mid-body")


def hostile_client(
    url: str, seed: int, stop: threading.Event, stats: Stats, bodies: dict, read_timeout: float, kinds: list[str]
) -> None:
    import httpx

    rng = random.Random(seed)
    host, port = url.rsplit("/", 1)[-1].split(":")
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            kind = rng.choice(kinds)
            if kind in bodies:
                body, headers = bodies[kind]
                try:
                    r = client.post(f"{url}/v1/score", content=body, headers=headers)
                    outcome = str(r.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
            else:
                outcome = raw_attack(host, int(port), kind, read_timeout)
                outcome = "closed by the server" if outcome.startswith("closed") else outcome
            stats.add_hostile(kind, outcome)


def rss_mib(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of valid + hostile clients")
    ap.add_argument("--baseline", type=float, default=20.0, help="seconds of valid clients alone first")
    ap.add_argument("--valid-clients", type=int, default=4)
    ap.add_argument("--hostile-clients", type=int, default=6)
    ap.add_argument(
        "--largest-side",
        type=int,
        default=4096,
        help="side of the 4 images of the 'largest allowed' request (4096: the whole default pixel budget)",
    )
    ap.add_argument("--kinds", default="", help="comma-separated hostile kinds to use (default: all)")
    ap.add_argument("--read-timeout", type=float, default=5.0, help="the server's --read-timeout")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/server_abuse_cpu.json"), help="'' for none")
    args = ap.parse_args(argv)

    from serverutil import start_server

    import mrgrpo.rewards.pixel  # noqa: F401 - torch etc. imported before any clock starts

    proc, url = start_server(
        "color_match", "--token", TOKEN, "--read-timeout", str(args.read_timeout), "--max-batch", "64"
    )
    stats = Stats()
    try:
        rss_start = rss_mib(proc.pid, "VmRSS")
        # built first: encoding 4096x4096 PNGs takes a while
        bodies = hostile_bodies(random.Random(0), args.largest_side)
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] or list(bodies) + list(RAW_KINDS)
        unknown = set(kinds) - set(bodies) - set(RAW_KINDS)
        if unknown:
            raise SystemExit(f"error: --kinds {sorted(unknown)}: known kinds are {sorted(bodies) + list(RAW_KINDS)}")
        stop, phase = threading.Event(), ["baseline"]
        ready = threading.Barrier(args.valid_clients + 1)
        valid = [
            threading.Thread(target=valid_client, args=(url, i, stop, phase, stats, ready))
            for i in range(args.valid_clients)
        ]
        for t in valid:
            t.start()
        ready.wait()
        time.sleep(args.baseline)
        peak_baseline = rss_mib(proc.pid, "VmHWM")
        phase[0] = "mixed"
        hostile_stop = threading.Event()
        hostile = [
            threading.Thread(
                target=hostile_client, args=(url, 100 + i, hostile_stop, stats, bodies, args.read_timeout, kinds)
            )
            for i in range(args.hostile_clients)
        ]
        for t in hostile:
            t.start()
        time.sleep(args.duration)
        stop.set()
        for t in valid:
            t.join()
        hostile_stop.set()
        for t in hostile:
            t.join()
        peak_mixed = rss_mib(proc.pid, "VmHWM")
        alive = proc.poll() is None
        log = "".join(proc.log)
    finally:
        proc.kill()
        proc.wait(timeout=10)

    answered = {p: stats.valid[(p, True)] + stats.valid[(p, False)] for p in ("baseline", "mixed")}
    correct = {p: stats.valid[(p, True)] for p in ("baseline", "mixed")}
    server_errors = sum(c for kinds in stats.hostile.values() for s, c in kinds.items() if s.startswith("5"))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other work, "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "largest_allowed_request": f"4 x {args.largest_side}x{args.largest_side}",
        "seconds": {"baseline": args.baseline, "mixed": args.duration},
        "clients": {"valid": args.valid_clients, "hostile": args.hostile_clients},
        "valid_requests": answered,
        "valid_correct": correct,
        "valid_correct_fraction": {p: (correct[p] / answered[p] if answered[p] else None) for p in answered},
        "valid_latency_ms": {p: {"p50": pct(stats.latency[p], 50), "p99": pct(stats.latency[p], 99)} for p in answered},
        "hostile": {k: dict(v) for k, v in sorted(stats.hostile.items())},
        "hostile_requests": sum(sum(v.values()) for v in stats.hostile.values()),
        "server_5xx_to_hostile": server_errors,
        "rss_mib": {"start": round(rss_start), "peak_baseline": round(peak_baseline), "peak_mixed": round(peak_mixed)},
        "server_alive": alive,
        "tracebacks_in_log": log.count("Traceback"),
        "wrong_answers": stats.wrong,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    res = main()
    fractions = [f for f in res["valid_correct_fraction"].values() if f is not None]
    sys.exit(0 if res["server_alive"] and all(f == 1.0 for f in fractions) else 1)
