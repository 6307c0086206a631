"""MR-GRPO steps of a REAL-SIZE DeepGen (random init: no weights needed) on one GPU.

    python benchmarks/gpu_realsize.py --steps 2 --num-steps 50 --out results.json

Builds Qwen2.5-VL-3B, the SCB connector and the SD3.5-M-shaped DiT at their real shapes directly on
the GPU (bf16 frozen parts, float32 trained DiT, bf16 frozen reference copy), then runs the real
trainer (rollout at 512x512, G=8, CPS sampler, 60% of the steps trained, velocity KL, AdamW) and
reports time per phase, the on-policy ratio of the first update and peak GPU memory.
Quality is meaningless (random weights); shapes, dtypes, memory and speed are the real ones.
Levers (gradient checkpointing, fused AdamW, regional compile, beta 0, LoRA) are flags; each run is stored
under its label in the --out JSON. benchmarks/gpu_session.sh runs the whole set in one device session.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def build_real_size_policy(device: str = "cuda"):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    from mrgrpo.policies.deepgen.policy import DeepGenPolicy
    from mrgrpo.policies.tiny_models import QWEN_SPECIALS as SPECIALS
    from mrgrpo.policies.tiny_models import byte_level_tokenizer

    tok = byte_level_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    cfg = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 2048,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "intermediate_size": 11008,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "num_heads": 16,
            "intermediate_size": 3420,
            "out_hidden_size": 2048,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        lmm = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.bfloat16)
        dit = SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=384,
            dual_attention_layers=tuple(range(13)),
            qk_norm="rms_norm",
        ).to(torch.bfloat16)
        vae = AutoencoderKL(
            latent_channels=16,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=1.5305,
            shift_factor=0.0609,
        ).to(torch.bfloat16)
    modules = {
        "lmm": lmm,
        "tokenizer": tok,
        "image_processor": Qwen2VLImageProcessor(),
        "transformer": dit,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
    }
    return DeepGenPolicy("real-size-random", "real-size-random", dtype="bfloat16", modules=modules).to(device)


def _flag(value: str) -> bool | str:
    return {"true": True, "false": False, "auto": "auto"}[value]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="MR-GRPO steps of a real-size random-init DeepGen on one GPU")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (the first is reported apart as warm-up)")
    ap.add_argument("--num-steps", type=int, default=50)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--beta", type=float, default=5e-7, help="KL weight (0: no reference forward at all)")
    ap.add_argument("--lora", type=int, default=0, help="DiT LoRA rank (0: the full DiT trains)")
    ap.add_argument("--gradient-checkpointing", default="true", choices=["true", "false", "auto"])
    ap.add_argument("--fused-optimizer", default="auto", choices=["true", "false", "auto"])
    ap.add_argument("--compile", action="store_true", help="regional torch.compile of the DiT blocks")
    ap.add_argument("--label", default=None, help="name of this lever setting in the results file")
    ap.add_argument(
        "--out", default="benchmarks/results/gpu_realsize.json", help="JSON file; runs are appended by label"
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="the tiny DeepGen instead (checks this script on a CPU; numbers meaningless)",
    )
    args = ap.parse_args(argv)

    from flops import measured_matmul_tflops, mfu, spec_peak_tflops, step_flops, velocity_flops_per_image
    from step_time import bare_compute_seconds

    from mrgrpo.config import load_recipe
    from mrgrpo.grpo import GRPOTrainer

    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    if args.tiny:
        from mrgrpo.registry import POLICIES

        policy = POLICIES.build("deepgen-tiny")
    else:
        policy = build_real_size_policy()
    build_s = time.perf_counter() - t0
    prompts = Path("/tmp/gpu_prompts.txt")
    prompts.write_text("\n".join(f"a photo of object number {i} on a wooden table" for i in range(8)) + "\n")
    train = {
        "images_per_step": 8,
        "micro_batch_size": args.micro,
        "max_steps": args.steps,
        "gradient_checkpointing": _flag(args.gradient_checkpointing),
        "fused_optimizer": _flag(args.fused_optimizer),
        "compile_dit": args.compile,
        "checkpoint_every": 10**6,
        "mixed_precision": "bf16" if cuda else "no",
    }
    if args.lora:
        train["lora"] = {"enabled": True, "rank": args.lora, "alpha": 2 * args.lora}
    cfg = load_recipe(
        data={
            "stage": "rl",
            "output_dir": "/tmp/gpu_run",
            "policy": {"name": "deepgen"},
            "rewards": {"brightness": {}, "jpeg_compressibility": {}},
            "data": {
                "sources": [
                    {"name": "p", "path": str(prompts), "rewards": {"brightness": 0.5, "jpeg_compressibility": 0.5}}
                ]
            },
            "rl": {
                "num_steps": args.num_steps,
                "group_size": 8,
                "sampler": "cps",
                "beta": args.beta,
                "sft_aux_coef": 0.0,
                "cfg_scale": 0.0,
                **({"height": 64, "width": 64} if args.tiny else {}),
            },
            "train": train,
            "logging": {"progress_bar": False, "tensorboard": False, "sample_every": 10**6},
            "eval": {"every": 10**6},
        }
    )
    trainer = GRPOTrainer(cfg, policy=policy)
    gpu_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak_spec = spec_peak_tflops(gpu_name)
    peak_gemm = measured_matmul_tflops(
        "cuda" if cuda else "cpu", n=8192 if cuda else 512, dtype=torch.bfloat16 if cuda else torch.float32
    )
    rows, flops = [], None
    for step in range(1, args.steps + 1):
        batch, _, _, m = trainer.run_phases(step)  # run_phases ends with .item() calls: the GPU is synchronised
        if flops is None:
            traj = batch.traj
            per_image = velocity_flops_per_image(
                trainer.policy, traj.latents[:, 0], traj.sigmas[traj.first_step :].clone(), batch.cond, trainer.autocast
            )
            flops = step_flops(
                per_image,
                images=8,
                num_steps=args.num_steps,
                trained_steps=trainer.train_steps_per_sample,
                cfg=False,
                beta=args.beta,
            )
        bare = bare_compute_seconds(trainer, batch)
        row = {k: round(v, 3) for k, v in m.items() if k.startswith("time/")}
        seconds = {"rollout": m["time/rollout"], "train": m["time/train"], "step": m["time/step"]}
        row.update(
            {
                "time/bare_dit": round(bare, 3),
                "overhead_ratio": round(m["time/step"] / bare, 3),
                "images_per_s": round(8 / m["time/step"], 3),
                "mfu_vs_spec": mfu(flops, seconds, peak_spec) if peak_spec else None,
                "mfu_vs_gemm": mfu(flops, seconds, peak_gemm),
                "ratio/min": m["ratio/min"],
                "ratio/max": m["ratio/max"],
                "clip_frac": m["clip_frac"],
                "loss/kl": m.get("loss/kl", 0.0),
                "grad_norm": m.get("grad_norm", 0.0),
            }
        )
        print(json.dumps({"step": step, **row}), flush=True)
        rows.append(row)
    steady = rows[1:] or rows
    mean = {
        k: round(sum(r[k] for r in steady) / len(steady), 3)
        for k in ("time/step", "time/rollout", "time/train", "time/bare_dit", "overhead_ratio", "images_per_s")
    }
    label = (
        args.label
        or (f"lora{args.lora}" if args.lora else "full")
        + f"-gc_{args.gradient_checkpointing}"
        + f"-fused_{args.fused_optimizer}"
        + ("-compile" if args.compile else "")
        + f"-beta{args.beta:g}"
    )
    result = {
        "label": label,
        "gpu": gpu_name,
        "torch": torch.__version__,
        "build_s": round(build_s, 1),
        "peak_cuda_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_tflops": {"spec_bf16": peak_spec, "measured_gemm_bf16": round(peak_gemm, 1)},
        "useful_tflop_per_step": {k: float(f"{v / 1e12:.4g}") for k, v in flops.items()},
        "first_update_ratio": {"min": rows[0]["ratio/min"], "max": rows[0]["ratio/max"]},
        "gradient_checkpointing_used": trainer.gradient_checkpointing,
        "params": {
            "vlm": sum(p.numel() for p in policy.lmm.parameters()),
            "dit": sum(p.numel() for p in policy.transformer.parameters()),
            "trainable": sum(p.numel() for _, p in trainer.trainable),
        },
        "settings": {
            "images_per_step": 8,
            "micro_batch": args.micro,
            "num_steps": args.num_steps,
            "trained_steps_per_sample": trainer.train_steps_per_sample,
            "size": cfg.rl.height,
            "bf16": cuda,
            "beta": args.beta,
            "lora_rank": args.lora,
            "compile": args.compile,
        },
        "mean_after_warmup": mean,
        "steps": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[label] = result
    out.write_text(json.dumps(runs, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
