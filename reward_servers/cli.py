"""``mrgrpo serve``: serve a registered reward over HTTP, or launch the vLLM judge server.

mrgrpo serve ocr --port 8100 --kw mode=multi              # any registered reward / dotted path
mrgrpo serve clip --config clip.yaml --token "$TOKEN"      # kwargs from YAML, bearer token
mrgrpo serve unifiedreward-think --model CodeGoat24/UnifiedReward-Think-qwen3vl-8b --tp 1 --dp 8 --port 8000
mrgrpo serve unifiedreward-think --model /models/judge --dry-run   # print the vllm command
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import sys
from typing import Any

JUDGES = ("unifiedreward-think", "unifiedreward_think", "unifiedreward_point", "unifiedreward-point")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "reward", help="registered reward name or dotted path 'pkg.module:factory' (see `mrgrpo rewards list`)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default loopback; another address needs --token, or --insecure)",
    )
    p.add_argument("--port", type=int, default=None, help="port (default 8100; 8000 for the vLLM judge)")
    p.add_argument(
        "--max-batch", type=int, default=64, help="most images per reward call (concurrent requests are merged)"
    )
    p.add_argument(
        "--token", default=None, help="require 'Authorization: Bearer TOKEN' on /v1/score (turns the docs pages off)"
    )
    p.add_argument("--insecure", action="store_true", help="allow binding a non-loopback --host without --token")
    p.add_argument(
        "--kw",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reward keyword argument, value parsed as YAML; repeatable",
    )
    p.add_argument(
        "--config", default=None, help="YAML file of reward keyword arguments (a mapping, or {kwargs: {...}})"
    )
    p.add_argument("--max-images", type=int, default=256, help="most images per request")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="most pixels per image")
    p.add_argument(
        "--max-request-pixels",
        type=int,
        default=2**26,
        help="most pixels of all the images of one request, checked from the headers before decoding "
        "(default 2**26: 256 MiB decoded)",
    )
    p.add_argument(
        "--max-inflight-pixels",
        type=int,
        default=None,
        help="most decoded pixels held by all requests at once; others wait (default 2x --max-request-pixels)",
    )
    p.add_argument("--max-body-mb", type=float, default=64.0, help="request body size limit (MiB)")
    p.add_argument(
        "--read-timeout",
        type=float,
        default=60.0,
        help="seconds a client has to send a whole request (headers and body); then it is disconnected",
    )
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    g = p.add_argument_group("vLLM judge (unifiedreward-think / unifiedreward_point with --model)")
    g.add_argument(
        "--model",
        default=None,
        help="judge weights (local path or hub id): launches `vllm serve` instead of a reward server",
    )
    g.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    g.add_argument("--dp", type=int, default=1, help="data parallel size (replicas)")
    g.add_argument(
        "--served-model-name", default=None, help="name clients send as `model` (default: the model's basename)"
    )
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument(
        "--images-per-prompt",
        type=int,
        default=None,
        help="vLLM --limit-mm-per-prompt (default 2 pairwise, 1 pointwise)",
    )
    g.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="disable vLLM prefix caching (on by default: the template repeats)",
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="pass --trust-remote-code to vLLM (runs code shipped with the model)",
    )
    g.add_argument("--api-key", default=None, help="vLLM --api-key (clients then send it as api_key)")
    g.add_argument("--vllm-args", default="", help="extra arguments for `vllm serve`, one shell-quoted string")
    g.add_argument("--wait-timeout", type=float, default=1800.0, help="seconds to wait for the judge's /health")
    g.add_argument("--dry-run", action="store_true", help="print what would run (the vllm command line) and exit")


def reward_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments from ``--config`` then ``--kw`` (later wins); SystemExit with a message on bad input."""
    import yaml

    kwargs: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as exc:
            raise SystemExit(f"error: --config {args.config}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise SystemExit(f"error: --config {args.config} is not valid YAML: {exc}") from None
        if (
            isinstance(loaded, dict)
            and set(loaded) <= {"name", "kwargs", "batch_size"}
            and isinstance(loaded.get("kwargs"), dict)
        ):
            loaded = loaded["kwargs"]  # a reward entry of a recipe: {name: ..., kwargs: {...}}
        if not isinstance(loaded, dict):
            raise SystemExit(f"error: --config {args.config} must hold a mapping of reward keyword arguments")
        kwargs.update(loaded)
    for item in args.kw:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: --kw {item!r}: expected KEY=VALUE")
        try:
            kwargs[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise SystemExit(f"error: --kw {item!r}: value is not valid YAML: {exc}") from None
    return kwargs


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _run_judge(args: argparse.Namespace) -> int:
    from mrgrpo.reward_servers.vllm import build_vllm_command, launch

    pointwise = "point" in args.reward
    port = args.port or 8000
    try:
        cmd = build_vllm_command(
            args.model,
            host=args.host,
            port=port,
            served_model_name=args.served_model_name,
            tensor_parallel=args.tp,
            data_parallel=args.dp,
            images_per_prompt=args.images_per_prompt or (1 if pointwise else 2),
            prefix_caching=not args.no_prefix_caching,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            trust_remote_code=args.trust_remote_code,
            api_key=args.api_key,
            extra=shlex.split(args.vllm_args),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(" ".join(shlex.quote(c) for c in cmd))
        return 0
    try:
        proc = launch(
            cmd,
            f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{port}/health",
            args.wait_timeout,
        )
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"judge ready at http://{args.host}:{port}/v1 (OpenAI API); reward kwargs: base_url: http://{args.host}:{port}/v1",
        flush=True,
    )
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=30)
        except Exception:
            proc.kill()
            return 130


def run(args: argparse.Namespace) -> int:
    if args.model:
        if args.reward not in JUDGES:
            print(
                f"error: --model launches the vLLM judge; it applies to {', '.join(JUDGES[:3])}, not {args.reward!r}",
                file=sys.stderr,
            )
            return 2
        return _run_judge(args)
    kwargs = reward_kwargs(args)
    port = args.port or 8100
    sizes = (
        args.max_batch,
        args.max_images,
        args.max_pixels,
        args.max_request_pixels,
        args.max_body_mb,
        args.read_timeout,
        1 if args.max_inflight_pixels is None else args.max_inflight_pixels,
    )
    if min(sizes) <= 0:
        print(
            "error: --max-batch, --max-images, --max-pixels, --max-request-pixels, --max-inflight-pixels, "
            "--max-body-mb "
            "and --read-timeout must be positive",
            file=sys.stderr,
        )
        return 2
    if not _is_loopback(args.host):
        if not args.token and not args.insecure:
            print(
                f"error: --host {args.host} would expose the reward server beyond this machine without a token; "
                "set --token (clients send it as `token`), or pass --insecure on a network you trust",
                file=sys.stderr,
            )
            return 2
        print(
            f"warning: binding {args.host} exposes the reward server beyond this machine"
            + ("" if args.token else " with no token (--insecure)"),
            file=sys.stderr,
        )
    if args.dry_run:
        print(f"would serve reward {args.reward!r} on http://{args.host}:{port} with kwargs {kwargs}")
        return 0

    from mrgrpo.registry import RegistryError
    from mrgrpo.rewards.base import build_reward

    try:
        reward = build_reward(args.reward, kwargs)
    except (RegistryError, TypeError, ValueError, ImportError) as exc:
        print(f"error: cannot build reward {args.reward!r}: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from mrgrpo.reward_servers.app import ServerLimits, create_app
    from mrgrpo.reward_servers.protocol import protocol_with_timeout

    limits = ServerLimits(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_images=args.max_images,
        max_pixels=args.max_pixels,
        max_request_pixels=args.max_request_pixels,
        max_inflight_pixels=args.max_inflight_pixels,
    )
    _setup_logging(args.log_level)
    app = create_app(reward, name=args.reward, max_batch=args.max_batch, token=args.token, limits=limits)
    print(f"serving reward {args.reward!r} on http://{args.host}:{port} (POST /v1/score, GET /health)", flush=True)
    config = uvicorn.Config(
        app, host=args.host, port=port, log_level=args.log_level, http=protocol_with_timeout(args.read_timeout)
    )
    uvicorn.Server(config).run()
    return 0


def _setup_logging(level: str) -> None:
    """One line per event of the server's own log (``mrgrpo.serve``) on stderr."""
    import logging

    logger = logging.getLogger("mrgrpo.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    value = logging.getLevelName(str(level).upper())
    logger.setLevel(value if isinstance(value, int) else logging.WARNING)
