"""Toy-world tests: the tiny model files go to one temporary cache per session."""

import os

import pytest
import torch

# one thread: on a shared CPU, two OpenMP threads of these tiny ops spin-wait (measured 30x slower wall clock)
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def toy_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("mrgrpo-cache")
    old = os.environ.get("MRGRPO_CACHE")
    os.environ["MRGRPO_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MRGRPO_CACHE", None)
    else:
        os.environ["MRGRPO_CACHE"] = old
