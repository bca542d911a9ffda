"""Shifted flow-matching sigma schedules (diffusers ``FlowMatchEulerDiscreteScheduler`` semantics).

Direct3D-S2 builds ``FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=S)`` and calls
``set_timesteps(N)``. Written out, that is: the training sigmas ``t/1000`` for ``t = 1000..1`` are shifted in
float32, their ends give ``sigma_max`` (1.0) and ``sigma_min``; ``N`` timesteps are ``linspace`` between them
in float64, divided by 1000, shifted again in float64, cast to float32; ``timesteps = sigmas * 1000`` and a
trailing 0 is appended to the sigmas. :func:`flow_match_sigmas` repeats those operations in the same order and
dtypes, so the sequences are bit-identical (checked against the fixture of diffusers 0.42.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Direct3D-S2 defaults per stage (pipeline.py and its configs): (shift, steps).
DIRECT3D_S2_SCHEDULES: dict[str, tuple[float, int]] = {
    "dense": (6.0, 50),
    "sparse512": (6.0, 30),
    "sparse1024": (8.0, 15),
}


def shift_sigmas(sigmas: np.ndarray | torch.Tensor, shift: float) -> np.ndarray | torch.Tensor:
    """Resolution shift ``S·s / (1 + (S − 1)·s)``: spends more steps at high noise for S > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_match_sigmas(num_steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """(num_steps + 1,) float32 sigmas from 1 down to the trailing 0, exactly as diffusers computes them."""
    if num_steps < 1:
        raise ValueError(f"need at least one sampling step, got {num_steps}")
    train = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
    train_sigmas = shift_sigmas(torch.from_numpy(train) / num_train_timesteps, shift)
    sigma_max, sigma_min = train_sigmas[0].item(), train_sigmas[-1].item()
    timesteps = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)
    sigmas = torch.from_numpy(shift_sigmas(timesteps / num_train_timesteps, shift)).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float32)])


@dataclass(frozen=True)
class FlowMatchSchedule:
    """A sigma sequence ``sigmas[0] > ... > sigmas[-1] = 0``; step i goes from ``sigmas[i]`` to ``sigmas[i+1]``."""

    sigmas: torch.Tensor
    num_train_timesteps: int = 1000

    @classmethod
    def shifted(cls, num_steps: int, shift: float, num_train_timesteps: int = 1000) -> FlowMatchSchedule:
        return cls(flow_match_sigmas(num_steps, shift, num_train_timesteps), num_train_timesteps)

    @classmethod
    def direct3d_s2(cls, stage: str, num_steps: int | None = None) -> FlowMatchSchedule:
        """The official schedule of a Direct3D-S2 stage ("dense", "sparse512", "sparse1024")."""
        if stage not in DIRECT3D_S2_SCHEDULES:
            raise ValueError(f"unknown Direct3D-S2 stage {stage!r}; known: {sorted(DIRECT3D_S2_SCHEDULES)}")
        shift, steps = DIRECT3D_S2_SCHEDULES[stage]
        return cls.shifted(num_steps or steps, shift)

    def __len__(self) -> int:
        """Number of Euler steps."""
        return int(self.sigmas.shape[0]) - 1

    @property
    def timesteps(self) -> torch.Tensor:
        """(num_steps,) float32 ``sigma * num_train_timesteps`` (what the model is told), as diffusers has them."""
        return self.sigmas[:-1] * self.num_train_timesteps

    def start_index(self, strength: float) -> int:
        """First step for an SDEdit-style start: the first sigma ≤ ``strength`` (1 = full schedule, 0 = none)."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"SDEdit strength must lie in [0, 1], got {strength}")
        below = torch.nonzero(self.sigmas[:-1] <= strength + 1e-7).flatten()
        return int(below[0]) if len(below) else len(self)
