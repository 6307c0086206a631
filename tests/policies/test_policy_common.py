"""The shared policy helpers (``policies/common.py``, ``policies/tiny_models.py``) and the layering rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from mrgrpo.config import LoRAConfig
from mrgrpo.policies.common import (
    DIT_LORA_TARGETS,
    CheckpointError,
    prefix_bare_keys,
    read_state_dict,
    resolve_dtype,
    strip_wrapper_prefixes,
)

POLICIES_DIR = Path(__file__).resolve().parents[2] / "policies"
SHARED = {"base", "common", "dit_policy", "packed_latents", "tiny_models"}  # modules every policy may import


def test_resolve_dtype_names_and_error():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("half")


def test_one_lora_default_for_recipes_and_policies():
    assert LoRAConfig().target_modules == list(DIT_LORA_TARGETS)
    assert len(DIT_LORA_TARGETS) == 8 and {"to_q", "add_q_proj", "to_add_out"} <= set(DIT_LORA_TARGETS)


def test_state_dict_key_helpers(tmp_path):
    from safetensors.torch import save_file

    lin = torch.nn.Linear(2, 3)
    save_file({f"module.{k}": v.contiguous() for k, v in lin.state_dict().items()}, str(tmp_path / "w.safetensors"))
    state = strip_wrapper_prefixes(read_state_dict(tmp_path / "w.safetensors"))
    assert sorted(state) == ["bias", "weight"]
    assert sorted(prefix_bare_keys(state, lin, "transformer.")) == ["transformer.bias", "transformer.weight"]
    # keys that are not all the module's own stay as they are
    assert prefix_bare_keys({"other": state["bias"]}, lin, "transformer.") == {"other": state["bias"]}
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        read_state_dict(tmp_path / "absent.pt")


def _policy_package(path: Path) -> str:
    rel = path.relative_to(POLICIES_DIR)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem.removesuffix("_tiny")


def test_no_policy_imports_another_policys_internals():
    """A policy module imports only the shared modules and its own package (tiny builders: their own policy)."""
    problems = []
    for path in sorted(POLICIES_DIR.rglob("*.py")):
        own = _policy_package(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("mrgrpo.policies."):
                continue
            target = node.module.split(".")[2]
            if target in SHARED or target == own:
                continue
            problems.append(f"{path.name} imports {node.module}")
    assert not problems, problems
