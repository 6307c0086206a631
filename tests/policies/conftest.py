import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One cache folder per test session for the tiny model files (built once, loaded many times)."""
    path = tmp_path_factory.mktemp("mrgrpo-cache")
    os.environ["MRGRPO_CACHE"] = str(path)
    return Path(path)


@pytest.fixture
def build(tiny_cache):
    from mrgrpo.registry import POLICIES

    def make(name, **kwargs):
        torch.manual_seed(0)
        return POLICIES.build(name, **kwargs)

    return make
