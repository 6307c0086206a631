"""Advantages (mrgrpo.advantages) against an independent loop implementation of docs/training.md.

The reference below uses plain Python lists and loops (unbiased std, eps = 1e-4), never the
module's own helpers.
"""

from __future__ import annotations

import math

import pytest
import torch

from mrgrpo.advantages import compute_advantages, group_zscore

EPS = 1e-4


def mean_std(vals):
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((x - m) ** 2 for x in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def zscore_loop(r, groups, valid=None):
    """(r - mean_g) / (std_g + eps) per group over valid members; invalid members 0."""
    out = [0.0] * len(r)
    for g in sorted(set(groups)):
        idx = [i for i in range(len(r)) if groups[i] == g and (valid is None or valid[i])]
        if len(idx) < 2:
            continue
        m, sd = mean_std([r[i] for i in idx])
        for i in idx:
            out[i] = (r[i] - m) / (sd + EPS)
    return out


def batchnorm_loop(a, include=None):
    idx = [i for i in range(len(a)) if include is None or include[i]]
    m, sd = mean_std([a[i] for i in idx])
    return [(a[i] - m) / (sd + EPS) if (include is None or include[i]) else 0.0 for i in range(len(a))]


def gdpo_loop(rewards, weights, groups, valid=None, clip=None):
    """weights: list of {name: w} per sample."""
    n = len(groups)
    names = sorted(rewards)
    z = {k: zscore_loop(rewards[k], groups, None if valid is None else valid[k]) for k in names}
    mixed = [sum(weights[i].get(k, 0.0) * z[k][i] for k in names) for i in range(n)]
    include = [any(weights[i].get(k, 0.0) != 0 and (valid is None or valid[k][i]) for k in names) for i in range(n)]
    out = batchnorm_loop(mixed, include)
    if clip is not None:
        out = [max(-clip, min(clip, a)) for a in out]
    return out


@pytest.fixture
def batch():
    """20 images in 5 groups of 4, group ids shuffled; 3 rewards of very different scales;
    groups 0-2 from a 'text' source, 3-4 from a 'general' source (different mixtures)."""
    g = torch.Generator().manual_seed(0)
    groups = torch.arange(5).repeat_interleave(4)[torch.randperm(20, generator=g)]
    rewards = {
        "ocr": torch.rand(20, generator=g),
        "clip": 0.2 + 0.05 * torch.rand(20, generator=g),
        "judge": 10 * torch.rand(20, generator=g),
    }
    text = {"judge": 0.2, "clip": 0.1, "ocr": 0.7}
    general = {"judge": 0.7, "clip": 0.3}
    per_sample = [text if int(gid) < 3 else general for gid in groups]
    return rewards, groups, per_sample


def as_tensor_weights(per_sample, names):
    return torch.tensor([[w.get(k, 0.0) for k in names] for w in per_sample])


def L(t):
    return [float(x) for x in t.tolist()]


def test_group_zscores_per_reward(batch):
    rewards, groups, _ = batch
    for k, r in rewards.items():
        expected = zscore_loop(L(r), groups.tolist())
        torch.testing.assert_close(group_zscore(r, groups, eps=EPS), torch.tensor(expected), atol=1e-5, rtol=1e-5)
        # grpo with one reward of weight 1 is the plain group z-score (clip far away)
        got = compute_advantages({k: r}, {k: 1.0}, groups, mode="grpo", clip=None)
        torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_gdpo_matches_independent_computation(batch):
    rewards, groups, per_sample = batch
    names = sorted(rewards)
    assert names == ["clip", "judge", "ocr"]
    w = as_tensor_weights(per_sample, names)
    got = compute_advantages(rewards, w, groups, mode="gdpo", clip=None)
    expected = gdpo_loop({k: L(v) for k, v in rewards.items()}, per_sample, groups.tolist())
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    # batch-normalised: mean 0, unbiased std ~1
    assert abs(got.mean().item()) < 1e-5 and got.std().item() == pytest.approx(1.0, abs=1e-3)
    # default clip 5 does not bind here, so the default call is the same
    torch.testing.assert_close(compute_advantages(rewards, w, groups), got)


def test_grpo_matches_independent_computation(batch):
    rewards, groups, per_sample = batch
    names = sorted(rewards)
    got = compute_advantages(rewards, as_tensor_weights(per_sample, names), groups, mode="grpo", clip=None)
    total = [sum(per_sample[i].get(k, 0.0) * float(rewards[k][i]) for k in names) for i in range(20)]
    torch.testing.assert_close(got, torch.tensor(zscore_loop(total, groups.tolist())), atol=1e-5, rtol=1e-5)


def test_gdpo_balances_rewards_grpo_drowns_the_small_one():
    # two groups of 4. `big` (scale 100) ranks the images 0<1<2<3; `small` (scale 0.01, weight 0.6)
    # ranks them the other way round.
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    rewards = {
        "big": torch.tensor([0.0, 100.0, 200.0, 300.0, 50.0, 60.0, 70.0, 80.0]),
        "small": torch.tensor([0.03, 0.02, 0.01, 0.0, 0.09, 0.05, 0.03, 0.01]),
    }
    w = {"big": 0.4, "small": 0.6}
    grpo = compute_advantages(rewards, w, groups, mode="grpo", clip=None)
    gdpo = compute_advantages(rewards, w, groups, mode="gdpo", clip=None)
    for sl in (slice(0, 4), slice(4, 8)):
        assert torch.all(grpo[sl][1:] > grpo[sl][:-1])  # grpo: ranking follows `big` alone
        assert torch.all(gdpo[sl][1:] < gdpo[sl][:-1])  # gdpo: `small` weighs 0.6 > 0.4 and wins
    # grpo is (almost) the z-score of `big` alone; gdpo is the weighted mix of both z-scores
    torch.testing.assert_close(
        grpo, torch.tensor(zscore_loop(L(rewards["big"] * 0.4 + rewards["small"] * 0.6), groups.tolist()))
    )
    z_big = zscore_loop(L(rewards["big"]), groups.tolist())
    assert max(abs(a - b) for a, b in zip(L(grpo), z_big)) < 1e-3
    expected = gdpo_loop({k: L(v) for k, v in rewards.items()}, [w] * 8, groups.tolist())
    torch.testing.assert_close(gdpo, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_masked_rewards_are_excluded_and_contribute_zero(batch):
    rewards, groups, per_sample = batch
    names = sorted(rewards)
    valid = {k: torch.ones(20, dtype=torch.bool) for k in names}
    first_text = [i for i in range(20) if int(groups[i]) == 0][:2]
    i0, i1 = first_text
    valid["ocr"][i0] = False  # OCR failed for i0: its judge/clip scores still count
    for k in names:
        valid[k][i1] = False  # every reward failed for i1
    poisoned = {k: v.clone() for k, v in rewards.items()}
    poisoned["ocr"][i0] = float("nan")
    for k in names:
        poisoned[k][i1] = 1e6
    w = as_tensor_weights(per_sample, names)
    got = compute_advantages(poisoned, w, groups, mode="gdpo", clip=None, valid=valid)
    vl = {k: v.tolist() for k, v in valid.items()}
    expected = gdpo_loop({k: L(v) for k, v in rewards.items()}, per_sample, groups.tolist(), valid=vl)
    assert torch.isfinite(got).all()
    assert got[i1].item() == 0.0
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    # i0's advantage comes from judge and clip only: changing its (failed) OCR score changes nothing
    poisoned["ocr"][i0] = -123.0
    torch.testing.assert_close(compute_advantages(poisoned, w, groups, mode="gdpo", clip=None, valid=valid), got)
    # grpo: an image with a failed weighted reward gets 0 and leaves its group's statistics
    got = compute_advantages(poisoned, w, groups, mode="grpo", clip=None, valid=valid)
    total = [sum(per_sample[i].get(k, 0.0) * float(rewards[k][i]) for k in names) for i in range(20)]
    ok = [i not in (i0, i1) for i in range(20)]
    assert got[i0].item() == 0.0 and got[i1].item() == 0.0
    torch.testing.assert_close(got, torch.tensor(zscore_loop(total, groups.tolist(), ok)), atol=1e-5, rtol=1e-5)


def test_a_group_of_identical_rewards_gives_zero():
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    r = {
        "a": torch.tensor([0.5, 0.5, 0.5, 0.2, 0.9, 0.4, 0.7, 0.7, 0.7]),
        "b": torch.tensor([3.0, 3.0, 3.0, 1.0, 2.0, 5.0, 1.0, 1.0, 1.0]),
    }
    for mode in ("gdpo", "grpo"):
        adv = compute_advantages(r, {"a": 0.5, "b": 0.5}, groups, mode=mode)
        assert torch.isfinite(adv).all()
        torch.testing.assert_close(adv[[0, 1, 2, 6, 7, 8]], torch.zeros(6), atol=1e-6, rtol=0)
        assert adv[3:6].abs().min() > 0.1
        all_same = compute_advantages({"a": torch.full((6,), 0.3)}, {"a": 1.0}, groups[:6], mode=mode)
        assert torch.equal(all_same, torch.zeros(6))


@pytest.mark.parametrize("c", [1.5, 2.0])
def test_clip_bound(c):
    groups = torch.zeros(50, dtype=torch.long)
    r = {"a": torch.cat([torch.zeros(49), torch.tensor([1.0])])}
    unclipped = compute_advantages(r, {"a": 1.0}, groups, mode="gdpo", clip=None)
    expected = gdpo_loop({"a": L(r["a"])}, [{"a": 1.0}] * 50, [0] * 50)
    torch.testing.assert_close(unclipped, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    assert unclipped.max().item() > 5.0
    clipped = compute_advantages(r, {"a": 1.0}, groups, mode="gdpo", clip=c)
    torch.testing.assert_close(clipped, unclipped.clamp(-c, c))
    assert clipped.max().item() == pytest.approx(c) and clipped.min().item() >= -c
    # the default clip is 5
    assert compute_advantages(r, {"a": 1.0}, groups, mode="gdpo").max().item() == pytest.approx(5.0)


def test_tensor_weights_equal_dict_weights(batch):
    rewards, groups, _ = batch
    d = {"ocr": 0.7, "judge": 0.2, "clip": 0.1}
    w = torch.tensor([[0.1, 0.2, 0.7]]).repeat(20, 1)  # columns in sorted order: clip, judge, ocr
    for mode in ("gdpo", "grpo"):
        torch.testing.assert_close(
            compute_advantages(rewards, w, groups, mode=mode), compute_advantages(rewards, d, groups, mode=mode)
        )
    # a reward missing from the dict weighs 0 (same as a 0 column)
    w0 = w.clone()
    w0[:, 1] = 0
    torch.testing.assert_close(
        compute_advantages(rewards, w0, groups), compute_advantages(rewards, {"ocr": 0.7, "clip": 0.1}, groups)
    )
    # columns in another order would be a different (wrong) answer: the order matters
    assert not torch.allclose(compute_advantages(rewards, w.flip(1), groups), compute_advantages(rewards, d, groups))
    with pytest.raises(ValueError, match="weights must be"):
        compute_advantages(rewards, torch.ones(20, 2), groups)
    with pytest.raises(ValueError, match="aesthetic"):
        compute_advantages(rewards, {"aesthetic": 1.0}, groups)


def test_reduce_fn_two_processes_match_the_full_batch(batch):
    """Two 'processes' each holding whole groups; reduce_fn is an all-reduce SUM, simulated by
    adding the stats tensor the other half sends (captured from a first pass)."""
    rewards, groups, per_sample = batch
    names = sorted(rewards)
    w = as_tensor_weights(per_sample, names)
    valid = {k: torch.ones(20, dtype=torch.bool) for k in names}
    valid["judge"][3] = False
    full = compute_advantages(rewards, w, groups, mode="gdpo", valid=valid)
    halves = [torch.nonzero(groups < 2).flatten(), torch.nonzero(groups >= 2).flatten()]  # 8 and 12 images

    def part(idx, reduce_fn=None):
        return compute_advantages(
            {k: v[idx] for k, v in rewards.items()},
            w[idx],
            groups[idx],
            mode="gdpo",
            valid={k: v[idx] for k, v in valid.items()},
            reduce_fn=reduce_fn,
        )

    sent = []
    for idx in halves:
        part(idx, reduce_fn=lambda t: (sent.append(t.clone()), t)[1])
    assert len(sent) == 2
    for rank, idx in enumerate(halves):
        other = sent[1 - rank]
        got = part(idx, reduce_fn=lambda t, other=other: t + other.to(t.dtype))
        torch.testing.assert_close(got, full[idx], atol=1e-5, rtol=1e-5)
        # without the reduction a half normalises over itself only: a different answer
        assert (part(idx) - full[idx]).abs().max() > 1e-3


def test_bad_arguments(batch):
    rewards, groups, _ = batch
    with pytest.raises(ValueError, match="mode"):
        compute_advantages(rewards, {"ocr": 1.0}, groups, mode="ppo")
    with pytest.raises(ValueError, match="shape"):
        compute_advantages({"ocr": torch.rand(19)}, {"ocr": 1.0}, groups)


@pytest.mark.parametrize("mode", ["gdpo", "grpo"])
def test_a_batch_of_constant_groups_gives_zero_not_amplified_rounding(mode):
    # 0.7 and 0.1 are not exact in float32: a float32 group mean of [0.7, 0.7, 0.7] differs from
    # 0.7 by ~6e-8, which divided by (std + eps) is ~6e-4, and gdpo's batch normalisation then
    # scaled that noise up to advantages of +-1.2. No group has any signal: every advantage is 0.
    groups = torch.arange(4).repeat_interleave(3)
    r = {"a": torch.tensor([0.7] * 3 + [0.1] * 3 + [0.3] * 3 + [0.9] * 3)}
    adv = compute_advantages(r, {"a": 1.0}, groups, mode=mode)
    assert torch.equal(adv, torch.zeros(12))
