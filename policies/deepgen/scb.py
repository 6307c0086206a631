"""Stacked Channel Bridging: VLM hidden states of several layers -> DiT conditioning.

``hidden_states[i]`` for ``i`` in ``layers`` (deepest first) are concatenated on channels,
projected (``projector_1``), refined by a bidirectional pre-LN transformer encoder
(``connector``), then projected to the DiT's context (``projector_3``) and, after a mean over
the sequence, to its pooled embedding (``projector_2``). Parameter names match the released
checkpoints (``connector.layers.{i}.self_attn.{q,k,v,out}_proj``, ``layer_norm1``, ``mlp.fc1``,
``mlp.fc2``, ``layer_norm2``).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class ConnectorAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"connector hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ConnectorMLP(nn.Module):
    def __init__(self, hidden: int, mlp: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, mlp), nn.Linear(mlp, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class ConnectorLayer(nn.Module):
    """``x += Attn(LN1(x)); x += MLP(LN2(x))``."""

    def __init__(self, hidden: int, heads: int, mlp: int, eps: float = 1e-6):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.self_attn = ConnectorAttention(hidden, heads)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = ConnectorMLP(hidden, mlp)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), key_mask)
        return x + self.mlp(self.layer_norm2(x))


class Connector(nn.Module):
    """A stack of :class:`ConnectorLayer` (no positional encoding, no final norm)."""

    def __init__(self, hidden: int, heads: int, mlp: int, num_layers: int, eps: float = 1e-6):
        super().__init__()
        self.layers = nn.ModuleList([ConnectorLayer(hidden, heads, mlp, eps) for _ in range(num_layers)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero attention biases (as released)."""
        for layer in self.layers:
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
            attn = cast(ConnectorLayer, layer).self_attn
            for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                nn.init.zeros_(p.bias)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x [B, L, D]`` over the positions where ``mask [B, L]`` is True (all when None)."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
