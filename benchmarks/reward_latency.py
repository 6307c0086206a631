"""Per-image time of the model rewards on tiny random-init models of their real architectures (CPU unless
--device), built in a temporary folder and loaded through the real loading code; nothing is downloaded.

    python benchmarks/reward_latency.py [--images 16] [--repeats 3] [--device cpu]
                                        [--out benchmarks/results/reward_latency_cpu.json]

The numbers measure our code path and preprocessing with toy weights: the real models (ViT-H/L,
BLIP-L, Swin-S Mask2Former) cost orders of magnitude more. `vlm_judge` is timed against a local fake
OpenAI-compatible server. `geneval` needs scipy (transformers' Mask2Former builds its matcher with it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "rewards"), str(ROOT / "tests" / "reward_servers")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(name: str, tmp: Path, device: str):
    """``(reward, metadata)`` for one reward on tiny weights written under ``tmp``."""
    from tiny_reward_models import TINY_OPEN_CLIP, save_tiny_hf_clip

    from mrgrpo.rewards.base import build_reward

    clip = tmp / "clip"
    if not clip.exists():
        save_tiny_hf_clip(clip)
    if name == "pickscore":
        return build_reward(name, {"model": str(clip), "processor": str(clip), "device": device}), None
    if name == "aesthetic":
        from mrgrpo.rewards.aesthetic import AestheticMLP

        torch.save(AestheticMLP(16).state_dict(), tmp / "head.pth")
        return build_reward(name, {"model": str(clip), "head": str(tmp / "head.pth"), "device": device}), None
    if name == "image_similarity":
        return build_reward(name, {"model": str(clip), "device": device}), [
            {"source_image": Image.new("RGB", (512, 512))}
        ]
    if name == "hpsv2":
        import open_clip

        from mrgrpo.rewards.clip import register_model_config

        register_model_config("bench-tiny-hps", TINY_OPEN_CLIP)
        torch.save({"state_dict": open_clip.create_model("bench-tiny-hps").state_dict()}, tmp / "hps.pt")
        return build_reward(
            name, {"checkpoint": str(tmp / "hps.pt"), "model_name": "bench-tiny-hps", "device": device}
        ), None
    if name == "imagereward":
        import test_imagereward as T
        from transformers import BertTokenizer

        torch.save(T.released_checkpoint(), tmp / "ir.pt")
        (tmp / "med.json").write_text(
            json.dumps(
                {
                    "vocab_size": T.VOCAB,
                    "hidden_size": T.H,
                    "num_hidden_layers": T.LAYERS,
                    "num_attention_heads": T.THEADS,
                    "intermediate_size": T.INTER,
                    "max_position_embeddings": 64,
                    "layer_norm_eps": 1e-12,
                    "hidden_act": "gelu",
                    "pad_token_id": 0,
                }
            )
        )
        (tmp / "vocab.txt").write_text("\n".join(T.WORDS) + "\n")
        BertTokenizer(vocab_file=str(tmp / "vocab.txt")).save_pretrained(tmp / "tok")
        return build_reward(
            name,
            {
                "checkpoint": str(tmp / "ir.pt"),
                "med_config": str(tmp / "med.json"),
                "tokenizer": str(tmp / "tok"),
                "vision_num_heads": T.HEADS,
                "device": device,
            },
        ), None
    if name == "vlm_judge":
        from test_vlm_judge import FakeVLM

        fake = FakeVLM()
        return build_reward(name, {"base_url": fake.url, "max_concurrency": 8}), None
    if name == "geneval":
        import test_geneval as T

        det = T._tiny_mask2former(tmp / "m2f")
        return build_reward(
            name,
            {
                "detector": str(det),
                "detector_size": {"shortest_edge": 64, "longest_edge": 96},
                "clip_model": str(clip),
                "device": device,
            },
        ), [{"tag": "color_attr", "include": [{"class": "dog", "count": 1, "color": "red"}]}]
    raise ValueError(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rewards", default="pickscore,aesthetic,image_similarity,hpsv2,imagereward,vlm_judge,geneval")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/reward_latency_cpu.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    images = [Image.effect_noise((512, 512), 40 + i).convert("RGB") for i in range(args.images)]
    prompts = ["a photo of a red dog"] * args.images
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for name in args.rewards.split(","):
            try:
                reward, meta = build(name, Path(d), args.device)
            except ImportError as exc:
                results[name] = {"skipped": str(exc).strip().splitlines()[0][:200]}
                continue
            metadata = [dict(meta[0]) for _ in images] if meta else None
            reward(images[:2], prompts[:2], metadata[:2] if metadata else None)  # warm-up
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                out = reward(images, prompts, metadata)
                times.append(time.perf_counter() - t)
            assert bool(out.valid.all()), name
            results[name] = {"s_per_image": round(statistics.median(times) / args.images, 5)}
            print(f"{name:18s} {results[name]['s_per_image'] * 1000:8.2f} ms/image", flush=True)
    report = {
        "what": "per-image time of each reward, tiny random-init models, 512x512 inputs",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "images": args.images,
        "repeats": args.repeats,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
