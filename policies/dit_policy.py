"""What every VAE + flow-matching-DiT policy shares: latents <-> pixels, sigmas, DiT LoRA, the
reference model, generation, and saving / loading the trained weights.

Subclasses set ``transformer``, ``vae``, ``scheduler``, ``frozen_dtype``, ``timestep_shift``,
``policy_name``, ``policy_kwargs`` and implement ``encode``, ``velocity``, ``flow_matching_loss``,
``set_stage`` (and, for extra trained parts, :meth:`DiTPolicy.trained_components` /
:meth:`DiTPolicy._save_component` / :meth:`DiTPolicy._load_component`).

Save folder layout (``save(dir)``; only what trains is written)::

    policy.json                 {"name", "kwargs", "stage", "components", "dit_lora", "lineage", ...}
    transformer/                the full DiT (diffusers ``save_pretrained``: config.json + safetensors)
    transformer_lora/           a DiT LoRA as peft adapter files (adapter_config.json + adapter_model.safetensors)
    ...                         subclass components (DeepGen: scb.safetensors, vlm_lora/)

``lineage`` lists the weights loaded into the policy before it was saved that the folder does not
supersede (e.g. the SFT checkpoint under an RL run that trains only the DiT); :meth:`load` loads
them first, so a saved folder is self-describing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mrgrpo.devices import randn
from mrgrpo.losses import add_flow_noise, flow_matching_loss, sample_flow_sigmas
from mrgrpo.policies.base import STAGES, Conditioning, DiffusionPolicy
from mrgrpo.policies.common import DIT_LORA_TARGETS, prefix_bare_keys, read_state_dict, strip_wrapper_prefixes

if TYPE_CHECKING:
    from mrgrpo.sft_data.batch import SFTBatch

log = logging.getLogger("mrgrpo.policies")

SAVE_FORMAT = 2


def lora_config(spec: dict[str, Any], default_targets: Any, init: str | bool = "gaussian"):
    """A peft ``LoraConfig`` from ``{rank, alpha, dropout, target_modules, rank_pattern}``."""
    from peft import LoraConfig

    unknown = set(spec) - {"rank", "alpha", "dropout", "target_modules", "rank_pattern", "enabled"}
    if unknown:
        raise ValueError(f"unknown LoRA option(s) {sorted(unknown)}; use rank, alpha, dropout, target_modules")
    rank = int(spec.get("rank", 32))
    return LoraConfig(
        r=rank,
        lora_alpha=float(spec.get("alpha", 2 * rank)),
        lora_dropout=float(spec.get("dropout", 0.0)),
        target_modules=spec.get("target_modules") or default_targets,
        rank_pattern=dict(spec.get("rank_pattern") or {}),
        init_lora_weights=init,
    )


def save_adapter(module: torch.nn.Module, config: Any, directory: Path) -> None:
    """Write ``module``'s ``default`` LoRA as peft adapter files (``adapter_config.json`` +
    ``adapter_model.safetensors``)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(module, adapter_name="default", save_embedding_layers=False)
    save_file(
        {f"base_model.model.{k}": v.detach().float().cpu().contiguous() for k, v in state.items()},
        str(directory / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    config.save_pretrained(str(directory))


def read_adapter(directory: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(LoraConfig, state)`` of peft adapter files; state keys without the ``base_model.model.`` prefix."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(str(directory))
    state = load_file(str(directory / "adapter_model.safetensors"))
    return config, {k.removeprefix("base_model.model."): v for k, v in state.items()}


def load_adapter_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy a peft adapter state into ``module``'s ``default`` adapter; every LoRA tensor must fit."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(module, state, adapter_name="default")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise RuntimeError(
            f"LoRA adapter {where} does not fit: missing {missing[:10]}, unexpected {list(result.unexpected_keys)[:10]}"
        )


class DiTPolicy(DiffusionPolicy):
    """Base of policies made of a diffusers VAE, a flow-matching DiT and a FlowMatch scheduler."""

    # set by subclasses; declared so that mypy does not type them through nn.Module.__getattr__ (Tensor | Module).
    # The diffusers models and scheduler are Any: diffusers is untyped for mypy (not followed).
    transformer: Any
    vae: Any
    scheduler: Any
    frozen_dtype: torch.dtype
    policy_name: str
    policy_kwargs: dict[str, Any]

    dit_lora: dict | None = None
    _ref_transformer: Any = None
    _ref_device: torch.device | None = None  # where a pinned reference copy lives and runs (None: with the policy)
    _use_reference = False
    stage: str | None = None
    timestep_shift: float = 3.0
    #: registry family named in error messages (``sd3``, ``flux``, ...)
    family: str = "dit"
    #: human-readable model name in error messages
    model_label: str = "DiT"

    def _lineage(self) -> list[dict[str, Any]]:
        if "_loaded_from" not in self.__dict__:
            self.__dict__["_loaded_from"] = []
        return self.__dict__["_loaded_from"]

    def _record_load(self, path: str, components: list[str]) -> None:
        p = Path(path)
        where = str(p.resolve()) if p.exists() else str(path)
        self._lineage()[:] = [e for e in self._lineage() if e["path"] != where] + [
            {"path": where, "components": sorted(components)}
        ]

    def init_noise(self, batch: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.transformer.config
        grid = getattr(cfg, "pos_embed_max_size", None)  # SD3's learnt position table; RoPE DiTs have no limit
        largest = grid * cfg.patch_size * self.vae_scale_factor if grid else None
        if largest and max(height, width) > largest:
            raise ValueError(
                f"{height}x{width} is larger than this DiT's position grid allows ({largest} px per side); use a "
                "smaller size"
            )
        return super().init_noise(batch, height, width, generator)

    # -- latents <-> pixels ------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` float32 in [0, 1] from DiT latents ``[B, C, h, w]`` (un-scaled, un-shifted)."""
        cfg = self.vae.config
        x = latents.to(self.vae.device, self.vae.dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        return (self.vae.decode(x).sample.float() / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """DiT latents ``[B, C, H/f, W/f]`` float32 (posterior mode, shifted and scaled) of ``[B, 3, H, W]``
        in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_images takes [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        cfg = self.vae.config
        dist = self.vae.encode(images.to(self.vae.device, self.vae.dtype) * 2 - 1).latent_dist
        return ((dist.mode() - (cfg.shift_factor or 0.0)) * cfg.scaling_factor).float()

    def sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """``[num_steps + 1]`` float32 from 1 to 0: the scheduler's shifted sigmas
        (static shift ``scheduler.config.shift``: the same for every ``height x width``)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.scheduler.set_timesteps(num_steps)
        return self.scheduler.sigmas.float().cpu()

    def active_transformer(self):
        """The DiT to run: the frozen reference copy inside :meth:`reference`, else the trained one."""
        if self._use_reference and self._ref_transformer is not None:
            return self._ref_transformer
        return self.transformer

    # -- DiT training -------------------------------------------------------------------------
    def add_dit_lora(self, spec: dict[str, Any]) -> None:
        """Add a LoRA adapter (``default``) to the DiT: ``{rank, alpha, dropout, target_modules}``;
        frozen until trained."""
        if self.dit_lora is not None:
            raise RuntimeError(f"the DiT already has a LoRA ({self.dit_lora}); build a fresh policy for another one")
        config = lora_config(spec, list(DIT_LORA_TARGETS))
        self.transformer.add_adapter(config)
        self.dit_lora = {
            "rank": config.r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "target_modules": sorted(config.target_modules)
            if isinstance(config.target_modules, (set, list))
            else config.target_modules,
        }
        for n, p in self.transformer.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
                p.requires_grad_(False)
        self.train(self.training)  # new LoRA modules (dropout) follow the policy's train/eval mode

    def set_dit_only_stage(self, stage: str, lora: dict | None, frozen: str) -> None:
        """``set_stage`` of a policy whose only trainable part is the DiT (``sft`` and ``rl``).

        ``pretrain`` is refused with a message naming the frozen encoder (``frozen``, e.g. "its text
        encoders are frozen").
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if stage == "pretrain":
            raise ValueError(f"the {self.family} policy has no pre-training stage ({frozen}); use stage sft or rl")
        self.requires_grad_(False)
        self.train_dit(lora)
        self.stage = stage

    def dit_flow_matching_loss(
        self, batch: SFTBatch, generator: torch.Generator | None = None, *, references: bool = True
    ) -> torch.Tensor:
        """Flow-matching (SFT) loss of a batch on this DiT; the prompts (and, with ``references``, the batch's
        reference images) condition it. Noise and ``sigma`` (shift ``timestep_shift``) come from ``generator``,
        drawn on its own device."""
        with torch.no_grad():
            x0 = self.encode_images(batch.images.to(self.device))
        refs = batch.ref_images if references else None
        cond = self.encode(list(batch.prompts), refs if refs is not None and any(refs) else None).cond
        noise = randn(x0.shape, generator, device=x0.device)
        sigma = sample_flow_sigmas(x0.shape[0], shift=self.timestep_shift, generator=generator, device=x0.device)
        return flow_matching_loss(self.velocity(add_flow_noise(x0, noise, sigma), sigma, cond), x0, noise)

    def velocity_by_reference_shape(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        ref_latents: list[list[torch.Tensor]] | None,
        dit: Callable[[torch.Tensor, torch.Tensor, Conditioning, list[torch.Tensor] | None], torch.Tensor],
    ) -> torch.Tensor:
        """Velocity ``[B, C, h, w]`` (the DiT's dtype) of a batch whose samples may carry one reference latent
        of different shapes: ``dit(latents, sigma, cond, refs)`` runs once per group of equal reference shape
        (no padding, for DiTs without an attention mask over image tokens)."""
        if latents.ndim != 4 or sigma.shape != (latents.shape[0],):
            raise ValueError(
                f"velocity takes latents [B, C, h, w] and sigma [B], "
                f"got {tuple(latents.shape)} and {tuple(sigma.shape)}"
            )
        if len(cond) != latents.shape[0]:
            raise ValueError(
                f"conditioning holds {len(cond)} samples for {latents.shape[0]} latents (use cond.repeat(G))"
            )
        refs = ref_latents if ref_latents is not None else cond.items.get("ref_latents")
        if refs is not None and any(refs) and not self.supports_editing:
            raise ValueError(f"this {self.model_label} model takes no reference latents (it is text-to-image only)")
        keys = [tuple(refs[i][0].shape) if refs is not None and refs[i] else None for i in range(latents.shape[0])]
        ref_rows = refs or []  # a key is not None only where refs holds that sample's latents
        if len(set(keys)) == 1:
            return dit(latents, sigma, cond, [r[0] for r in ref_rows] if keys[0] else None)
        out = torch.empty_like(latents, dtype=next(self.active_transformer().parameters()).dtype)
        for key in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == key]
            sub = torch.as_tensor(idx, device=latents.device)
            sub_refs = [ref_rows[i][0] for i in idx] if key else None
            out[sub] = dit(latents[sub], sigma[sub], cond.select(idx), sub_refs)
        return out

    def train_dit(self, lora: dict | None) -> None:
        """Make the DiT trainable (float32): a LoRA on it when ``lora`` is given, else all of it."""
        if not lora or not lora.get("enabled", True):
            if self.dit_lora is not None:
                raise RuntimeError(
                    "this policy's DiT carries a LoRA: train it with set_stage(stage, lora=...) or build a fresh policy"
                )
            self.transformer.float().requires_grad_(True)
            return
        if self.dit_lora is None:
            self.add_dit_lora({k: v for k, v in lora.items() if k != "enabled"})
        for n, p in self.transformer.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
                p.requires_grad_(True)

    def enable_reference(self, device: str | torch.device | None = None) -> None:
        """Prepare :meth:`reference`: a frozen copy of the DiT (in ``frozen_dtype``) when all of it trains.

        ``device`` (``rl.reference_device``, e.g. ``"cpu"``) pins the copy there (inputs: :attr:`reference_device`).
        No-op for a DiT LoRA (the reference disables the adapter) or a frozen DiT. Call after
        :meth:`set_stage`, before wrapping the policy for DDP / DeepSpeed.
        """
        if self.dit_lora is not None or self._ref_transformer is not None:
            return
        if not any(p.requires_grad for p in self.transformer.parameters()):
            return
        pinned = torch.device(device) if device not in (None, "same") else None
        ref = copy.deepcopy(self.transformer).requires_grad_(False).to(pinned, self.frozen_dtype).eval()
        object.__setattr__(self, "_ref_transformer", ref)  # not a submodule: DDP, optimizers, state dicts skip it
        object.__setattr__(self, "_ref_device", pinned)

    @contextlib.contextmanager
    def reference(self) -> Iterator[DiTPolicy]:
        """Inside, :meth:`velocity` is the reference (initial) DiT's: adapters disabled, or the frozen copy.

        Conditioning is NOT recomputed: encode outside (the VLM / SCB are frozen in RL).
        A policy whose DiT is frozen is its own reference.
        """
        if self.dit_lora is not None:
            self.transformer.disable_adapters()
            try:
                yield self
            finally:
                self.transformer.enable_adapters()
            return
        if self._ref_transformer is None:
            if any(p.requires_grad for p in self.transformer.parameters()):
                raise RuntimeError("reference() needs enable_reference() first (the trainer calls it when rl.beta > 0)")
            yield self
            return
        if self._ref_device is None:
            self._ref_transformer.to(self.device)
        self._use_reference = True
        try:
            yield self
        finally:
            self._use_reference = False

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def compile_blocks(self) -> None:
        """Regional ``torch.compile``: every transformer block (and the frozen reference copy's) compiled in place.

        The blocks share one shape, so one compiled graph serves them all and compile time stays small
        next to compiling the whole DiT; the surrounding Python (embeddings, masking, LoRA toggles) stays eager.
        """
        for dit in (self.transformer, self._ref_transformer):
            if dit is not None:
                for block in dit.transformer_blocks:
                    block.compile()

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        images: list[list[Any]] | None = None,
        *,
        num_steps: int = 50,
        cfg_scale: float = 4.0,
        height: int = 512,
        width: int = 512,
        generator: torch.Generator | None = None,
        negative_prompt: str = "",
    ) -> list[Any]:
        """Euler ODE sampling with CFG (cond and uncond encoded in one batch and denoised in one batch).

        Args:
            prompts: B prompts; images: per prompt, a list of PIL reference images (editing) or None.
            height, width: multiples of 16. Returns B PIL images.
        """
        from mrgrpo.policies.base import tensor_to_images
        from mrgrpo.rollout import sample_ode

        noise = self.init_noise(len(prompts), height, width, generator)  # size errors before any model work
        enc = self.encode(prompts, images, negative_prompt=negative_prompt if cfg_scale > 1 else None)
        final = sample_ode(
            self.velocity,
            noise,
            self.sigmas(num_steps, height, width).to(self.device),
            enc.cond,
            uncond=enc.uncond,
            cfg_scale=cfg_scale,
        )
        return tensor_to_images(self.decode(final))

    # -- persistence ----------------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """Every parameter that currently trains (LoRA weights included), float32 on CPU."""
        return {n: p.detach().float().cpu().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def trained_components(self) -> list[str]:
        """Which parts train now: ``transformer`` (all of the DiT) and/or ``transformer_lora``."""
        out = []
        named = list(self.transformer.named_parameters())
        if any(p.requires_grad and "lora_" not in n for n, p in named):
            out.append("transformer")
        if any(p.requires_grad and "lora_" in n for n, p in named):
            out.append("transformer_lora")
        return out

    def _save_component(self, name: str, directory: Path) -> None:
        if name == "transformer":
            if self.dit_lora is not None:
                raise RuntimeError("cannot save a full DiT that also carries a LoRA")
            self.transformer.save_pretrained(str(directory / "transformer"), safe_serialization=True)
        elif name == "transformer_lora":
            save_adapter(self.transformer, self.transformer.peft_config["default"], directory / "transformer_lora")
        else:
            raise ValueError(f"unknown component {name!r}")

    def _load_component(self, name: str, directory: Path) -> None:
        if name == "transformer":
            from safetensors.torch import load_file

            files = sorted((directory / "transformer").glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{directory / 'transformer'} has no safetensors weights")
            state: dict[str, torch.Tensor] = {}
            for f in files:
                state.update(load_file(str(f)))
            result = self.transformer.load_state_dict(state, strict=False)
            missing = [k for k in result.missing_keys if "lora_" not in k]
            if missing or result.unexpected_keys:
                raise RuntimeError(
                    f"{directory / 'transformer'} does not fit the DiT: missing {missing[:10]}, "
                    f"unexpected {list(result.unexpected_keys)[:10]}"
                )
        elif name == "transformer_lora":
            config, state = read_adapter(directory / "transformer_lora")
            if self.dit_lora is None:
                self.add_dit_lora(
                    {
                        "rank": config.r,
                        "alpha": config.lora_alpha,
                        "dropout": config.lora_dropout,
                        "target_modules": config.target_modules,
                        "rank_pattern": config.rank_pattern,
                    }
                )
            load_adapter_state(self.transformer, state, str(directory / "transformer_lora"))
        else:
            raise ValueError(f"unknown component {name!r} in {directory}/policy.json")

    def policy_info(self, components: list[str]) -> dict[str, Any]:
        # weights loaded earlier that this save (or a later load) fully overwrote are not needed to rebuild it
        lineage: list[dict[str, Any]] = []
        covered = set(components)
        for entry in reversed(self._lineage()):
            if not set(entry["components"]) <= covered:
                lineage.insert(0, entry)
            covered |= set(entry["components"])
        return {
            "format": SAVE_FORMAT,
            "name": self.policy_name,
            "kwargs": self.policy_kwargs,
            "stage": self.stage,
            "components": components,
            "dit_lora": self.dit_lora,
            "lineage": lineage,
        }

    def save(self, directory: str) -> None:
        """Write the trained parts (see the module docstring) and ``policy.json`` to ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        components = self.trained_components()
        for name in components:
            self._save_component(name, d)
        (d / "policy.json").write_text(json.dumps(self.policy_info(components), indent=2, default=str))

    def load(self, path: str) -> None:
        """Load a folder written by :meth:`save` (its lineage first), or a weights file (:meth:`load_weights_file`)."""
        p = Path(path)
        if (p / "policy.json").is_file():
            self._load_saved(p)
        else:
            self.load_weights_file(str(path))

    def _load_saved(self, d: Path) -> None:
        info = json.loads((d / "policy.json").read_text())
        if (
            info.get("name") not in (None, self.policy_name)
            and self.policy_name.split("-")[0] != str(info["name"]).split("-")[0]
        ):
            raise ValueError(f"{d} was saved by policy {info['name']!r}, not {self.policy_name!r}")
        known = {e["path"] for e in self._lineage()}
        for entry in info.get("lineage", []):
            if entry["path"] not in known:
                if not Path(entry["path"]).exists() and Path(entry["path"]).is_absolute():
                    raise FileNotFoundError(f"{d} was saved on top of {entry['path']}, which no longer exists")
                self.load(entry["path"])
        if "components" not in info:  # format 1: one flat model.safetensors of the trained weights
            self.load_weights_file(str(d / "model.safetensors"), info)
            return
        for name in info["components"]:
            self._load_component(name, d)
        self._record_load(str(d), info["components"])

    def load_weights_file(self, path: str, info: dict | None = None) -> object:
        """A flat state dict of DiT weights (``transformer.<name>`` or bare diffusers names).

        Returns nothing here; subclasses may return a report of what was loaded."""
        if info and info.get("dit_lora") and self.dit_lora is None:
            self.add_dit_lora(info["dit_lora"])
        state = prefix_bare_keys(strip_wrapper_prefixes(read_state_dict(path)), self.transformer, "transformer.")
        own = self.state_dict()
        bad = [k for k in state if k not in own or own[k].shape != state[k].shape]
        if bad:
            raise RuntimeError(f"{path}: {len(bad)} key(s) do not fit the {self.policy_name} policy, e.g. {bad[:10]}")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to(own[k].dtype))
        self._record_load(path, sorted({"transformer_lora" if "lora_" in k else "transformer" for k in state}))
        return None
