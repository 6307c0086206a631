"""A toy DiffusionPolicy for fast trainer tests: a small conv velocity net on 4x4x4 latents.

It implements the whole interface with no transformers/diffusers model, which also shows that
the trainer needs nothing model-specific.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch
from torch import nn

from mrgrpo.losses import add_flow_noise, flow_matching_loss, sample_flow_sigmas
from mrgrpo.policies.base import Conditioning, DiffusionPolicy, EncodedPrompts


class _Net(nn.Module):
    def __init__(self, ch: int, dim: int):
        super().__init__()
        self.inp = nn.Conv2d(ch, 32, 3, padding=1)
        self.cond = nn.Linear(dim + 1, 32)
        self.out = nn.Conv2d(32, ch, 3, padding=1)

    def forward(self, x, sigma, pooled):
        h = self.inp(x) + self.cond(torch.cat([pooled, sigma[:, None]], 1))[:, :, None, None]
        return self.out(torch.nn.functional.silu(h))


class ToyPolicy(DiffusionPolicy):
    """Latents [B, 4, H/4, W/4]; 'VAE' = fixed random 4x4 patch projection."""

    latent_channels = 4
    vae_scale_factor = 4

    def __init__(self, dim: int = 8, seed: int = 0, shift: float = 3.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.dim = dim
        self.shift = shift
        self.sigma_sizes: list = []  # (height, width) of every sigmas() call: the trainer must pass the image size
        self.net = _Net(4, dim)
        self.decoder = nn.ConvTranspose2d(4, 3, 4, stride=4)
        with torch.no_grad():
            self.decoder.weight.copy_(torch.randn(self.decoder.weight.shape, generator=g) * 0.5)
            self.decoder.bias.zero_()
        self.encoder = nn.Conv2d(3, 4, 4, stride=4)
        self._ref_net = None
        self._use_ref = False
        self.set_stage("rl")

    def encode(self, prompts, images=None, *, negative_prompt=None):
        def emb(texts):
            rows = []
            for t in texts:
                gen = torch.Generator().manual_seed(sum(map(ord, t)) % (2**31))
                rows.append(torch.randn(self.dim, generator=gen))
            return Conditioning({"pooled": torch.stack(rows).to(self.device)})

        return EncodedPrompts(
            emb(prompts), emb([negative_prompt] * len(prompts)) if negative_prompt is not None else None
        )

    def velocity(self, latents, sigma, cond, ref_latents=None):
        net = self._ref_net if self._use_ref else self.net
        return net(latents, sigma.to(latents.dtype), cond.tensors["pooled"].to(latents.dtype))

    def decode(self, latents):
        return torch.sigmoid(self.decoder(latents.float()))

    def encode_images(self, images):
        return self.encoder(images.float() * 2 - 1)

    def sigmas(self, num_steps, height=None, width=None):
        self.sigma_sizes.append((height, width))
        t = torch.linspace(1, 0, num_steps + 1)
        return (self.shift * t / (1 + (self.shift - 1) * t)).float()

    def flow_matching_loss(self, batch, generator=None):
        x0 = self.encode_images(batch.images.to(self.device)).detach()
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        sigma = sample_flow_sigmas(x0.shape[0], shift=self.shift, generator=generator).to(x0.device)
        cond = self.encode(batch.prompts).cond
        v = self.velocity(add_flow_noise(x0, noise, sigma), sigma, cond)
        return flow_matching_loss(v, x0, noise)

    def set_stage(self, stage, lora=None):
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.net.parameters():
            p.requires_grad_(True)

    def enable_reference(self):
        self._ref_net = copy.deepcopy(self.net).requires_grad_(False)

    @contextlib.contextmanager
    def reference(self):
        if self._ref_net is None:
            raise RuntimeError("call enable_reference() first")
        self._use_ref = True
        try:
            yield self
        finally:
            self._use_ref = False

    def save(self, directory):
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), d / "net.pt")
        (d / "policy.json").write_text(json.dumps({"name": "toy", "dim": self.dim}))

    def load(self, directory):
        self.net.load_state_dict(torch.load(Path(directory) / "net.pt", weights_only=True))
