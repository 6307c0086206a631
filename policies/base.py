"""The interface every diffusion policy implements, and the conditioning it hands around.

The trainers (``mrgrpo.grpo``, ``mrgrpo.sft``) only talk to this interface; nothing
model-specific leaks into them. A policy is an ``nn.Module`` so ``accelerate`` can wrap it
(DDP / DeepSpeed): trainers call the *wrapped* module as ``model("velocity", ...)`` or
``model("flow_matching_loss", batch)`` so gradients flow through the wrapper's ``forward``
(see :meth:`DiffusionPolicy.forward`).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mrgrpo.devices import randn

if TYPE_CHECKING:
    from mrgrpo.sft_data.batch import SFTBatch

STAGES = ("pretrain", "sft", "rl")


@dataclass
class Conditioning:
    """What a policy's encoder produces for a batch of prompts, consumed by :meth:`DiffusionPolicy.velocity`.

    Attributes:
        tensors: batch-first tensors, e.g. ``prompt_embeds [B, L, D]``, ``pooled [B, P]``,
            ``mask [B, L]`` (True = real token). Policies choose the keys.
        items: per-sample Python objects of varying shape, e.g. ``ref_latents``: a list (length B)
            of lists of ``[C, h, w]`` reference latents.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    items: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        for t in self.tensors.values():
            return int(t.shape[0])
        for v in self.items.values():
            return len(v)
        return 0

    def repeat(self, n: int) -> Conditioning:
        """Each sample repeated ``n`` times in place (``[a, b] -> [a]*n + [b]*n``): one prompt -> G samples."""
        return Conditioning(
            {k: t.repeat_interleave(n, dim=0) for k, t in self.tensors.items()},
            {k: [x for x in v for _ in range(n)] for k, v in self.items.items()},
        )

    def select(self, index: Sequence[int] | torch.Tensor | slice) -> Conditioning:
        """The samples at ``index`` (a slice, or integer positions)."""
        if isinstance(index, slice):
            return Conditioning(
                {k: t[index] for k, t in self.tensors.items()}, {k: v[index] for k, v in self.items.items()}
            )
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        positions = idx.tolist()
        return Conditioning(
            {k: t[idx.to(t.device)] for k, t in self.tensors.items()},
            {k: [v[i] for i in positions] for k, v in self.items.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Conditioning]) -> Conditioning:
        """Concatenate along the batch; sequence tensors of different lengths must be padded by the policy."""
        first = parts[0]
        return Conditioning(
            {k: torch.cat([p.tensors[k] for p in parts], dim=0) for k in first.tensors},
            {k: [x for p in parts for x in p.items[k]] for k in first.items},
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device)

        def move_item(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return move(x)
            if isinstance(x, (list, tuple)):
                return type(x)(move_item(y) for y in x)
            return x

        return Conditioning(
            {k: move(t) for k, t in self.tensors.items()}, {k: [move_item(x) for x in v] for k, v in self.items.items()}
        )


@dataclass
class EncodedPrompts:
    """Conditional and (for CFG) unconditional conditioning of the same B prompts."""

    cond: Conditioning
    uncond: Conditioning | None = None


def _cut_tokens(tokenizer: Any, text: str, limit: int) -> str:
    """The start of ``text`` holding at most ``limit`` tokens (exact text, through a fast tokenizer's offsets)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError, ValueError):  # a slow tokenizer: no offsets
        ids, offsets = tokenizer(text, add_special_tokens=False)["input_ids"], None
    if len(ids) <= limit:
        return text
    # the text before token ``limit`` starts (a character split over several byte tokens is dropped whole)
    return text[: offsets[limit][0]] if offsets else tokenizer.decode(ids[:limit])


class DiffusionPolicy(nn.Module, abc.ABC):
    """A flow-matching image generator (text-to-image, optionally editing) that trainers can drive.

    Shapes: latents ``[B, C, h, w]`` with ``C = latent_channels`` and ``h = H / vae_scale_factor``;
    ``sigma`` is the flow-matching noise level in [0, 1], ``[B]`` float32 (1 = pure noise).
    """

    #: channels of the latent space
    latent_channels: int = 16
    #: pixels per latent cell along each side
    vae_scale_factor: int = 8
    #: whether :meth:`encode` accepts reference images (editing)
    supports_editing: bool = False
    #: shift ``k`` of the training noise law ``s = k u / (1 + (k - 1) u)`` (``mrgrpo.losses.sample_flow_sigmas``)
    timestep_shift: float = 3.0
    #: longest prompt, in tokens of ``self.tokenizer`` (characters without one), that trainers and ``mrgrpo sample``
    #: pass to :meth:`encode`; longer prompts are cut by :meth:`truncate_prompts`. None: no limit (the encoder
    #: truncates by itself, e.g. SD3's 77 + 256 tokens)
    max_prompt_tokens: int | None = None

    def truncate_prompts(self, prompts: list[str]) -> tuple[list[str], int]:
        """``prompts`` with those over :attr:`max_prompt_tokens` cut (keeping their start), and how many were cut.

        Without it a ~1 MB prompt reaches the text encoder whole (attention over a million tokens).
        Counted in tokens of ``self.tokenizer`` when the policy has one, else in characters.
        """
        limit = self.max_prompt_tokens
        if not limit:
            return list(prompts), 0
        tokenizer = getattr(self, "tokenizer", None)
        out, cut = [], 0
        for p in prompts:
            if len(p.encode("utf-8")) <= limit:  # a token covers at least one byte
                out.append(p)
                continue
            short = p[:limit] if tokenizer is None else _cut_tokens(tokenizer, p[: limit * 64], limit)  # bounded work
            if short == p:
                out.append(p)
                continue
            out.append(short)
            cut += 1
        return out, cut

    # -- dispatch through the (possibly DDP/DeepSpeed-wrapped) module ----------------------
    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``policy("velocity", x, sigma, cond)`` == ``policy.velocity(x, sigma, cond)``.

        Trainers call methods through ``forward`` so a DDP / DeepSpeed wrapper sees the call.
        """
        if method not in ("velocity", "flow_matching_loss", "encode"):
            raise ValueError(f"policy forward dispatches velocity | flow_matching_loss | encode, got {method!r}")
        return getattr(self, method)(*args, **kwargs)

    # -- conditioning --------------------------------------------------------------------
    @abc.abstractmethod
    def encode(
        self,
        prompts: list[str],
        images: list[list[Any]] | None = None,
        *,
        negative_prompt: str | None = None,
    ) -> EncodedPrompts:
        """Encode B prompts ONCE (and their reference images, a list of PIL images per prompt).

        With ``negative_prompt`` (``""`` for the empty prompt) also returns the unconditional
        conditioning for CFG, computed in the same batch where the model allows it.
        """

    # -- denoiser --------------------------------------------------------------------------
    @abc.abstractmethod
    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        ref_latents: list[list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Predicted velocity ``[B, C, h, w]`` for latents ``[B, C, h, w]`` at ``sigma [B]``.

        Reference latents come from ``cond`` (``items["ref_latents"]``) unless given here.
        The output has the model's dtype; callers upcast for log-probs.
        """

    # -- latents <-> pixels ------------------------------------------------------------------
    def init_noise(self, batch: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Initial latents ``[batch, C, height / f, width / f]`` ~ N(0, I), float32 on the policy's device."""
        f = self.vae_scale_factor
        if height % (2 * f) or width % (2 * f):
            raise ValueError(f"height and width must be multiples of {2 * f}, got {height}x{width}")
        return randn((batch, self.latent_channels, height // f, width // f), generator, device=self.device)

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` float32 in [0, 1] from latents ``[B, C, h, w]``."""

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, h, w]`` (scaled and shifted for the DiT) of images ``[B, 3, H, W]`` in [0, 1]."""

    def sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """The scheduler's ``num_steps + 1`` noise levels from 1 down to 0, float32, for an image of
        ``height x width`` pixels. Policies whose schedule depends on the image size (a dynamic shift, as
        FLUX and Qwen-Image) use the size; the trainer, evaluation and sampling always pass it. ``None``: the
        policy's default size."""
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------
    @abc.abstractmethod
    def flow_matching_loss(self, batch: SFTBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar SFT loss (``mrgrpo.losses.flow_matching_loss``) on a batch.

        ``batch``: :class:`~mrgrpo.sft_data.batch.SFTBatch` (``images [B, 3, H, W]`` in [0, 1],
        ``prompts``, ``ref_images`` or None); caption dropout is the caller's job.
        """

    @abc.abstractmethod
    def set_stage(self, stage: str, lora: dict[str, Any] | None = None) -> None:
        """Freeze everything but the stage's trainable parts (``pretrain | sft | rl``); trainable parts in float32.

        ``lora`` (``{rank, alpha, dropout, target_modules}``) trains a LoRA instead of full weights where the
        policy supports it (the DiT in ``rl``).
        """

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of every parameter that currently requires grad."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[DiffusionPolicy]:
        """Within the context, :meth:`velocity` is the reference model's (initial) velocity.

        LoRA-trained policies disable their adapters; fully-trained ones swap in a frozen copy.
        """
        raise NotImplementedError
        yield self  # pragma: no cover

    def enable_reference(self) -> None:
        """Prepare what :meth:`reference` needs (e.g. the frozen copy); call after :meth:`set_stage`.

        A policy that can keep its frozen copy elsewhere (``rl.reference_device``) takes ``device=`` here
        and sets ``_ref_device``.
        """

    @property
    def reference_device(self) -> torch.device:
        """Where :meth:`reference`'s velocity runs: a pinned reference copy's device, else the policy's."""
        return getattr(self, "_ref_device", None) or self.device

    # -- sampling ----------------------------------------------------------------------------
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
        """Deterministic (ODE) sampling with CFG; one PIL image per prompt (used by ``mrgrpo sample``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement generate()")

    # -- persistence -------------------------------------------------------------------------
    @abc.abstractmethod
    def save(self, directory: str) -> None:
        """Write the trained weights (adapters or full modules) and the policy config to ``directory``."""

    @abc.abstractmethod
    def load(self, directory: str) -> None:
        """Load weights written by :meth:`save` into this policy."""

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32


def images_to_tensor(images: Sequence[Any]) -> torch.Tensor:
    """PIL images (same size) -> ``[B, 3, H, W]`` float32 in [0, 1]."""
    import numpy as np

    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_images(pixels: torch.Tensor) -> list[Any]:
    """``[B, 3, H, W]`` in [0, 1] -> list of PIL RGB images."""
    from PIL import Image

    arr = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]
