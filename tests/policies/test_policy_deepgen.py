"""DeepGen specifics: prompts, editing, mixed sizes, padding invariance, released checkpoint layouts, stages."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrgrpo.policies.deepgen.checkpoint import CheckpointError, load_deepgen_checkpoint
from mrgrpo.sft_data import SFTBatch

REPO = Path(__file__).resolve().parents[2]


def _img(w, h, seed):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


def test_prompt_templates_think_tokens_and_left_padding(build):
    policy = build("deepgen-tiny")
    assert (
        policy.prompt_text("a cat") == "<|im_start|>user\nGenerate an image: a cat<|im_end|>\n<|im_start|>assistant\n"
    )
    assert policy.prompt_text("make it blue", 2, [2, 3]) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>"
        "<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>\nmake it "
        "blue<|im_end|>\n<|im_start|>assistant\n"
    )
    q = policy.meta_queries.shape[0]
    ids, mask = policy._tokenize([policy.prompt_text("a"), policy.prompt_text("a much longer prompt")], [False, False])
    short = len(policy.tokenizer(policy.prompt_text("a"))["input_ids"])
    assert ids.shape[1] == len(policy.tokenizer(policy.prompt_text("a much longer prompt"))["input_ids"]) + q
    assert mask[0].sum() == short + q and mask[0, : ids.shape[1] - short - q].sum() == 0  # pads on the left
    assert (ids[:, -q:] == policy.pad_token_id).all() and mask[:, -q:].all()  # think-token slots after "assistant\n"
    # training truncation keeps the last max_prompt_tokens of T2I prompts only
    policy.max_prompt_tokens = 5
    cut, _ = policy._tokenize([policy.prompt_text("a long long prompt")], [True])
    assert cut.shape[1] == 5 + q


def test_vit_patches_match_the_qwen_image_processor(build, tiny_cache):
    from transformers import Qwen2VLImageProcessor

    from mrgrpo.policies.base import images_to_tensor
    from mrgrpo.policies.deepgen.tiny import tiny_cache_dir

    policy = build("deepgen-tiny")
    px = images_to_tensor([_img(96, 64, 0)])[0]
    patches, grid = policy.vit_patches(px)
    proc = Qwen2VLImageProcessor.from_pretrained(str(tiny_cache_dir(0, None) / "vlm"))
    small = torch.nn.functional.interpolate(px[None], scale_factor=28 / 32, mode="bilinear")[0]
    ref = proc(images=[small], do_resize=False, do_rescale=False, return_tensors="pt")
    torch.testing.assert_close(patches, ref["pixel_values"])
    assert grid.tolist() == ref["image_grid_thw"].tolist() == [[1, 4, 6]]


def test_generate_t2i_and_editing_with_one_and_two_references(build):
    policy = build("deepgen-tiny")
    g = torch.Generator().manual_seed(0)
    out = policy.generate(["a red square"], num_steps=3, cfg_scale=4.0, height=64, width=64, generator=g)
    assert out[0].size == (64, 64)
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (96, 64), "blue")
    out = policy.generate(
        ["make it blue", "swap the colours"],
        [[red], [red, blue]],
        num_steps=3,
        cfg_scale=2.0,
        height=64,
        width=64,
        generator=g,
        negative_prompt="blurry",
    )
    assert len(out) == 2 and out[1].size == (64, 64)
    enc = policy.encode(["swap"], [[red, blue]], negative_prompt="blurry")
    refs = enc.cond.items["ref_latents"][0]
    assert [tuple(r.shape) for r in refs] == [(16, 8, 8), (16, 8, 12)]  # pixel budget 64: 64x64 and 96x64
    for a, b in zip(enc.uncond.items["ref_latents"][0], refs):  # the negative keeps the references
        torch.testing.assert_close(a, b)


def test_references_change_the_velocity_and_mixed_size_batch_equals_per_sample(build, open_projectors, latents):
    policy = build("deepgen-tiny")
    open_projectors(policy)
    a, b = _img(64, 64, 1), _img(128, 64, 2)
    prompts, refs = ["make it blue", "make it a bit darker please", "a plain text prompt"], [[a], [b, a], []]
    x, s = latents(3), torch.tensor([0.8, 0.3, 0.5])
    with torch.no_grad():
        batch = policy.velocity(x, s, policy.encode(prompts, refs).cond)
        single = [
            policy.velocity(
                x[i : i + 1], s[i : i + 1], policy.encode(prompts[i : i + 1], refs[i : i + 1] if refs[i] else None).cond
            )
            for i in range(3)
        ]
        no_ref = policy.velocity(x[:1], s[:1], policy.encode(prompts[:1], [[a]]).cond, ref_latents=[[]])
    torch.testing.assert_close(batch, torch.cat(single), atol=2e-5, rtol=1e-4)
    assert not torch.allclose(no_ref, single[0], atol=1e-4)


def test_outputs_do_not_depend_on_left_padding_unless_released_behaviour(build, open_projectors, latents):
    long = "a very long prompt that forces a lot of left padding on the short one " * 2
    x, s = latents(1), torch.tensor([0.5])
    policy = build("deepgen-tiny")
    open_projectors(policy)
    with torch.no_grad():
        alone = policy.encode(["a red square"]).cond
        padded = policy.encode(["a red square", long]).cond.select([0])
        assert padded.tensors["context"].shape[1] > alone.tensors["context"].shape[1]
        torch.testing.assert_close(padded.tensors["pooled"], alone.tensors["pooled"], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(policy.velocity(x, s, padded), policy.velocity(x, s, alone), atol=2e-5, rtol=1e-4)
    leaky = build("deepgen-tiny", mask_padding=False)  # the released code: pads leak into connector, pool and context
    open_projectors(leaky)
    with torch.no_grad():
        a = leaky.encode(["a red square"]).cond
        b = leaky.encode(["a red square", long]).cond.select([0])
        assert "context_mask" not in b.tensors
        assert not torch.allclose(a.tensors["pooled"], b.tensors["pooled"], atol=1e-4)
        assert not torch.allclose(leaky.velocity(x, s, a), leaky.velocity(x, s, b), atol=1e-4)
        torch.testing.assert_close(
            leaky.velocity(x, s, a), policy.velocity(x, s, alone), atol=2e-5, rtol=1e-4
        )  # same without pads


def _sft_state(policy, perturb, open_projectors):
    policy.set_stage("sft")
    open_projectors(policy)
    perturb(policy, scale=0.02)
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}


def test_released_checkpoint_layouts_load_identically(build, perturb, open_projectors, latents, tmp_path):
    from safetensors.torch import save_file

    src = build("deepgen-tiny")
    state = _sft_state(src, perturb, open_projectors)
    assert "lmm.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight" in state
    assert "lmm.model.language_model.embed_tokens.lora_embedding_A.default" in state
    assert "connector.layers.0.self_attn.q_proj.weight" in state and "meta_queries" in state
    new = tmp_path / "new.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(new))
    old = tmp_path / "old" / "model.pt"  # older transformers names, {"state_dict": ...}-wrapped, in a folder
    old.parent.mkdir()
    torch.save({"state_dict": {k.replace("lmm.model.language_model.", "lmm.model."): v for k, v in state.items()}}, old)
    x, s = latents(1), torch.tensor([0.4])
    outs = []
    for path in (new, old.parent):
        fresh = build("deepgen-tiny")
        assert not fresh.has_vlm_lora()
        report = load_deepgen_checkpoint(fresh, path)  # adds the VLM LoRA read from the keys (rank 64)
        assert report.missing == [] and report.unexpected == [] and report.mismatched == []
        assert report.components == ["scb", "transformer", "vlm_lora"]
        assert fresh.vlm_lora["rank"] == 64 and fresh.vlm_lora["alpha"] == 128
        params = dict(fresh.named_parameters())
        for k, v in state.items():
            assert torch.equal(params[k], v), k
        with torch.no_grad():
            outs.append(fresh.velocity(x, s, fresh.encode(["a red square"]).cond))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(outs[0], src.velocity(x, s, src.encode(["a red square"]).cond))

    # an RL checkpoint (DiT only) loads on top of the SFT one; the rest is kept
    rl = {k: v + 0.01 for k, v in state.items() if k.startswith("transformer.")}
    save_file({k: v.contiguous() for k, v in rl.items()}, str(tmp_path / "rl.safetensors"))
    fresh = build("deepgen-tiny", checkpoint=str(new))
    fresh.load(str(tmp_path / "rl.safetensors"))
    params = dict(fresh.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in rl.items())
    assert torch.equal(params["meta_queries"], state["meta_queries"])
    lora_key = "lmm.model.language_model.layers.0.mlp.up_proj.lora_B.default.weight"
    assert torch.equal(params[lora_key], state[lora_key])


def test_checkpoint_errors_name_the_keys(build, tmp_path):
    from safetensors.torch import save_file

    policy = build("deepgen-tiny")
    scb = policy.scb_state()
    partial = {k: v for k, v in scb.items() if not k.startswith("connector.layers.1.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing key\(s\)[\s\S]*connector\.layers\.1\.mlp\.fc1\.weight"):
        policy.load(str(tmp_path / "partial.safetensors"))
    save_file({**scb, "connector.layers.9.mlp.fc1.weight": torch.zeros(2, 2)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\)[\s\S]*connector\.layers\.9\.mlp\.fc1\.weight"):
        policy.load(str(tmp_path / "extra.safetensors"))
    save_file({**scb, "projector_1.weight": torch.zeros(3, 3)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(CheckpointError, match=r"projector_1\.weight: checkpoint \(3, 3\)"):
        policy.load(str(tmp_path / "shape.safetensors"))
    with pytest.raises(FileNotFoundError):
        policy.load(str(tmp_path / "nowhere.safetensors"))
    many = tmp_path / "hub"  # the released repo holds pre-training, SFT and RL checkpoints side by side
    (many / "rl").mkdir(parents=True)
    torch.save(scb, many / "sft.pt")
    save_file(scb, str(many / "rl" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"several checkpoints[\s\S]*rl/model\.safetensors[\s\S]*sft\.pt"):
        policy.load(str(many))
    policy.load(str(many / "sft.pt"))


def test_sft_save_load_and_rl_save_on_top_of_it(build, perturb, open_projectors, latents, tmp_path):
    policy = build("deepgen-tiny")
    _sft_state(policy, perturb, open_projectors)
    policy.save(str(tmp_path / "sft"))
    info = json.loads((tmp_path / "sft" / "policy.json").read_text())
    assert info["components"] == ["scb", "transformer", "vlm_lora"]
    assert (tmp_path / "sft" / "scb.safetensors").is_file() and (
        tmp_path / "sft" / "vlm_lora" / "adapter_config.json"
    ).is_file()
    x, s = latents(2), torch.tensor([0.9, 0.3])
    with torch.no_grad():
        want = policy.velocity(x, s, policy.encode(["a cat", "a dog"]).cond)

    rl = build("deepgen-tiny")
    rl.load(str(tmp_path / "sft"))
    with torch.no_grad():
        torch.testing.assert_close(rl.velocity(x, s, rl.encode(["a cat", "a dog"]).cond), want)
    rl.set_stage("rl")
    rl.train()  # the frozen VLM (with its LoRA) stays in eval mode: no dropout, deterministic conditioning
    assert not rl.lmm.training and rl.transformer.training
    with torch.no_grad():
        torch.testing.assert_close(
            rl.encode(["a cat"]).cond.tensors["context"], rl.encode(["a cat"]).cond.tensors["context"], rtol=0, atol=0
        )
    rl.eval()
    perturb(rl, scale=0.05)
    rl.save(str(tmp_path / "rl"))
    info = json.loads((tmp_path / "rl" / "policy.json").read_text())
    assert info["components"] == ["transformer"] and [Path(e["path"]).name for e in info["lineage"]] == ["sft"]
    with torch.no_grad():
        want = rl.velocity(x, s, rl.encode(["a cat", "a dog"]).cond)
    again = build("deepgen-tiny")
    again.load(str(tmp_path / "rl"))  # loads its lineage (the SFT folder: SCB + VLM LoRA) first
    with torch.no_grad():
        torch.testing.assert_close(again.velocity(x, s, again.encode(["a cat", "a dog"]).cond), want)


@pytest.mark.parametrize(
    "stage,expected",
    [
        ("pretrain", {"meta_queries", "projector_1", "projector_2", "projector_3", "connector"}),
        ("sft", {"meta_queries", "projector_1", "projector_2", "projector_3", "connector", "transformer", "lmm-lora"}),
        ("rl", {"transformer"}),
    ],
)
def test_stage_freezing_gradients_reach_exactly_the_stage_groups(build, stage, expected, open_projectors, latents):
    policy = build("deepgen-tiny")
    policy.set_stage(stage)
    open_projectors(policy)
    with torch.no_grad():
        img = policy.decode(latents(2))
    red = Image.new("RGB", (64, 64), "red")
    batch = SFTBatch(img, ["a red square", "make it blue"], [[], [red]], kind="edit")
    policy.flow_matching_loss(batch, generator=torch.Generator().manual_seed(0)).backward()

    def group(n):
        if n.startswith("lmm."):
            return "lmm-lora" if "lora_" in n else "lmm"
        return n.split(".")[0]

    trainable = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    assert {group(n) for n in trainable} == expected
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert {group(n) for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0} == expected
    assert not any("visual" in n for n in trainable)  # the ViT never trains
    if stage == "sft":
        assert policy.vlm_lora == {
            "rank": 64,
            "alpha": 128,
            "dropout": 0.05,
            "rank_pattern": {},
            "target_modules": policy.vlm_lora["target_modules"],
        }


def test_sft_vlm_lora_options(build):
    policy = build("deepgen-tiny", vlm_lora={"rank": 4, "alpha": 4, "target_modules": ["q_proj", "v_proj"]})
    policy.set_stage("sft")
    names = [n for n, _ in policy.trainable_parameters() if n.startswith("lmm.")]
    assert names and all(("q_proj" in n or "v_proj" in n) and "visual" not in n for n in names)
    assert policy.vlm_lora["rank"] == 4
    with pytest.raises(ValueError, match="stage rl"):
        build("deepgen-tiny").set_stage("sft", lora={"rank": 4, "enabled": True})


def test_scb_layers_are_validated_and_used(build, open_projectors, latents):
    with pytest.raises(ValueError, match="outside hidden_states"):
        build("deepgen-tiny", scb_layers=[40, 3])
    a = build("deepgen-tiny")
    b = build("deepgen-tiny", scb_layers=[12, 10, 8, 6, 4, 2])
    open_projectors(a)
    open_projectors(b)
    with torch.no_grad():
        ca, cb = a.encode(["a cat"]).cond, b.encode(["a cat"]).cond
    assert not torch.allclose(ca.tensors["context"], cb.tensors["context"])


def test_real_size_parameter_counts_on_meta_device():
    spec = importlib.util.spec_from_file_location(
        "mrgrpo_bench_policy_params", REPO / "benchmarks" / "policy_params.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    counts = mod.real_size_counts()
    assert counts["trainable"]["pretrain"] == pytest.approx(0.432e9, rel=0.01)
    assert counts["modules"]["connector"] == pytest.approx(394e6, rel=0.01)
    assert counts["modules"]["transformer"] == pytest.approx(2.24e9, rel=0.05)
    assert counts["trainable"]["rl"] == counts["modules"]["transformer"]
    assert counts["trainable"]["sft"] > counts["trainable"]["pretrain"] + counts["modules"]["transformer"]
