"""The SD3 DiT forward with reference-image tokens and padding masks (diffusers modules unchanged).

Each sample's reference latents are patch-embedded with the DiT's own ``pos_embed`` (the same
2-D sin-cos position embedding a same-size target gets: a centre crop of the ``pos_embed_max_size``
grid; no offset, no type embedding, no separate timestep) and appended after the target tokens.
Samples are right-padded to the batch's longest sequence; a boolean key mask hides padded image
tokens and padded context tokens in every attention. Only the target tokens are unpatchified.
Parameter names stay diffusers' ``SD3Transformer2DModel`` names, so its weights load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class MaskedJointAttnProcessor:
    """diffusers' joint attention (SD3 / SD3.5, incl. dual attention) plus an optional key mask.

    ``attention_mask``: ``[B, N_img + N_ctx]`` bool, True = attend. For the image-only second
    attention of SD3.5 dual blocks the first ``N_img`` columns are used.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        residual_len = hidden_states.shape[1]
        b = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (t.view(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if encoder_hidden_states is not None:
            cq, ck, cv = (
                attn.add_q_proj(encoder_hidden_states),
                attn.add_k_proj(encoder_hidden_states),
                attn.add_v_proj(encoder_hidden_states),
            )
            cq, ck, cv = (t.view(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (cq, ck, cv))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
        mask = None
        if attention_mask is not None:
            m = attention_mask if encoder_hidden_states is not None else attention_mask[:, :residual_len]
            mask = m[:, None, None, :].to(q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(q.dtype)
        ctx = None
        if encoder_hidden_states is not None:
            out, ctx = out[:, :residual_len], out[:, residual_len:]
            if not attn.context_pre_only:
                ctx = attn.to_add_out(ctx)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, ctx) if encoder_hidden_states is not None else out


def install_masked_attention(transformer) -> None:
    """Swap every attention processor of the DiT for :class:`MaskedJointAttnProcessor`."""
    transformer.set_attn_processor(MaskedJointAttnProcessor())


def embed_with_references(
    transformer, latents: torch.Tensor, ref_latents: Sequence[Sequence[torch.Tensor]] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Patch tokens ``[B, N_tgt + N_ref_max, D]`` (targets first) and their validity mask ``[B, N]``
    (None: all valid)."""
    tokens = transformer.pos_embed(latents)
    if not ref_latents or not any(len(r) for r in ref_latents):
        return tokens, None
    extra = []
    for refs in ref_latents:
        parts = [transformer.pos_embed(r.unsqueeze(0).to(latents.dtype))[0] for r in refs]
        extra.append(torch.cat(parts) if parts else tokens.new_zeros((0, tokens.shape[-1])))
    longest = max(e.shape[0] for e in extra)
    n_tgt = tokens.shape[1]
    padded = tokens.new_zeros((tokens.shape[0], n_tgt + longest, tokens.shape[-1]))
    mask = torch.zeros(padded.shape[:2], dtype=torch.bool, device=tokens.device)
    padded[:, :n_tgt] = tokens
    mask[:, :n_tgt] = True
    for i, e in enumerate(extra):
        padded[i, n_tgt : n_tgt + e.shape[0]] = e
        mask[i, n_tgt : n_tgt + e.shape[0]] = True
    return padded, mask


def dit_forward(
    transformer,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    pooled: torch.Tensor,
    context_mask: torch.Tensor | None = None,
    ref_latents: Sequence[Sequence[torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Velocity ``[B, C, H, W]`` of target latents ``[B, C, H, W]``.

    Args:
        timestep: ``[B]``, sigma * 1000.
        context: ``[B, L, joint_attention_dim]``; ``context_mask``: ``[B, L]`` bool (True = real token).
        pooled: ``[B, pooled_projection_dim]``.
        ref_latents: per sample, a list of reference latents ``[C, h, w]`` (any sizes).
    """
    height, width = latents.shape[-2:]
    hidden, img_mask = embed_with_references(transformer, latents, ref_latents)
    n_tgt = (height // transformer.config.patch_size) * (width // transformer.config.patch_size)
    temb = transformer.time_text_embed(timestep, pooled)
    enc = transformer.context_embedder(context)
    mask = None
    if img_mask is not None or context_mask is not None:
        im = img_mask if img_mask is not None else torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        cm = (
            context_mask.bool()
            if context_mask is not None
            else torch.ones(enc.shape[:2], dtype=torch.bool, device=enc.device)
        )
        mask = torch.cat([im, cm.to(im.device)], dim=1)
    kwargs = {"attention_mask": mask} if mask is not None else None
    for block in transformer.transformer_blocks:
        if torch.is_grad_enabled() and transformer.gradient_checkpointing:
            enc, hidden = transformer._gradient_checkpointing_func(block, hidden, enc, temb, kwargs)
        else:
            enc, hidden = block(
                hidden_states=hidden, encoder_hidden_states=enc, temb=temb, joint_attention_kwargs=kwargs
            )
    hidden = transformer.proj_out(transformer.norm_out(hidden[:, :n_tgt], temb))
    p, c = transformer.config.patch_size, transformer.out_channels
    hidden = hidden.reshape(hidden.shape[0], height // p, width // p, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", hidden).reshape(hidden.shape[0], c, height, width)
