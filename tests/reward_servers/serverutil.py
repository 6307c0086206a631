"""Start `mrgrpo serve` on a free loopback port (tests and benchmarks)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str, timeout: float = 60.0):
    """`mrgrpo serve ...` in a subprocess on a free loopback port; returns (proc, base_url).

    The helper reward module of these tests (srv_toy_rewards) is importable in the server.
    """
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "mrgrpo.cli", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError("server did not start")
    except BaseException:
        proc.kill()
        proc.wait(timeout=10)
        raise
