"""Flow-matching Euler sampler with classifier-free guidance, front-partial guidance and debugging hooks.

Model-agnostic: the model is a velocity function ``v(x, timestep, cond)`` with ``timestep`` a (1,) tensor of
``1000·sigma``; ``x`` may be a dense (B, C, L, L, L) or sparse (N, C) latent. Conventions as diffusers'
``FlowMatchEulerDiscreteScheduler``: ``x_t = (1 − σ)x_0 + σε``, ``v = ε − x_0``, and one step is
``x ← x + (σ_next − σ)·v`` computed in float32 and cast back to the velocity's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .guidance import FrontGuidance
from .noise import draw_noise
from .schedule import FlowMatchSchedule

VelocityFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass
class StepInfo:
    """Passed to the callback after each step (tensors are the sampler's own: clone to keep them)."""

    index: int
    sigma: float
    sigma_next: float
    x: torch.Tensor  # before the step
    velocity: torch.Tensor  # after CFG, before front guidance
    x0_pred: torch.Tensor  # x − σ·v
    x_next: torch.Tensor  # after the step and the guidance
    stage: str = ""  # the sampler's ``desc``: "dense", "sparse512", ...
    total: int = 0  # index of the last step + 1 (steps run: total − start_index)


@dataclass
class SampleResult:
    x: torch.Tensor
    trajectory: list[torch.Tensor] = field(default_factory=list)  # x before each step, then the result
    x0_predictions: list[torch.Tensor] = field(default_factory=list)


def initial_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Starting noise drawn as the official pipeline draws it (one ``torch.randn`` of the latent shape), on the
    generator's device (the CPU for a CPU generator), then moved to ``device``: the same numbers on every device."""
    return draw_noise(shape, generator, device, dtype)


def cfg_velocity(velocity_fn: VelocityFn, x: torch.Tensor, t: torch.Tensor, cond: Any, uncond: Any, scale: float):
    """``uncond + scale·(cond − uncond)`` from two model calls (cond first, as the official pipeline); one call
    when there is no negative branch (``uncond`` None) or the scale is 1 (the result would be ``cond``'s)."""
    v_cond = velocity_fn(x, t, cond)
    if uncond is None or scale == 1.0:
        return v_cond
    v_uncond = velocity_fn(x, t, uncond)
    return v_uncond + scale * (v_cond - v_uncond)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor):
    """diffusers' step: float32 math with 0-d float32 sigmas, cast back to the velocity's dtype."""
    return (x.to(torch.float32) + (sigma_next - sigma) * velocity).to(velocity.dtype)


def ancestral_step(
    x: torch.Tensor,
    velocity: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    eta: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDIM-style step of the flow path: ``eta = 0`` is the Euler step, ``eta = 1`` samples the DDPM posterior.

    With ``x̂₀ = x − σv`` and ``ε̂ = x + (1 − σ)v``: ``x' = (1 − σ')x̂₀ + sqrt(σ'² − c²)·ε̂ + c·z`` where
    ``c = eta·σ'·sqrt(σ² − a²σ'²)/σ``, ``a = (1 − σ)/(1 − σ')`` (the std of x_σ' given x_σ and x₀).
    """
    xf, vf = x.to(torch.float32), velocity.to(torch.float32)
    x0, eps = xf - sigma * vf, xf + (1 - sigma) * vf
    a = (1 - sigma) / (1 - sigma_next)
    c = eta * sigma_next * torch.sqrt(torch.clamp(sigma**2 - (a * sigma_next) ** 2, min=0.0)) / sigma
    z = draw_noise(x.shape, generator, x.device)
    return ((1 - sigma_next) * x0 + torch.sqrt(sigma_next**2 - c**2) * eps + c * z).to(velocity.dtype)


def sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    schedule: FlowMatchSchedule,
    cond: Any = None,
    *,
    uncond: Any = None,
    cfg_scale: float = 7.0,
    guidance: FrontGuidance | None = None,
    x_start: torch.Tensor | None = None,
    start_index: int = 0,
    generator: torch.Generator | None = None,
    timestep_dtype: torch.dtype = torch.float32,
    progress: bool | dict = True,
    desc: str = "sampling",
    callback: Callable[[StepInfo], None] | None = None,
    return_trajectory: bool = False,
    resample: int = 0,
    eta: float = 0.0,
) -> SampleResult:
    """Integrate the flow from ``noise`` (or from ``x_start`` noised to ``sigmas[start_index]``) down to sigma 0.

    cond / uncond: conditioning passed to ``velocity_fn``; classifier-free guidance (two model calls a step)
        only when there is a negative branch ``uncond`` (Direct3D-S2: ``zeros_like(cond)``) and cfg_scale ≠ 1.
    guidance: front-partial guidance (None or strength 0 = plain sampler).
    x_start, start_index: SDEdit start, ``x = (1 − σ_s)·x_start + σ_s·noise``; noise is also the guidance's ε.
    timestep_dtype: dtype of the timestep given to the model (the official pipeline uses the latent dtype).
    progress: show a tqdm bar; a dict is tqdm keyword arguments for it (``{"disable": True}``, ``{"position": 1}``).
    callback: called with a :class:`StepInfo` after every step; ``return_trajectory`` keeps x and x̂₀ per step.
    resample: RePaint-style jumps: while guidance acts, each step is redone ``resample`` more times after
        re-noising its result back to the step's sigma with fresh noise (stochastic; makes ``replace`` approach
        the exact conditional, see docs/guidance.md). Ignored without guidance or at strength 0.
    eta: 0 = deterministic Euler (the official sampler); > 0 = stochastic ancestral steps (:func:`ancestral_step`).
    """
    if not 0 <= start_index <= len(schedule):
        raise ValueError(f"start_index {start_index} outside [0, {len(schedule)}]")
    sigmas = schedule.sigmas.to(torch.float32)
    if x_start is not None:
        if x_start.shape != noise.shape:
            raise ValueError(f"x_start shape {tuple(x_start.shape)} != noise shape {tuple(noise.shape)}")
        s0 = sigmas[start_index]
        x_start = x_start.to(device=noise.device, dtype=torch.float32)  # (the noise's device is the run's)
        x = ((1 - s0) * x_start + s0 * noise.to(torch.float32)).to(noise.dtype)
    else:
        x = noise.clone()
    prepared = guidance.prepare(noise) if guidance is not None else None
    result = SampleResult(x)
    device = x.device
    bar = {"desc": desc, "leave": False, **(progress if isinstance(progress, dict) else {"disable": not progress})}
    for i in tqdm(range(start_index, len(schedule)), **bar):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        t = torch.tensor([float(schedule.timesteps[i])], dtype=timestep_dtype, device=device)
        guided = prepared is not None and prepared.active(float(sigma))
        jumps = resample if guided and prepared.settings.strength > 0 else 0
        x_next = x
        for jump in range(jumps + 1):
            if jump:  # forward transition sigma_next -> sigma of the path x_s = (1 - s) x_0 + s eps
                alpha = (1 - sigma) / (1 - sigma_next)
                beta = torch.sqrt(torch.clamp(sigma**2 - (alpha * sigma_next) ** 2, min=0.0))
                z = draw_noise(x_next.shape, generator, device)
                x = (alpha * x_next.to(torch.float32) + beta * z).to(x_next.dtype)
            v = cfg_velocity(velocity_fn, x, t, cond, uncond, cfg_scale)
            if eta > 0:
                x_next = ancestral_step(x, v, sigma, sigma_next, eta, generator)
            else:
                x_next = euler_step(x, v, sigma, sigma_next)
            if guided:
                prepared.apply_(x, v, x_next, float(sigma), float(sigma_next), generator)
        if callback is not None or return_trajectory:
            x0_pred = (x.to(torch.float32) - sigma * v).to(v.dtype)
            if return_trajectory:
                result.trajectory.append(x)
                result.x0_predictions.append(x0_pred)
            if callback is not None:
                callback(StepInfo(i, float(sigma), float(sigma_next), x, v, x0_pred, x_next, desc, len(schedule)))
        x = x_next
    if return_trajectory:
        result.trajectory.append(x)
    result.x = x
    return result
