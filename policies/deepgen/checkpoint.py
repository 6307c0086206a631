"""Loading DeepGen checkpoints in the released layouts.

Flat state dicts (``.safetensors`` / ``.pt`` / ``.bin``, possibly wrapped in ``{"state_dict": ...}``
or ``{"module": ...}``), or a directory holding one. Keys: ``meta_queries``,
``projector_{1,2,3}.*``, ``connector.layers.{i}...``, ``transformer.<diffusers SD3 names>``, VLM
LoRA as ``lmm.model.language_model.layers.{i}...lora_{A,B}.default.weight`` — or, from older
transformers, ``lmm.model.layers...`` / ``lmm.model.embed_tokens`` / ``lmm.visual...``, which are
rewritten to the current names. VAE and base VLM weights are never in them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "checkpoint.pt", "deepgen.safetensors")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def _find_file(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                return [path / name]
        shards = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pt")) or sorted(path.glob("*.bin"))
        if shards:
            return shards
    raise CheckpointError(f"no checkpoint at {path}: expected a .safetensors/.pt file or a folder holding one")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{key: tensor}`` from a file or folder of the released formats."""
    state: dict[str, torch.Tensor] = {}
    for f in _find_file(Path(path)):
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            part: Any = load_file(str(f))
        else:
            part = torch.load(str(f), map_location="cpu", weights_only=False)
        for wrapper in ("state_dict", "module", "model"):
            if isinstance(part, dict) and wrapper in part and isinstance(part[wrapper], dict):
                part = part[wrapper]
        if not isinstance(part, dict):
            raise CheckpointError(f"{f} does not hold a state dict (found {type(part).__name__})")
        state.update({k: v for k, v in part.items() if isinstance(v, torch.Tensor)})
    return state


_RENAMES = [
    (re.compile(r"^module\."), ""),
    (re.compile(r"^lmm\.model\.(layers|embed_tokens|norm)\."), r"lmm.model.language_model.\1."),
    (re.compile(r"^lmm\.visual\."), "lmm.model.visual."),
    (re.compile(r"^lmm\.base_model\.model\."), "lmm."),
]


def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rewrite the older layouts to the current module names (idempotent)."""
    out = {}
    for k, v in state.items():
        for pattern, repl in _RENAMES:
            k = pattern.sub(repl, k)
        out[k] = v
    return out


def load_deepgen_checkpoint(model: torch.nn.Module, path: str | Path, *, strict_prefixes: tuple[str, ...] = (),
                            ignore_prefixes: tuple[str, ...] = ("vae.",)) -> dict[str, list[str]]:
    """Load a released (or our flat) DeepGen checkpoint into ``model`` (a DeepGen policy).

    Loads every key it knows; returns ``{"loaded", "missing", "unexpected"}``. ``missing`` lists
    the model keys under ``strict_prefixes`` that the checkpoint lacks; a non-empty ``missing``
    or any ``unexpected`` key raises :class:`CheckpointError` naming them.
    """
    state = normalise_keys(read_state_dict(path))
    own = model.state_dict()
    loaded, unexpected, mismatched = [], [], []
    for k, v in state.items():
        if k.startswith(ignore_prefixes):
            continue
        if k not in own:
            unexpected.append(k)
        elif own[k].shape != v.shape:
            mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        else:
            loaded.append(k)
    missing = [k for k in own if k.startswith(strict_prefixes) and k not in state] if strict_prefixes else []
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:3]}")
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit the model: " + "; ".join(problems) +
                              ". Fix: check the base models (vlm/transformer) and the LoRA settings match the checkpoint.")
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(state[k].to(own[k].dtype))
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected}
