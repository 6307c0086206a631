"""One place that checks every random draw and every model input against the policy's device.

CUDA refuses a draw whose generator lives on another device than the tensor it fills ("Expected a
'cpu' device type for generator but found 'cuda'"); on a CPU-only machine such a draw silently
works, which is how a whole class of GPU-only crashes hid. :class:`DeviceAudit` applies the CUDA
rule on any device: while it is active, every ``torch`` random function called with a generator
must name its output device explicitly and that device must be the generator's; every generator
must live on the audited device; and the tensors reaching the watched policy methods must be on
the policy's device. Violations are collected (not raised inside library code) and asserted by
the test.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

RANDOM_FACTORIES = {torch.randn, torch.rand, torch.randint, torch.randperm, torch.normal}
RANDOM_IN_PLACE = {
    torch.Tensor.normal_,
    torch.Tensor.uniform_,
    torch.Tensor.random_,
    torch.Tensor.bernoulli_,
    torch.Tensor.exponential_,
    torch.bernoulli,
    torch.multinomial,
}


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _tensors(obj: Any, depth: int = 0):
    if depth > 4:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, depth + 1)
    elif hasattr(obj, "tensors") and isinstance(obj.tensors, dict):  # Conditioning
        yield from _tensors(obj.tensors, depth + 1)


class DeviceAudit(TorchFunctionMode):
    """``with DeviceAudit("cuda") as audit: ...; assert not audit.violations``."""

    def __init__(self, device: torch.device | str):
        super().__init__()
        self.device = torch.device(device)
        self.violations: list[str] = []
        self.draws = 0
        self.checked_inputs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        gen = kwargs.get("generator")
        if gen is not None and (func in RANDOM_FACTORIES or func in RANDOM_IN_PLACE):
            self.draws += 1
            name = getattr(func, "__name__", str(func))
            if not same_device(gen.device, self.device):
                self.violations.append(f"{name}: generator on {gen.device}, policy on {self.device}")
            if func in RANDOM_FACTORIES:
                out = kwargs.get("device")
                if out is None or not same_device(out, gen.device):
                    self.violations.append(
                        f"{name}: draws on {out or 'the default device'} with a {gen.device} generator"
                    )
            elif args and isinstance(args[0], torch.Tensor) and not same_device(args[0].device, gen.device):
                self.violations.append(f"{name}: fills a {args[0].device} tensor with a {gen.device} generator")
        return func(*args, **kwargs)

    def watch(self, policy: Any, methods: tuple[str, ...] = ("velocity", "decode", "encode_images")) -> None:
        """Check the tensors passed to (and returned by) ``policy.<method>`` are on the audited device."""
        for name in methods:
            original = getattr(policy, name)

            @functools.wraps(original)
            def checked(*args, _name=name, _orig=original, **kwargs):
                for t in _tensors((args, kwargs)):
                    self.checked_inputs += 1
                    if not same_device(t.device, self.device):
                        self.violations.append(
                            f"{_name}: input {tuple(t.shape)} on {t.device}, policy on {self.device}"
                        )
                out = _orig(*args, **kwargs)
                for t in _tensors(out):
                    if not same_device(t.device, self.device):
                        self.violations.append(
                            f"{_name}: output {tuple(t.shape)} on {t.device}, policy on {self.device}"
                        )
                return out

            setattr(policy, name, checked)
