"""DeepGen specifics: editing, mixed sizes, padding invariance, released checkpoint layouts, stages."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mrgrpo.policies.deepgen.checkpoint import CheckpointError


def _x(n, seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, size // 8, size // 8, generator=g)


def _nonzero_projectors(policy):
    # projector_2/3 are zero-initialised (as released): give them values so the prompt matters
    with torch.no_grad():
        for p in (policy.projector_2, policy.projector_3):
            p.weight.copy_(torch.randn_like(p.weight) * 0.2)


def test_generate_t2i_and_editing_with_one_and_two_references(build):
    policy = build("deepgen-tiny")
    g = torch.Generator().manual_seed(0)
    out = policy.generate(["a red square"], num_steps=4, cfg_scale=4.0, height=64, width=64, generator=g)
    assert out[0].size == (64, 64)
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (96, 64), "blue")
    out = policy.generate(["make it blue", "swap the colours"], [[red], [red, blue]], num_steps=4, cfg_scale=2.0,
                          height=64, width=64, generator=g, negative_prompt="blurry")
    assert len(out) == 2 and out[1].size == (64, 64)
    enc = policy.encode(["swap"], [[red, blue]])
    refs = enc.cond.items["ref_latents"][0]
    assert [tuple(r.shape) for r in refs] == [(16, 8, 8), (16, 8, 12)]
    # the prompt holds (H/32)(W/32) image tokens per reference: 4 + 6
    ids, _ = policy._tokenize(["x"], False)
    assert ids.shape[1] == 1 + policy.meta_queries.shape[0]


def test_mixed_size_batch_equals_per_sample_runs(build):
    policy = build("deepgen-tiny")
    _nonzero_projectors(policy)
    a, b = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (128, 64), "green")
    prompts, refs = ["make it blue", "make it a bit darker please"], [[a], [b, a]]
    x, s = _x(2), torch.tensor([0.8, 0.3])
    with torch.no_grad():
        batch = policy.velocity(x, s, policy.encode(prompts, refs).cond)
        single = [policy.velocity(x[i:i + 1], s[i:i + 1], policy.encode(prompts[i:i + 1], refs[i:i + 1]).cond) for i in range(2)]
    torch.testing.assert_close(batch, torch.cat(single), atol=2e-5, rtol=1e-4)


def test_outputs_do_not_depend_on_left_padding(build):
    policy = build("deepgen-tiny")
    _nonzero_projectors(policy)
    x, s = _x(1), torch.tensor([0.5])
    long = "a very long prompt that forces a lot of left padding on the short one " * 2
    with torch.no_grad():
        alone = policy.encode(["a red square"]).cond
        padded = policy.encode(["a red square", long]).cond.select([0])
        assert padded.tensors["context"].shape[1] > alone.tensors["context"].shape[1]
        torch.testing.assert_close(policy.velocity(x, s, padded), policy.velocity(x, s, alone), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(padded.tensors["pooled"], alone.tensors["pooled"], atol=2e-5, rtol=1e-4)
    # the released behaviour (no masks) leaks the pads
    leaky = build("deepgen-tiny", mask_padding=False)
    _nonzero_projectors(leaky)
    with torch.no_grad():
        a = leaky.velocity(x, s, leaky.encode(["a red square"]).cond)
        b = leaky.velocity(x, s, leaky.encode(["a red square", long]).cond.select([0]))
    assert not torch.allclose(a, b, atol=1e-4)


def _sft_state(policy):
    policy.set_stage("sft")
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}


def test_released_checkpoint_layouts_load_identically(build, tmp_path):
    from safetensors.torch import save_file

    src = build("deepgen-tiny").eval()  # eval: no LoRA dropout
    state = _sft_state(src)
    assert any(k.startswith("lmm.model.language_model.layers.0.self_attn.q_proj.lora_A.default") for k in state)
    assert any(k.startswith("lmm.model.language_model.embed_tokens.lora_embedding_A") for k in state)
    assert any(k.startswith("connector.layers.0.self_attn.q_proj") for k in state) and "meta_queries" in state
    new_layout = tmp_path / "new.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(new_layout))
    old = {k.replace("lmm.model.language_model.", "lmm.model."): v for k, v in state.items()}
    old_layout = tmp_path / "old.pt"
    torch.save({"state_dict": old}, old_layout)
    x, s = _x(1), torch.tensor([0.4])
    outs = []
    for path in (new_layout, old_layout):
        fresh = build("deepgen-tiny").eval()
        fresh.load(str(path))
        loaded = {n: p for n, p in fresh.named_parameters()}
        for k, v in state.items():
            torch.testing.assert_close(loaded[k].float(), v.float())  # nothing missing
        with torch.no_grad():
            outs.append(fresh.velocity(x, s, fresh.encode(["a red square"]).cond))
    torch.testing.assert_close(outs[0], outs[1])
    with torch.no_grad():
        torch.testing.assert_close(outs[0], src.velocity(x, s, src.encode(["a red square"]).cond), atol=1e-5, rtol=1e-4)

    # an RL checkpoint (DiT only) loads on top of the SFT one
    rl_state = {k: v + 0.01 for k, v in state.items() if k.startswith("transformer.")}
    save_file({k: v.contiguous() for k, v in rl_state.items()}, str(tmp_path / "rl.safetensors"))
    fresh = build("deepgen-tiny", checkpoint=str(new_layout))
    fresh.load(str(tmp_path / "rl.safetensors"))
    params = dict(fresh.named_parameters())
    k = next(iter(rl_state))
    torch.testing.assert_close(params[k].float(), rl_state[k])
    torch.testing.assert_close(params["meta_queries"].float(), state["meta_queries"])

    # unexpected keys are reported by name
    save_file({"connector.layers.9.mlp.fc1.weight": torch.zeros(2, 2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"connector\.layers\.9\.mlp\.fc1\.weight"):
        build("deepgen-tiny").load(str(tmp_path / "bad.safetensors"))


@pytest.mark.parametrize("stage,expected", [
    ("pretrain", {"meta_queries", "projector_1", "projector_2", "projector_3", "connector"}),
    ("sft", {"meta_queries", "projector_1", "projector_2", "projector_3", "connector", "transformer", "lmm-lora"}),
    ("rl", {"transformer"}),
])
def test_stage_freezing_gradients_reach_exactly_the_stage_groups(build, stage, expected):
    policy = build("deepgen-tiny")
    policy.set_stage(stage)
    _nonzero_projectors(policy)
    img = policy.decode(_x(2))
    loss = policy.flow_matching_loss({"images": img, "prompts": ["a red square", "a tree"]}, generator=torch.Generator().manual_seed(0))
    loss.backward()

    def group(n):
        if n.startswith("lmm."):
            return "lmm-lora" if "lora_" in n else "lmm"
        return n.split(".")[0]

    with_grad = {group(n) for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {group(n) for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert with_grad == expected


def test_scb_layer_list_is_validated(build):
    with pytest.raises(ValueError, match="outside hidden_states"):
        build("deepgen-tiny", scb_layers=[40, 3])


def test_real_size_parameter_counts_on_meta_device():
    from benchmarks_policy_params import real_size_counts

    counts = real_size_counts()
    assert counts["scb_pretrain_trainable"] == pytest.approx(0.432e9, rel=0.01)
    assert counts["connector"] == pytest.approx(394e6, rel=0.01)
    assert counts["transformer"] == pytest.approx(2.0e9, rel=0.25)
