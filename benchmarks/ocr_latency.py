"""OCR reward latency per 512x512 image, in-process and through `mrgrpo serve ocr`, and the reward
server's throughput for 200 concurrent small requests (JSON to stdout and benchmarks/results/).

    python benchmarks/ocr_latency.py [--images 8] [--repeats 3] [--out benchmarks/results/ocr_latency_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reward_servers"))


def images(n: int) -> list[Image.Image]:
    """512x512 renders of a short word pair (the kind of text a text-rendering prompt asks for)."""
    out = []
    for i in range(n):
        im = Image.new("RGB", (512, 512), (235, 230, 220))
        ImageDraw.Draw(im).text((40, 200), f"WORD {i}", fill=(20, 20, 60), font=ImageFont.load_default(size=64))
        out.append(im)
    return out


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ocr_latency_cpu.json"))
    args = ap.parse_args()

    import httpx
    from serverutil import start_server

    from mrgrpo.rewards.base import build_reward
    from mrgrpo.rewards.remote import encode_png

    n = args.images
    ims = images(n)
    prompts = [f'a sign that says "WORD {i}"' for i in range(n)]
    local = build_reward("ocr")
    local(ims[:1], prompts[:1])  # warm-up (model load)
    out_local = local(ims, prompts)
    in_process = timed(lambda: local(ims, prompts), args.repeats) / n

    result = {
        "device": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared",
        "images": n,
        "repeats (median)": args.repeats,
        "ocr_s_per_512px_image_in_process": round(in_process, 4),
    }
    proc, url = start_server("ocr")
    try:
        remote = build_reward("remote", {"urls": [url]})
        remote(ims[:1], prompts[:1])
        out_remote = remote(ims, prompts)
        via_server = timed(lambda: remote(ims, prompts), args.repeats) / n
        one_by_one = timed(lambda: [remote([im], [p]) for im, p in zip(ims, prompts)], args.repeats) / n
        result.update(
            {
                "ocr_s_per_512px_image_via_server_one_request_of_n": round(via_server, 4),
                "ocr_s_per_512px_image_via_server_one_request_each": round(one_by_one, 4),
                "mean_score": round(float(out_local.scores.mean()), 4),
                "remote_equals_local": out_local.scores.tolist() == out_remote.scores.tolist(),
            }
        )
    finally:
        proc.kill()
        proc.wait(timeout=10)

    proc, url = start_server("brightness", "--max-batch", "32")
    try:
        body = {"images": [encode_png(Image.new("RGB", (8, 8), (120, 120, 120)))], "prompts": ["p"]}
        with httpx.Client(timeout=60) as client:

            def one(_):
                return client.post(f"{url}/v1/score", json=body).status_code

            t = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(one, range(200)))
            elapsed = time.perf_counter() - t
        health = httpx.get(f"{url}/health").json()
        result.update(
            {
                "server_200_requests_8_threads_s": round(elapsed, 3),
                "server_200_requests_all_200": codes == [200] * 200,
                "server_reward_calls_for_200_requests": health["calls"],
                "server_largest_call": health["largest_call"],
            }
        )
    finally:
        proc.kill()
        proc.wait(timeout=10)

    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
