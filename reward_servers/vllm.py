"""Launch ``vllm serve`` for the UnifiedReward-Think judge (OpenAI-compatible API) and wait for it."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Sequence


def build_vllm_command(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    tensor_parallel: int = 1,
    data_parallel: int = 1,
    images_per_prompt: int = 2,
    prefix_caching: bool = True,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    trust_remote_code: bool = False,
    api_key: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``vllm serve`` command line for the judge (the pairwise judge sends 2 images per prompt).

    Serves the OpenAI API at ``http://host:port/v1`` under ``served_model_name`` (default: the
    model's basename), with ``--limit-mm-per-prompt {"image": N}``, prefix caching (the long
    template is shared by every request), and tensor / data parallelism.
    """
    if not model:
        raise ValueError("--model is required: a local path or hub id of the judge weights")
    if tensor_parallel < 1 or data_parallel < 1:
        raise ValueError("--tp and --dp must be >= 1")
    if images_per_prompt < 1:
        raise ValueError("--images-per-prompt must be >= 1")
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError("--gpu-memory-utilization must be in (0, 1]")
    cmd = [
        "vllm",
        "serve",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        served_model_name or model.rstrip("/").split("/")[-1],
        "--tensor-parallel-size",
        str(tensor_parallel),
        "--data-parallel-size",
        str(data_parallel),
        "--limit-mm-per-prompt",
        json.dumps({"image": images_per_prompt}),
        "--gpu-memory-utilization",
        str(gpu_memory_utilization),
    ]
    cmd.append("--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching")
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    if api_key:
        cmd += ["--api-key", api_key]
    return cmd + list(extra)


def wait_healthy(
    url: str, timeout: float = 1800.0, proc: subprocess.Popen | None = None, interval: float = 2.0
) -> None:
    """Poll ``url`` (e.g. ``http://127.0.0.1:8000/health``) until it answers 200; raise if the process dies or
    time runs out."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before becoming healthy")
        try:
            if httpx.get(url, timeout=5.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{url} did not become healthy within {timeout:.0f} s")


def launch(cmd: list[str], health_url: str, timeout: float = 1800.0) -> subprocess.Popen:
    """Start ``cmd`` and return once ``health_url`` answers."""
    print("starting:", " ".join(shlex.quote(c) for c in cmd), flush=True)
    try:
        proc = subprocess.Popen(cmd)
    except FileNotFoundError as exc:
        raise RuntimeError("`vllm` is not installed here. Fix: pip install 'mrgrpo[vllm]' on a GPU machine.") from exc
    try:
        wait_healthy(health_url, timeout, proc)
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return proc
