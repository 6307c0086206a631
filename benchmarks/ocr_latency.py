"""OCR reward latency per 512x512 image, in-process and through `mrgrpo serve ocr` (JSON out)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reward_servers"))


def images(n: int):
    out = []
    for i in range(n):
        im = Image.new("RGB", (512, 512), "white")
        ImageDraw.Draw(im).text((40, 200), f"WORD {i}", fill="black", font=ImageFont.load_default(size=64))
        out.append(im)
    return out


def main() -> int:
    from serverutil import start_server

    from mrgrpo.rewards.base import build_reward

    ims = images(8)
    prompts = [f'a sign that says "WORD {i}"' for i in range(8)]
    local = build_reward("ocr")
    local(ims[:1], prompts[:1])  # warm-up
    t = time.perf_counter()
    out = local(ims, prompts)
    in_process = (time.perf_counter() - t) / len(ims)
    proc, url = start_server("ocr")
    try:
        remote = build_reward("remote", {"urls": [url]})
        remote(ims[:1], prompts[:1])
        t = time.perf_counter()
        out_r = remote(ims, prompts)
        via_server = (time.perf_counter() - t) / len(ims)
    finally:
        proc.kill()
    result = {"ocr_s_per_512px_image_in_process": round(in_process, 4), "ocr_s_per_512px_image_via_server": round(via_server, 4),
              "mean_score": round(float(out.scores.mean()), 4), "remote_equals_local": out.scores.tolist() == out_r.scores.tolist()}
    print(json.dumps(result, indent=2))
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/ocr_latency_cpu.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
