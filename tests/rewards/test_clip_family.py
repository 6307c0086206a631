"""PickScore, LAION aesthetic, image similarity and HPS v2.1 on tiny random models saved in the released layouts."""

import json

import pytest
import torch
from PIL import Image
from tiny_reward_models import TINY_OPEN_CLIP, reference_clip_embeds, save_tiny_hf_clip

from mrgrpo.rewards.base import build_reward


def _images():
    return [
        Image.new("RGB", (40, 40), "red"),
        Image.new("RGB", (48, 30), "blue"),
        Image.new("L", (40, 40), 200),
        Image.effect_noise((50, 30), 60).convert("RGB"),
    ]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_hf_clip(tmp_path_factory.mktemp("clip_hf"))


def test_pickscore_is_logit_scale_times_cosine(clip_dir):
    images, prompts = _images(), ["a red square", "a blue square", "grey", "noise " * 100]
    reward = build_reward(
        "pickscore", {"model": str(clip_dir), "processor": str(clip_dir), "device": "cpu", "batch_size": 3}
    )
    out = reward(images, prompts)
    fi, ft, scale = reference_clip_embeds(clip_dir, images, prompts)
    assert scale == pytest.approx(torch.tensor(3.0).exp().item(), rel=1e-5)  # the saved logit scale, not 100
    torch.testing.assert_close(out.scores, scale * (fi * ft).sum(-1), atol=1e-4, rtol=1e-4)
    assert out.valid.all()
    div = build_reward(
        "pickscore", {"model": str(clip_dir), "processor": str(clip_dir), "device": "cpu", "divisor": 26}
    )
    torch.testing.assert_close(div(images, prompts).scores, out.scores / 26, atol=1e-5, rtol=1e-4)
    half = build_reward(
        "pickscore", {"model": str(clip_dir), "processor": str(clip_dir), "device": "cpu", "dtype": "bfloat16"}
    )
    assert half.model.dtype == torch.bfloat16
    torch.testing.assert_close(half(images, prompts).scores, out.scores, atol=0.15, rtol=0.05)


def test_pickscore_bad_path(tmp_path):
    with pytest.raises(RuntimeError, match="pickscore: cannot load the CLIP model"):
        build_reward("pickscore", {"model": str(tmp_path / "nope"), "device": "cpu"})
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_reward("pickscore", {"model": str(tmp_path), "device": "cpu", "dtype": "int8"})


def _save_head(path, dim, seed=1):
    from mrgrpo.rewards.aesthetic import AestheticMLP

    torch.manual_seed(seed)
    head = AestheticMLP(dim)
    state = head.state_dict()
    assert sorted(state) == sorted(f"layers.{i}.{w}" for i in (0, 2, 4, 6, 7) for w in ("weight", "bias"))
    torch.save(state, path)
    return head.eval()


def test_aesthetic_head_on_normalised_embedding(clip_dir, tmp_path):
    head = _save_head(tmp_path / "head.pth", 16)
    images = _images()
    reward = build_reward("aesthetic", {"model": str(clip_dir), "head": str(tmp_path / "head.pth"), "device": "cpu"})
    out = reward(images, [""] * len(images))
    fi, _, _ = reference_clip_embeds(clip_dir, images)
    with torch.no_grad():
        expected = head(fi / fi.norm(dim=-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(out.scores, expected, atol=1e-5, rtol=1e-4)
    assert len(set(out.scores.tolist())) == len(images)  # depends on the image
    _save_head(tmp_path / "wrong.pth", 24)
    with pytest.raises(RuntimeError, match="not an aesthetic-predictor head for 16-d"):
        build_reward("aesthetic", {"model": str(clip_dir), "head": str(tmp_path / "wrong.pth"), "device": "cpu"})


def test_image_similarity_against_source(clip_dir, tmp_path):
    src = Image.effect_noise((40, 40), 50).convert("RGB")
    src.save(tmp_path / "src.png")
    other = Image.new("RGB", (40, 40), "green")
    reward = build_reward("image_similarity", {"model": str(clip_dir), "device": "cpu"})
    out = reward(
        [src, other, other, other],
        ["edit"] * 4,
        [{"source_image": src}, {"images": [str(tmp_path / "src.png")]}, {}, {"image": str(tmp_path / "x.png")}],
    )
    assert out.scores[0].item() == pytest.approx(1.0, abs=1e-5)  # an unchanged image is identical to its source
    fi, _, _ = reference_clip_embeds(clip_dir, [other, src])
    assert out.scores[1].item() == pytest.approx((fi[0] * fi[1]).sum().item(), abs=1e-5)
    assert out.valid.tolist() == [True, True, False, False]
    assert out.details["no_source"] == 1 and out.details["failures"] == 1


def _pad_square(im, size=32):
    """HPSv2's evaluation transform written out: longest side to ``size`` (bicubic), centred on black, CLIP norm."""
    import torchvision.transforms.functional as TF

    im = im.convert("RGB")
    scale = size / max(im.size)
    w, h = round(im.width * scale), round(im.height * scale)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(im.resize((w, h), Image.BICUBIC), ((size - w) // 2, (size - h) // 2))
    return TF.normalize(TF.to_tensor(canvas), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@pytest.fixture(scope="module")
def hps_ckpt(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    from open_clip import factory

    factory._MODEL_CONFIGS["mrgrpo-tiny-hps"] = TINY_OPEN_CLIP
    torch.manual_seed(0)
    model = open_clip.create_model("mrgrpo-tiny-hps", pretrained=None)
    path = tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt"
    # the released layout: {"state_dict": open_clip keys}; DDP's "module." prefix must be stripped
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path, model.eval()


def test_hpsv2_is_the_cosine(hps_ckpt, tmp_path):
    import open_clip

    path, ref = hps_ckpt
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_OPEN_CLIP))
    reward = build_reward(
        "hpsv2",
        {
            "checkpoint": str(path),
            "model_name": "mrgrpo-tiny-hps-2",
            "model_config": str(cfg),
            "device": "cpu",
            "batch_size": 3,
        },
    )
    images, prompts = _images(), ["red", "blue", "grey", "noise"]
    out = reward(images, prompts)
    with torch.no_grad():
        fi = ref.encode_image(torch.stack([_pad_square(im) for im in images]), normalize=True)
        ft = ref.encode_text(open_clip.get_tokenizer("mrgrpo-tiny-hps")(prompts), normalize=True)
    torch.testing.assert_close(out.scores, (fi * ft).sum(-1), atol=1e-5, rtol=1e-4)
    assert (out.scores.abs() <= 1).all()
    torch.save({"state_dict": {"visual.proj": torch.zeros(3)}}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="does not fit open_clip"):
        build_reward(
            "hpsv2", {"checkpoint": str(tmp_path / "bad.pt"), "model_name": "mrgrpo-tiny-hps", "device": "cpu"}
        )
