"""Which denoising steps of a rollout use the SDE: the ``rl.sde_window`` setting and its three modes.

Outside the window the rollout takes deterministic ODE (Euler) steps, which need no log-prob and
are never trained; only the window's steps are stored and trained (``rl.timestep_fraction`` picks
among them). The window ``[start, start + size)`` of a rollout step is a pure function of the recipe,
``train.seed`` and the step number, so every process agrees on it and a resumed run draws the same
windows as an uninterrupted one (nothing to checkpoint).

* ``fixed``: the same window every rollout (the recipe shorthand ``sde_window: [start, end)``).
* ``random`` (Flow-GRPO-Fast): each rollout draws its start uniformly from ``starts = [lo, hi]``
  (inclusive), seeded from ``(train.seed, SDE_WINDOW, step)``.
* ``sliding`` (MixGRPO): the start begins at ``lo`` and moves by ``stride`` steps every
  ``shift_every`` rollout steps; it stops at ``hi`` (or, with ``wrap``, starts again from ``lo``).

For ``random`` and ``sliding`` every window must end before the last denoising step (which is never
trained), so each rollout trains the same number of steps: ``hi + size <= num_steps - 1``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mrgrpo.seeding import SeedStream, derive_seed

WindowMode = Literal["fixed", "random", "sliding"]


class SDEWindow(BaseModel):
    """``rl.sde_window`` as a mapping (a ``[start, end)`` pair is the ``fixed`` shorthand)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    mode: WindowMode = Field(
        "fixed",
        description="`fixed` (same window every rollout), `random` (Flow-GRPO-Fast: start drawn per rollout) or "
        "`sliding` (MixGRPO: start moves by `stride` every `shift_every` rollout steps).",
    )
    size: int = Field(..., ge=1, description="Steps in the window (SDE and trained); ODE steps outside it.")
    start: int = Field(0, ge=0, description="`fixed`: the window's first step.")
    starts: tuple[int, int] | None = Field(
        None,
        description="`random` / `sliding`: [lo, hi] first steps allowed (inclusive); null: [0, num_steps - 1 - size].",
    )
    stride: int = Field(1, ge=1, description="`sliding`: steps the window moves at each shift (MixGRPO's shift).")
    shift_every: int = Field(
        1, ge=1, description="`sliding`: rollout steps between two shifts (MixGRPO's iters_per_group, e.g. 25)."
    )
    wrap: bool = Field(False, description="`sliding`: after the last start, begin again at the first (else stay).")

    @model_validator(mode="after")
    def _fields_of_mode(self) -> SDEWindow:
        given = self.model_fields_set
        if self.mode != "fixed" and "start" in given:
            raise ValueError(f"sde_window.start is for mode fixed; mode {self.mode} takes `starts: [lo, hi]`")
        if self.mode == "fixed" and "starts" in given:
            raise ValueError("sde_window.starts is for modes random / sliding; mode fixed takes `start`")
        sliding_only = {"stride", "shift_every", "wrap"} & given
        if self.mode != "sliding" and sliding_only:
            raise ValueError(f"sde_window.{sorted(sliding_only)[0]} is for mode sliding, not {self.mode}")
        if self.starts is not None and not (0 <= self.starts[0] <= self.starts[1]):
            raise ValueError(f"sde_window.starts must be [lo, hi] with 0 <= lo <= hi, got {list(self.starts)}")
        return self

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """A ``[start, end)`` pair -> ``SDEWindow(mode=fixed, start, size=end - start)``; anything else as given."""
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"sde_window as a list must be [start, end) (two integers), got {list(value)}")
            start, end = value
            if not 0 <= start < end:
                raise ValueError(f"sde_window must be [start, end) with 0 <= start < end, got {list(value)}")
            return cls(mode="fixed", start=start, size=end - start)
        return value

    def compact(self) -> list[int] | dict[str, Any]:
        """What a recipe would write: ``[start, end]`` for a fixed window, else the mapping of the set fields."""
        if self.mode == "fixed":
            return [self.start, self.start + self.size]
        out: dict[str, Any] = {"mode": self.mode, "size": self.size}
        out.update(
            {k: getattr(self, k) for k in ("starts", "stride", "shift_every", "wrap") if k in self.model_fields_set}
        )
        if isinstance(out.get("starts"), tuple):
            out["starts"] = list(out["starts"])
        return out

    def start_range(self, num_steps: int) -> tuple[int, int]:
        """``(lo, hi)``: the first steps the window may take (inclusive)."""
        if self.mode == "fixed":
            return self.start, self.start
        return self.starts if self.starts is not None else (0, num_steps - 1 - self.size)

    def problems(self, num_steps: int) -> list[tuple[str, Any, str, str]]:
        """``(field, value, why, fix)`` of each way the window does not fit ``num_steps`` (empty when it fits)."""
        out: list[tuple[str, Any, str, str]] = []
        if self.mode == "fixed":
            end = self.start + self.size
            if end > num_steps:
                out.append(
                    (
                        "rl.sde_window",
                        [self.start, end],
                        f"ends after rl.num_steps={num_steps}",
                        f"use an end <= {num_steps}",
                    )
                )
            return out
        if self.size > num_steps - 1:
            out.append(
                (
                    "rl.sde_window.size",
                    self.size,
                    f"is larger than the {num_steps - 1} trainable steps of rl.num_steps={num_steps} (the last step "
                    "is never trained)",
                    f"use a size <= {num_steps - 1}",
                )
            )
            return out
        lo, hi = self.start_range(num_steps)
        if hi + self.size > num_steps - 1:
            out.append(
                (
                    "rl.sde_window.starts",
                    [lo, hi],
                    f"lets a window of size {self.size} reach the last step of rl.num_steps={num_steps} "
                    "(never trained)",
                    f"use starts with hi <= {num_steps - 1 - self.size}",
                )
            )
        return out

    def trainable_steps(self, num_steps: int) -> int:
        """SDE steps that can be trained in every rollout (the last denoising step never is)."""
        if self.mode == "fixed":
            end = min(self.start + self.size, num_steps)
            n = max(0, end - self.start)
            return n - (1 if self.start <= num_steps - 1 < end else 0)
        return self.size

    def window_at(self, step: int, num_steps: int, seed: int) -> tuple[int, int]:
        """``(start, end)`` of rollout ``step`` (1-based), ``end`` exclusive; the same on every process."""
        lo, hi = self.start_range(num_steps)
        if self.mode == "fixed":
            return self.start, self.start + self.size
        if self.mode == "random":
            rng = np.random.default_rng(derive_seed(seed, SeedStream.SDE_WINDOW, step))
            start = int(rng.integers(lo, hi + 1))
        else:
            shifts = max(0, step - 1) // self.shift_every
            if self.wrap:
                positions = range(lo, hi + 1, self.stride)
                start = positions[shifts % len(positions)]
            else:
                start = min(lo + shifts * self.stride, hi)
        return start, start + self.size


def window_bounds(window: SDEWindow | tuple[int, int] | None, step: int, num_steps: int, seed: int) -> tuple[int, int]:
    """``[start, end)`` of the SDE steps of rollout ``step``; ``None`` is every step (``(0, num_steps)``)."""
    if window is None:
        return 0, num_steps
    if isinstance(window, SDEWindow):
        return window.window_at(step, num_steps, seed)
    return int(window[0]), int(window[1])
