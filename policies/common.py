"""Helpers every policy may use: dtype names, the default DiT LoRA targets, and reading weight files.

Nothing here is specific to one model; policies import these instead of each other's internals.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where used: the recipe schema reads DIT_LORA_TARGETS without it
    import torch

#: Default DiT LoRA targets: the joint-attention projections of both streams (image ``to_*``,
#: text ``add_*``), as flow_grpo's SD3 LoRA (r 32, alpha 64). The recipe field
#: ``train.lora.target_modules`` defaults to this list; FLUX recipes add the feed-forward layers
#: as flow_grpo's FLUX LoRA does. Module names match diffusers' SD3 / FLUX / Qwen-Image DiTs.
DIT_LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``torch.dtype`` of a name (``float32 | fp32 | bfloat16 | bf16 | float16 | fp16``) or a dtype."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return getattr(torch, _DTYPES[name])


_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.pt",
    "model.pth",
    "checkpoint.pt",
    "deepgen.safetensors",
)
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_SHARD = re.compile(r".*-\d{5}-of-\d{5}\.(safetensors|bin)$")
_WRAPPER_PREFIX = re.compile(r"^(module|_orig_mod)\.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def find_weight_files(path: Path) -> list[Path]:
    """The weight file(s) at ``path`` (a file, or a folder holding one or several shards)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                return [path / name]
        found = sorted(f for suffix in _WEIGHT_SUFFIXES for f in path.rglob(f"*{suffix}") if ".cache" not in f.parts)
        shards = [f for f in found if _SHARD.match(f.name)]
        if shards and len(shards) == len(found):
            return shards
        if len(found) == 1:
            return found
        if found:  # e.g. the hub repo holding the pre-training, SFT and RL checkpoints side by side
            listing = "\n    ".join(str(f.relative_to(path)) for f in found[:30])
            raise CheckpointError(f"{path} holds several checkpoints; name one of them:\n    {listing}")
        raise CheckpointError(f"no weight file in folder {path} (looked for {', '.join(_WEIGHT_SUFFIXES)} files)")
    raise CheckpointError(
        f"no checkpoint at {path}: expected a .safetensors/.pt/.pth/.bin file or a folder holding one"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{key: tensor}`` (keys as written) from a file or folder of the released formats."""
    import torch

    state: dict[str, torch.Tensor] = {}
    for f in find_weight_files(Path(path)):
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            part: Any = load_file(str(f))
        else:
            try:
                part = torch.load(str(f), map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 -- older pickles with non-tensor metadata (mmengine, DeepSpeed)
                part = torch.load(str(f), map_location="cpu", weights_only=False)
        for wrapper in ("state_dict", "module", "model"):
            if isinstance(part, dict) and wrapper in part and isinstance(part[wrapper], dict):
                part = part[wrapper]
        if not isinstance(part, dict):
            raise CheckpointError(f"{f} does not hold a state dict (found {type(part).__name__})")
        state.update({k: v for k, v in part.items() if isinstance(v, torch.Tensor)})
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    return state


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the ``module.`` (DDP / DeepSpeed) or ``_orig_mod.`` (``torch.compile``) prefix."""
    return {_WRAPPER_PREFIX.sub("", k): v for k, v in state.items()}


def prefix_bare_keys(state: dict[str, torch.Tensor], module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``prefix + key`` for a state dict of ``module`` saved on its own (every key a name of ``module``)."""
    own: Any = module.state_dict()
    if state and not any(k.startswith(prefix) for k in state) and all(k in own for k in state):
        return {prefix + k: v for k, v in state.items()}
    return state
