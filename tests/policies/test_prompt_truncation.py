"""Prompts over a policy's ``max_prompt_tokens`` are cut before the text encoder (issue 15: a ~1 MB
prompt made the rollout try to allocate ~1 TB)."""

from __future__ import annotations

from mrgrpo.policies.base import DiffusionPolicy


def test_deepgen_cuts_a_megabyte_prompt_to_its_token_limit(build):
    policy = build("deepgen-tiny", max_prompt_tokens=64)
    huge = "a red cube on a blue table, " * 40_000  # ~1.1 MB
    short = "a small green sphere"
    out, n_cut = policy.truncate_prompts([short, huge, "ünïcødé " * 50])
    assert n_cut == 2 and out[0] == short
    for original, cut in zip([huge, "ünïcødé " * 50], out[1:]):
        ids = policy.tokenizer(cut, add_special_tokens=False)["input_ids"]
        assert 60 <= len(ids) <= 64 and original.startswith(cut)  # the start of the prompt, exact text
    enc = policy.encode(out, negative_prompt=None)  # bounded: the conditioning has at most 64 + template tokens
    assert enc.cond.tensors["context"].shape[1] < 64 + 200


def test_a_policy_without_tokenizer_counts_characters_and_none_means_no_limit():
    class Chars(DiffusionPolicy):
        max_prompt_tokens = 5
        encode = velocity = decode = encode_images = flow_matching_loss = set_stage = save = load = None

    p = Chars.__new__(Chars)
    assert DiffusionPolicy.truncate_prompts(p, ["abcdefgh", "abc", ""]) == (["abcde", "abc", ""], 1)
    p.max_prompt_tokens = None
    assert DiffusionPolicy.truncate_prompts(p, ["x" * 10_000]) == (["x" * 10_000], 0)
