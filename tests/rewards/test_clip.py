"""CLIP score with a tiny random open_clip model saved to disk and loaded through the checkpoint path."""

import json

import pytest
import torch
from PIL import Image

from mrgrpo.rewards.base import build_reward

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    from open_clip import factory

    factory._MODEL_CONFIGS["mrgrpo-tiny-clip"] = TINY_CLIP
    torch.manual_seed(0)
    model = open_clip.create_model("mrgrpo-tiny-clip", pretrained=None)
    ckpt = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return ckpt


def test_clip_score_is_the_cosine(tiny_ckpt, tmp_path):
    import open_clip

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    reward = build_reward(
        "clip",
        {
            "model_name": "mrgrpo-tiny-clip-2",
            "pretrained": str(tiny_ckpt),
            "model_config": str(cfg),
            "device": "cpu",
            "batch_size": 2,
        },
    )
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue", "white")] + [
        Image.effect_noise((50, 30), 60).convert("RGB")
    ]
    prompts = ["a red square", "a blue square " + "very " * 100, "white", "noise"]  # the second exceeds 77 tokens
    out = reward(images, prompts)
    # independent computation with the saved weights
    ref = open_clip.create_model("mrgrpo-tiny-clip", pretrained=None)
    ref.load_state_dict(torch.load(tiny_ckpt))
    ref.eval()
    _, _, preprocess = open_clip.create_model_and_transforms("mrgrpo-tiny-clip", pretrained=None)
    tok = open_clip.get_tokenizer("mrgrpo-tiny-clip")(prompts)
    assert tok.shape[1] == 77  # truncated to the context
    with torch.no_grad():
        fi = ref.encode_image(torch.stack([preprocess(im) for im in images]))
        ft = ref.encode_text(tok)
    cos = torch.nn.functional.cosine_similarity(fi, ft, dim=-1)
    torch.testing.assert_close(out.scores, cos, atol=1e-5, rtol=1e-5)
    assert out.valid.all() and (out.scores.abs() <= 1).all()
    # batching does not change the scores
    one_by_one = torch.cat([reward([im], [p]).scores for im, p in zip(images, prompts)])
    torch.testing.assert_close(one_by_one, out.scores, atol=1e-5, rtol=1e-5)


def test_clip_errors(tiny_ckpt, tmp_path):
    pytest.importorskip("open_clip")
    with pytest.raises(RuntimeError, match="cannot load model 'no-such-arch'"):
        build_reward("clip", {"model_name": "no-such-arch", "pretrained": None, "device": "cpu"})
    with pytest.raises(RuntimeError, match="cannot load model"):
        build_reward(
            "clip", {"model_name": "mrgrpo-tiny-clip", "pretrained": str(tmp_path / "missing.pt"), "device": "cpu"}
        )
    with pytest.raises(ValueError, match="vision_cfg"):
        build_reward("clip", {"model_name": "x", "model_config": {"embed_dim": 3}, "device": "cpu"})
