"""Start `mrgrpo serve` on a free loopback port (tests and benchmarks)."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _drain(proc: subprocess.Popen) -> None:
    for line in iter(proc.stdout.readline, b""):
        proc.log.append(line.decode("utf-8", "replace"))


def launch(*args: str) -> tuple[subprocess.Popen, str]:
    """`mrgrpo serve ...` in a subprocess on a free loopback port, not yet ready; (proc, base_url).

    The server's output is collected in ``proc.log`` (a list of lines) by a thread, so it never blocks
    on a full pipe. The helper reward module of these tests (srv_toy_rewards) is importable in the server.
    """
    port = free_port()
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrgrpo.cli", "serve", *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    proc.log = []
    threading.Thread(target=_drain, args=(proc,), daemon=True).start()
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"server exited: {''.join(proc.log)[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError("server did not start")
    except BaseException:
        proc.kill()
        proc.wait(timeout=10)
        raise


def start_server(*args: str, timeout: float = 60.0):
    """`mrgrpo serve ...` in a subprocess on a free loopback port, ready; returns (proc, base_url)."""
    proc, url = launch(*args)
    wait_ready(proc, url, timeout)
    return proc, url
