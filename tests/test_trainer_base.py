"""What both trainers share (mrgrpo.trainer_base): LR schedule, optimizer groups, one optimizer step
per accumulation window, checkpoint round trip of the optimizer and schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mrgrpo.config import RecipeError, load_recipe
from mrgrpo.trainer_base import TrainerBase, build_lr_lambda, build_optimizer


def _cfg(tmp_path, **train):
    base = {
        "stage": "sft",
        "output_dir": str(tmp_path / "run"),
        "data": {"sft_sources": [{"name": "s", "path": "none.jsonl", "required": False}]},
        "train": {
            "lr": 0.1,
            "max_steps": 10,
            "warmup_steps": 2,
            "mixed_precision": "no",
            "images_per_step": 8,
            "micro_batch_size": 4,
            "grad_clip": None,
            **train,
        },
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    return load_recipe(data=base, check_files=False)


class _Policy(nn.Module):
    """The smallest object setup_model accepts: a linear layer whose weight and bias train."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        with torch.no_grad():
            self.lin.weight.fill_(0.5)
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x)

    def set_stage(self, stage, lora=None):
        pass

    def trainable_parameters(self):
        return [(n, p) for n, p in self.named_parameters()]

    def save(self, directory):
        import pathlib

        pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), pathlib.Path(directory) / "w.pt")

    def load(self, directory):
        import pathlib

        self.load_state_dict(torch.load(pathlib.Path(directory) / "w.pt"))


def test_lr_schedule_warmup_then_constant_or_cosine(tmp_path):
    f = build_lr_lambda(_cfg(tmp_path, warmup_steps=4))
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = build_lr_lambda(_cfg(tmp_path, schedule="cosine", warmup_steps=0, max_steps=10))
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0, abs=1e-12)
    assert cos(3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))
    ratio = build_lr_lambda(_cfg(tmp_path, warmup_ratio=0.2, max_steps=10))  # 2 warm-up steps, overrides warmup_steps
    assert [ratio(s) for s in range(3)] == [0.5, 1.0, 1.0]


def test_optimizer_decays_matrices_only(tmp_path):
    lin = nn.Linear(3, 2)
    opt = build_optimizer(list(lin.named_parameters()), _cfg(tmp_path, weight_decay=0.05))
    groups = {tuple(p.shape): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert groups == {(2, 3): 0.05, (2,): 0.0}
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["lr"] == 0.1
    with pytest.raises(RecipeError, match="no trainable parameters"):
        build_optimizer([], _cfg(tmp_path))


def test_one_optimizer_step_per_accumulation_window_with_the_mean_gradient(tmp_path):
    tr = TrainerBase(_cfg(tmp_path, warmup_steps=0), gradient_accumulation_steps=3)
    tr.setup_model(_Policy(), "sft", reference=False)
    xs = [torch.randn(2, 3, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    stepped, after_first = [], None
    for i, x in enumerate(xs):
        with tr.accelerator.accumulate(tr.model):
            loss = tr.model(x).pow(2).mean()
            stepped.append(tr.backward_and_maybe_step(loss, []))
        if i == 2:
            after_first = [p.detach().clone() for p in tr.policy.parameters()]
    assert stepped == [False, False, True, False, False, True] and tr.optimizer_steps == 2
    assert tr.lr_scheduler.last_epoch == 2  # the schedule advanced once per optimizer step
    # independently: one AdamW step on the MEAN gradient of the first 3 micro-batches
    ref = _Policy()
    opt = torch.optim.AdamW(ref.parameters(), lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    (sum(ref(x).pow(2).mean() for x in xs[:3]) / 3).backward()
    opt.step()
    for got, want in zip(after_first, ref.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-7)


def test_checkpoint_round_trip_restores_optimizer_schedule_and_step(tmp_path):
    cfg = _cfg(tmp_path, warmup_steps=5)
    tr = TrainerBase(cfg, gradient_accumulation_steps=1)
    tr.setup_model(_Policy(), "sft", reference=False)
    for i in range(3):
        with tr.accelerator.accumulate(tr.model):
            tr.backward_and_maybe_step(tr.model(torch.ones(1, 3) * i).sum(), [])
    tr.step = 3
    path = tr.save_checkpoint(3)
    other = TrainerBase(cfg, gradient_accumulation_steps=1)
    other.setup_model(_Policy(), "sft", reference=False)
    other.load_checkpoint(path)
    assert other.step == 3 and other.optimizer_steps == 3
    assert other.lr_scheduler.get_last_lr() == tr.lr_scheduler.get_last_lr()
    assert torch.equal(other.policy.lin.weight, tr.policy.lin.weight)
    a, b = tr.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)
    # both continue identically
    for t in (tr, other):
        with t.accelerator.accumulate(t.model):
            t.backward_and_maybe_step(t.model(torch.full((1, 3), 2.0)).sum(), [])
    assert torch.equal(other.policy.lin.weight, tr.policy.lin.weight)
