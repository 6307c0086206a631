"""Advantages against an independent loop implementation of MATH.md."""

from __future__ import annotations

import pytest
import torch

from mrgrpo.advantages import compute_advantages

EPS = 1e-4


def zscore_loop(r, groups, valid=None):
    out = [0.0] * len(r)
    for g in set(groups):
        idx = [i for i in range(len(r)) if groups[i] == g and (valid is None or valid[i])]
        if len(idx) < 2:
            continue
        vals = [r[i] for i in idx]
        m = sum(vals) / len(vals)
        sd = (sum((x - m) ** 2 for x in vals) / (len(vals) - 1)) ** 0.5
        for i in idx:
            out[i] = (r[i] - m) / (sd + EPS)
    return out


def batchnorm_loop(a):
    m = sum(a) / len(a)
    sd = (sum((x - m) ** 2 for x in a) / (len(a) - 1)) ** 0.5
    return [(x - m) / (sd + EPS) for x in a]


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    groups = torch.arange(4).repeat_interleave(4)
    return {"ocr": torch.rand(16, generator=g), "clip": torch.rand(16, generator=g) * 0.1}, groups


def test_gdpo_matches_independent_computation(data):
    rewards, groups = data
    w = {"ocr": 0.7, "clip": 0.3}
    got = compute_advantages(rewards, w, groups, mode="gdpo", clip=None)
    zo = zscore_loop(rewards["ocr"].tolist(), groups.tolist())
    zc = zscore_loop(rewards["clip"].tolist(), groups.tolist())
    mixed = [0.7 * a + 0.3 * b for a, b in zip(zo, zc)]
    torch.testing.assert_close(got, torch.tensor(batchnorm_loop(mixed)), atol=1e-5, rtol=1e-5)


def test_grpo_matches_independent_computation(data):
    rewards, groups = data
    got = compute_advantages(rewards, {"ocr": 0.7, "clip": 0.3}, groups, mode="grpo", clip=None)
    total = [0.7 * a + 0.3 * b for a, b in zip(rewards["ocr"].tolist(), rewards["clip"].tolist())]
    torch.testing.assert_close(got, torch.tensor(zscore_loop(total, groups.tolist())), atol=1e-5, rtol=1e-5)


def test_gdpo_balances_rewards_of_different_scales():
    # one group of 4: `big` (scale 100) ranks 0<1<2<3; `small` (scale 0.01) ranks the reverse
    groups = torch.zeros(4, dtype=torch.long)
    rewards = {"big": torch.tensor([0.0, 100.0, 200.0, 300.0]), "small": torch.tensor([0.03, 0.02, 0.01, 0.0])}
    w = {"big": 0.4, "small": 0.6}
    grpo = compute_advantages(rewards, w, groups, mode="grpo", clip=None)
    gdpo = compute_advantages(rewards, w, groups, mode="gdpo", clip=None)
    assert torch.all(grpo[1:] > grpo[:-1])  # grpo: the small reward is drowned, ranking follows `big`
    assert torch.all(gdpo[1:] < gdpo[:-1])  # gdpo: each reward counts by its weight, `small` (0.6) wins


def test_masked_rewards_are_excluded(data):
    rewards, groups = data
    valid = {"ocr": torch.ones(16, dtype=torch.bool), "clip": torch.ones(16, dtype=torch.bool)}
    valid["ocr"][0] = False
    poisoned = {"ocr": rewards["ocr"].clone(), "clip": rewards["clip"]}
    poisoned["ocr"][0] = 1e6
    got = compute_advantages(poisoned, {"ocr": 1.0}, groups, mode="gdpo", clip=None, valid=valid)
    zo = zscore_loop(rewards["ocr"].tolist(), groups.tolist(), valid["ocr"].tolist())
    keep = [i for i in range(16) if i != 0]
    expected = batchnorm_loop([zo[i] for i in keep])
    assert got[0].item() == 0.0
    torch.testing.assert_close(got[keep], torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_identical_rewards_give_zero_not_nan():
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    r = {"a": torch.tensor([0.5, 0.5, 0.5, 0.2, 0.2, 0.2])}
    for mode in ("gdpo", "grpo"):
        adv = compute_advantages(r, {"a": 1.0}, groups, mode=mode)
        assert torch.isfinite(adv).all() and torch.equal(adv, torch.zeros(6))


def test_clip_bound():
    groups = torch.zeros(50, dtype=torch.long)
    r = {"a": torch.cat([torch.zeros(49), torch.tensor([1.0])])}
    adv = compute_advantages(r, {"a": 1.0}, groups, mode="gdpo", clip=2.0)
    assert adv.max().item() == pytest.approx(2.0) and adv.min().item() >= -2.0
    unclipped = compute_advantages(r, {"a": 1.0}, groups, mode="gdpo", clip=None)
    assert unclipped.max().item() > 5.0


def test_tensor_weights_equal_dict_weights(data):
    rewards, groups = data
    w = torch.tensor([[0.3, 0.7]]).repeat(16, 1)  # columns in sorted order: clip, ocr
    a = compute_advantages(rewards, w, groups)
    b = compute_advantages(rewards, {"ocr": 0.7, "clip": 0.3}, groups)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="weights must be"):
        compute_advantages(rewards, torch.ones(16, 3), groups)


def test_reduce_fn_makes_halves_match_the_full_batch(data):
    rewards, groups = data
    w = {"ocr": 0.5, "clip": 0.5}
    full = compute_advantages(rewards, w, groups, mode="gdpo", clip=None)
    halves = [slice(0, 8), slice(8, 16)]
    captured = {}

    def capture(t):
        captured["stats"] = t.clone()
        return t

    stats = []
    for sl in halves:
        compute_advantages({k: v[sl] for k, v in rewards.items()}, w, groups[sl], mode="gdpo", clip=None, reduce_fn=capture)
        stats.append(captured["stats"])
    total = stats[0] + stats[1]
    for sl in halves:
        part = compute_advantages({k: v[sl] for k, v in rewards.items()}, w, groups[sl], mode="gdpo", clip=None,
                                  reduce_fn=lambda t: total.to(t.dtype))
        torch.testing.assert_close(part, full[sl], atol=1e-5, rtol=1e-5)
