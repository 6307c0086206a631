"""``mrgrpo serve``: serve a registered reward over HTTP, or launch the vLLM judge server."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

JUDGES = ("unifiedreward-think", "unifiedreward_think", "unifiedreward_point")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reward", help="registered reward name or dotted path (see `mrgrpo rewards list`)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--max-batch", type=int, default=64, help="images per reward call (concurrent requests are merged)")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    p.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE", help="reward keyword argument (YAML value), repeatable")
    p.add_argument("--config", default=None, help="YAML file of reward keyword arguments")
    p.add_argument("--max-images", type=int, default=256, help="images per request")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="pixels per image")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="request body size limit")
    g = p.add_argument_group("vLLM judge (unifiedreward-think with --model)")
    g.add_argument("--model", default=None, help="judge weights (path or hub id): launches `vllm serve` instead of a reward server")
    g.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    g.add_argument("--dp", type=int, default=1, help="data parallel size")
    g.add_argument("--served-model-name", default=None)
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--dry-run", action="store_true", help="print the vllm command and exit")


def reward_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    kwargs: dict[str, Any] = {}
    if args.config:
        kwargs.update(yaml.safe_load(open(args.config)) or {})
    for item in args.kw:
        if "=" not in item:
            raise SystemExit(f"error: --kw {item!r}: expected KEY=VALUE")
        key, _, value = item.partition("=")
        kwargs[key.strip()] = yaml.safe_load(value)
    return kwargs


def run(args: argparse.Namespace) -> int:
    if args.reward in JUDGES and args.model:
        from mrgrpo.reward_servers.vllm import build_vllm_command, launch

        cmd = build_vllm_command(args.model, host=args.host, port=args.port, served_model_name=args.served_model_name,
                                 tensor_parallel=args.tp, data_parallel=args.dp, prefix_caching=not args.no_prefix_caching,
                                 gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len)
        if args.dry_run:
            print(" ".join(shlex.quote(c) for c in cmd))
            return 0
        proc = launch(cmd, f"http://{args.host}:{args.port}/health")
        print(f"judge ready at http://{args.host}:{args.port}/v1 (OpenAI API)", flush=True)
        return proc.wait()
    if args.dry_run:
        print(f"would serve reward {args.reward!r} on http://{args.host}:{args.port} with {reward_kwargs(args)}")
        return 0

    import uvicorn

    from mrgrpo.reward_servers.app import ServerLimits, create_app
    from mrgrpo.rewards.base import build_reward

    reward = build_reward(args.reward, reward_kwargs(args))
    limits = ServerLimits(max_body_bytes=int(args.max_body_mb * 2**20), max_images=args.max_images, max_pixels=args.max_pixels)
    app = create_app(reward, name=args.reward, max_batch=args.max_batch, token=args.token, limits=limits)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
