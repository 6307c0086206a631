"""ImageReward: a synthetic checkpoint in the released key layout, loaded through the key mapping, scored against
an independent plain-torch forward pass written from ImageReward's architecture (timm ViT + BLIP's BERT with
cross-attention)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mrgrpo.rewards.base import build_reward
from mrgrpo.rewards.imagereward import MEAN, STD

W, DEPTH, PATCH, IMG, HEADS = 32, 2, 8, 32, 2  # tiny ViT
H, LAYERS, INTER, THEADS = 24, 2, 48, 2  # tiny BERT
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "dog", "photo", "of", "the", "blue"]
VOCAB = len(WORDS) + 2  # + [DEC], [ENC] added by ImageReward


def released_checkpoint(seed=0):
    """Random tensors under the exact key names of ImageReward.pt (BLIP_Pretrain + MLP)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    sd = {
        "blip.visual_encoder.cls_token": r(1, 1, W),
        "blip.visual_encoder.pos_embed": r(1, (IMG // PATCH) ** 2 + 1, W),
        "blip.visual_encoder.patch_embed.proj.weight": r(W, 3, PATCH, PATCH, s=0.05),
        "blip.visual_encoder.patch_embed.proj.bias": r(W),
        "blip.visual_encoder.norm.weight": 1 + r(W),
        "blip.visual_encoder.norm.bias": r(W),
    }
    for i in range(DEPTH):
        p = f"blip.visual_encoder.blocks.{i}."
        sd.update(
            {
                p + "norm1.weight": 1 + r(W),
                p + "norm1.bias": r(W),
                p + "attn.qkv.weight": r(3 * W, W),
                p + "attn.qkv.bias": r(3 * W),
                p + "attn.proj.weight": r(W, W),
                p + "attn.proj.bias": r(W),
                p + "norm2.weight": 1 + r(W),
                p + "norm2.bias": r(W),
                p + "mlp.fc1.weight": r(4 * W, W),
                p + "mlp.fc1.bias": r(4 * W),
                p + "mlp.fc2.weight": r(W, 4 * W),
                p + "mlp.fc2.bias": r(W),
            }
        )
    t = "blip.text_encoder."
    sd.update(
        {
            t + "embeddings.word_embeddings.weight": r(VOCAB, H),
            t + "embeddings.position_embeddings.weight": r(64, H),
            t + "embeddings.LayerNorm.weight": 1 + r(H),
            t + "embeddings.LayerNorm.bias": r(H),
            t + "embeddings.position_ids": torch.arange(64)[None],
        }
    )
    for i in range(LAYERS):
        p = f"{t}encoder.layer.{i}."
        for att, kv in (("attention", H), ("crossattention", W)):
            sd.update(
                {
                    p + f"{att}.self.query.weight": r(H, H),
                    p + f"{att}.self.query.bias": r(H),
                    p + f"{att}.self.key.weight": r(H, kv),
                    p + f"{att}.self.key.bias": r(H),
                    p + f"{att}.self.value.weight": r(H, kv),
                    p + f"{att}.self.value.bias": r(H),
                    p + f"{att}.output.dense.weight": r(H, H),
                    p + f"{att}.output.dense.bias": r(H),
                    p + f"{att}.output.LayerNorm.weight": 1 + r(H),
                    p + f"{att}.output.LayerNorm.bias": r(H),
                }
            )
        sd.update(
            {
                p + "intermediate.dense.weight": r(INTER, H),
                p + "intermediate.dense.bias": r(INTER),
                p + "output.dense.weight": r(H, INTER),
                p + "output.dense.bias": r(H),
                p + "output.LayerNorm.weight": 1 + r(H),
                p + "output.LayerNorm.bias": r(H),
            }
        )
    sd.update(
        {
            "blip.vision_proj.weight": r(8, W),
            "blip.vision_proj.bias": r(8),
            "blip.text_proj.weight": r(8, H),
            "blip.text_proj.bias": r(8),
        }
    )
    for i, (o, n) in zip((0, 2, 4, 6, 7), ((1024, H), (128, 1024), (64, 128), (16, 64), (1, 16))):
        sd.update({f"mlp.layers.{i}.weight": r(o, n, s=1 / math.sqrt(n)), f"mlp.layers.{i}.bias": r(o)})
    return sd


def _attn(q, k, v, heads, mask=None):
    b, n, d = q.shape
    split = lambda x: x.reshape(b, x.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    att = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        att = att + (1 - mask[:, None, None, :].float()) * -1e9
    return (att.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, d)


def reference(sd, pix, ids, mask):
    """ImageReward.score written out from its modules (timm ViT with eps 1e-6; BERT post-norm, eps 1e-12)."""
    v = "blip.visual_encoder."
    x = F.conv2d(pix, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(len(x), -1, -1), x], 1) + sd[v + "pos_embed"]
    for i in range(DEPTH):
        p = f"{v}blocks.{i}."
        h = F.layer_norm(x, (W,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        q, k, val = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).chunk(3, -1)
        x = x + F.linear(_attn(q, k, val, HEADS), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (W,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    img = F.layer_norm(x, (W,), sd[v + "norm.weight"], sd[v + "norm.bias"], 1e-6)
    t = "blip.text_encoder."
    ln = lambda z, n: F.layer_norm(z, (H,), sd[n + ".weight"], sd[n + ".bias"], 1e-12)  # noqa: E731
    lin = lambda z, n: F.linear(z, sd[n + ".weight"], sd[n + ".bias"])  # noqa: E731
    emb = sd[t + "embeddings.word_embeddings.weight"][ids]
    emb = emb + sd[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    y = ln(emb, t + "embeddings.LayerNorm")
    for i in range(LAYERS):
        p = f"{t}encoder.layer.{i}."
        for att, ctx, m in (("attention", y, mask), ("crossattention", img, None)):
            q = lin(y, p + f"{att}.self.query")
            k, val = lin(ctx, p + f"{att}.self.key"), lin(ctx, p + f"{att}.self.value")
            a = _attn(q, k, val, THEADS, m)
            y = ln(lin(a, p + f"{att}.output.dense") + y, p + f"{att}.output.LayerNorm")
        y = ln(lin(F.gelu(lin(y, p + "intermediate.dense")), p + "output.dense") + y, p + "output.LayerNorm")
    z = y[:, 0]
    for i in (0, 2, 4, 6, 7):
        z = F.linear(z, sd[f"mlp.layers.{i}.weight"], sd[f"mlp.layers.{i}.bias"])
    return (z.squeeze(-1) - MEAN) / STD


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from transformers import BertTokenizer

    d = tmp_path_factory.mktemp("imagereward")
    torch.save(released_checkpoint(), d / "ImageReward.pt")
    (d / "med_config.json").write_text(
        json.dumps(
            {
                "architectures": ["BertModel"],
                "attention_probs_dropout_prob": 0.1,
                "hidden_act": "gelu",
                "hidden_dropout_prob": 0.1,
                "hidden_size": H,
                "initializer_range": 0.02,
                "intermediate_size": INTER,
                "layer_norm_eps": 1e-12,
                "max_position_embeddings": 64,
                "model_type": "bert",
                "num_attention_heads": THEADS,
                "num_hidden_layers": LAYERS,
                "pad_token_id": 0,
                "type_vocab_size": 2,
                "vocab_size": VOCAB,
                "encoder_width": W,
                "add_cross_attention": True,
            }
        )
    )
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(vocab_file=str(d / "vocab.txt")).save_pretrained(d / "tok")
    return d


def test_imagereward_matches_the_reference_forward(files):
    from transformers import AutoTokenizer

    kw = {
        "checkpoint": str(files / "ImageReward.pt"),
        "med_config": str(files / "med_config.json"),
        "tokenizer": str(files / "tok"),
        "vision_num_heads": HEADS,
        "device": "cpu",
        "batch_size": 2,
    }
    reward = build_reward("imagereward", kw)
    images = [
        Image.new("RGB", (48, 40), "red"),
        Image.effect_noise((40, 64), 60).convert("RGB"),
        Image.new("L", (32, 32), 90),
    ]
    prompts = ["a red cat", "a photo of the blue dog " * 10, "a dog"]
    out = reward(images, prompts)
    # ImageReward's own transform: torchvision on the PIL image (bicubic resize of the shorter side, centre crop)
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    ref_tf = Compose(
        [
            Resize(IMG, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(IMG),
            ToTensor(),
            Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )
    torch.testing.assert_close(reward.preprocess(images), torch.stack([ref_tf(im.convert("RGB")) for im in images]))
    tok = AutoTokenizer.from_pretrained(files / "tok")
    enc = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert enc["input_ids"][:, 0].eq(tok.cls_token_id).all()
    with torch.no_grad():
        ref = reference(released_checkpoint(), reward.preprocess(images), enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(out.scores, ref, atol=1e-4, rtol=1e-4)
    assert out.valid.all() and len(set(out.scores.tolist())) == 3
    # the prompt and the image both reach the first token's state (self- and cross-attention are wired)
    with torch.no_grad():
        sd = released_checkpoint()
        ref2 = reference(sd, reward.preprocess(images[:2]), enc["input_ids"][[1, 1]], enc["attention_mask"][[1, 1]])
        pix = reward.preprocess(images[1:2] * 2)
        ref3 = reference(sd, pix, enc["input_ids"][[0, 2]], enc["attention_mask"][[0, 2]])
    assert (ref2[0] - ref2[1]).abs() > 1e-4 and (ref3[0] - ref3[1]).abs() > 1e-4


def test_imagereward_bad_checkpoint(files, tmp_path):
    sd = released_checkpoint()
    sd["blip.visual_encoder.blocks.0.attn.qkv.weight"] = torch.zeros(5, 5)
    torch.save(sd, tmp_path / "bad.pt")
    kw = {
        "med_config": str(files / "med_config.json"),
        "tokenizer": str(files / "tok"),
        "vision_num_heads": HEADS,
        "device": "cpu",
    }
    with pytest.raises(RuntimeError, match="the vision weights of .* do not fit"):
        build_reward("imagereward", {**kw, "checkpoint": str(tmp_path / "bad.pt")})
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an ImageReward checkpoint"):
        build_reward("imagereward", {**kw, "checkpoint": str(tmp_path / "other.pt")})
