"""DeepGen's weights: the VLM LoRA, and saving / loading the SCB, the VLM LoRA and released checkpoints.

:class:`DeepGenWeights` is the part of :class:`~mrgrpo.policies.deepgen.policy.DeepGenPolicy` that deals with
weights on disk and the VLM adapter; the model itself (VLM + SCB + DiT) is built and run by the policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrgrpo.policies.deepgen.checkpoint import (
    SCB_PREFIXES,
    LoadReport,
    fetch_checkpoint_from_hub,
    load_deepgen_checkpoint,
)
from mrgrpo.policies.dit_policy import (
    DiTPolicy,
    load_adapter_state,
    lora_config,
    read_adapter,
    save_adapter,
)

VLM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: default VLM LoRA (SFT stage): language-model linear layers + embed_tokens, never the ViT
VLM_LORA_DEFAULT = {
    "rank": 64,
    "alpha": 128,
    "dropout": 0.05,
    "target_modules": r".*language_model.*\.(" + "|".join(VLM_LORA_TARGETS + ("embed_tokens",)) + ")",
}


class DeepGenWeights(DiTPolicy):
    """VLM LoRA and persistence of a DeepGen policy (the subclass builds ``lmm``, the SCB and the DiT)."""

    lmm: Any
    meta_queries: nn.Parameter
    vlm_lora: dict | None
    mask_padding: bool
    scb_layers: list[int]

    def scb_modules(self) -> dict[str, nn.Module]:
        """The SCB's trainable modules by name (projectors and connector; the think tokens are ``meta_queries``)."""
        raise NotImplementedError

    # -- VLM LoRA ----------------------------------------------------------------------------------
    def has_vlm_lora(self) -> bool:
        return self.vlm_lora is not None

    def add_vlm_lora(self, spec: dict[str, Any]) -> None:
        """Inject a LoRA (adapter ``default``, gaussian init as released) into the VLM; frozen until a stage trains it.

        Keys then read ``lmm.model.language_model.layers.{i}.self_attn.q_proj.lora_A.default.weight``
        (the released layout).
        """
        from peft import inject_adapter_in_model

        if self.has_vlm_lora():
            raise RuntimeError("the VLM already has a LoRA")
        config = lora_config(spec, VLM_LORA_DEFAULT["target_modules"], init="gaussian")
        inject_adapter_in_model(config, self.lmm, adapter_name="default")
        self.lmm.peft_config = {"default": config}
        targets = config.target_modules
        self.vlm_lora = {
            "rank": config.r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "target_modules": sorted(targets) if isinstance(targets, (set, list)) else targets,
            "rank_pattern": dict(config.rank_pattern or {}),
        }
        for n, p in self.lmm.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
                p.requires_grad_(False)
        self.train(self.training)  # new LoRA modules (dropout) follow the policy's train/eval mode

    # -- persistence ---------------------------------------------------------------------------------
    def trained_components(self) -> list[str]:
        out = []
        if self.meta_queries.requires_grad or any(
            p.requires_grad for m in self.scb_modules().values() for p in m.parameters()
        ):
            out.append("scb")
        out += super().trained_components()
        if any(p.requires_grad for n, p in self.lmm.named_parameters() if "lora_" in n):
            out.append("vlm_lora")
        return out

    def scb_state(self) -> dict[str, torch.Tensor]:
        """Think tokens, projectors and connector under the released key names, float32 on CPU."""
        return {
            k: v.detach().float().cpu().contiguous()
            for k, v in self.state_dict().items()
            if k == "meta_queries" or k.startswith(SCB_PREFIXES)
        }

    def _save_component(self, name: str, directory: Path) -> None:
        if name == "scb":
            from safetensors.torch import save_file

            save_file(self.scb_state(), str(directory / "scb.safetensors"), metadata={"format": "pt"})
        elif name == "vlm_lora":
            save_adapter(self.lmm, self.lmm.peft_config["default"], directory / "vlm_lora")
        else:
            super()._save_component(name, directory)

    def _load_component(self, name: str, directory: Path) -> None:
        if name == "scb":
            load_deepgen_checkpoint(self, directory / "scb.safetensors")
        elif name == "vlm_lora":
            config, state = read_adapter(directory / "vlm_lora")
            if not self.has_vlm_lora():
                self.add_vlm_lora(
                    {
                        "rank": config.r,
                        "alpha": config.lora_alpha,
                        "dropout": config.lora_dropout,
                        "target_modules": config.target_modules,
                        "rank_pattern": config.rank_pattern,
                    }
                )
            load_adapter_state(self.lmm, state, str(directory / "vlm_lora"))
        else:
            super()._load_component(name, directory)

    def policy_info(self, components: list[str]) -> dict[str, Any]:
        return {
            **super().policy_info(components),
            "vlm_lora": self.vlm_lora,
            "mask_padding": self.mask_padding,
            "scb_layers": self.scb_layers,
        }

    def load(self, path: str) -> None:
        """Load a :meth:`save` folder, or a released DeepGen checkpoint (file, folder or hub id).

        Released checkpoints load through :func:`load_deepgen_checkpoint` (both key layouts; all-or-nothing
        per component; an RL checkpoint holding only the DiT loads on top of the SFT one loaded before).
        """
        p = Path(path)
        if (p / "policy.json").is_file():
            self._load_saved(p)
            return
        if not p.exists():
            p = Path(fetch_checkpoint_from_hub(str(path)))
        self.load_weights_file(str(p))

    def load_weights_file(self, path: str, info: dict | None = None) -> LoadReport:
        """A flat released-layout state dict (file or folder): see :func:`load_deepgen_checkpoint`."""
        if info and info.get("dit_lora") and self.dit_lora is None:
            self.add_dit_lora(info["dit_lora"])
        report = load_deepgen_checkpoint(self, path)
        self._record_load(path, report.components)
        return report
