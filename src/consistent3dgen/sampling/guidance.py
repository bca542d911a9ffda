"""Front-partial guidance: steer the seen part of a latent towards a target while the rest is generated.

A guidance acts after the plain Euler step ``x_next = x + dt·v`` (``dt = sigma_next − sigma < 0``) and only on
the guided entries, selected by a mask ``M`` (1 = the token has a target ``x_fg``; soft values weight the pull).
Variants, by name in :data:`GUIDANCE_VARIANTS` (``λ`` = ``strength``):

``paper``
    Eq. 8–9 of the paper, ``x ← x − (v + λ·Δ)``, ``Δ = x⊙M − x_fg``, written with the step size:
    ``x_next = x + dt·(v + λ·Δ)``. The paper's update has no ``dt``, so its λ is a per-step strength
    ``λ_paper = λ·|dt|``; here λ is a rate per unit sigma (the pull alone shrinks Δ by ``1 − λ|dt|`` per step,
    about ``exp(−λ)`` over a whole schedule) and the same λ means the same thing for any step count. Explicit
    Euler needs ``λ·|dt| < 2`` to stay stable (``< 1`` to avoid overshoot).
``noised``
    as ``paper`` but compared with the target noised to the current sigma: ``Δ = M⊙(x − ((1−σ)x_fg + σε))``.
``x0``
    pull the predicted clean latent ``x̂₀ = x − σv`` towards the target by the fraction λ ∈ [0, 1]:
    ``x̂₀' = x̂₀ − λM⊙(x̂₀ − x_fg)``, ``v' = (x − x̂₀')/σ``. λ = 1 lands the masked entries exactly on the target
    at sigma = 0.
``replace``
    RePaint-style: after every step the masked entries become the target noised to the next sigma,
    ``(1−σ')x_fg + σ'ε``, blended by λ ∈ [0, 1] (1 = full replacement).

``ε`` is the sampler's initial noise (``noise="initial"``: the masked entries then follow the straight path
from their own noise to the target) or fresh Gaussian noise each step (``noise="fresh"``). λ = 0 gives exactly
the unguided update (every variant adds ``0·(...)`` to it). ``x_fg`` is taken as ``M⊙x_fg``: values where
``M = 0`` are never read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .noise import draw_noise


class GuidanceStep:
    """What a variant sees at one step, restricted to the guided entries (gathered lazily: each variant pays
    only for the tensors it reads, which keeps guidance cheap at 100 k tokens)."""

    def __init__(self, selection, x, velocity, x_next, target, noise, sigma, sigma_next, strength) -> None:
        self._sel, self._x, self._v, self._x_next = selection, x, velocity, x_next
        self.target: torch.Tensor = target  # x_fg
        self.noise: torch.Tensor | None = noise  # epsilon for noised targets
        self.sigma, self.sigma_next, self.strength = sigma, sigma_next, strength

    @property
    def x(self) -> torch.Tensor:
        """Latent before the step."""
        return self._sel.gather(self._x)

    @property
    def velocity(self) -> torch.Tensor:
        """Model velocity (after CFG)."""
        return self._sel.gather(self._v)

    @property
    def x_next(self) -> torch.Tensor:
        """Plain Euler result."""
        return self._sel.gather(self._x_next)


# A variant returns (delta, scale): the guided entries of x_next get ``+ scale · M · delta``.
GuidanceFn = Callable[[GuidanceStep], tuple[torch.Tensor, float]]
GUIDANCE_VARIANTS: dict[str, GuidanceFn] = {}
# variants whose λ is a fraction (values above 1 overshoot the target)
FRACTION_VARIANTS = {"x0", "replace"}
NOISE_VARIANTS = {"noised", "replace"}


def register_guidance(name: str) -> Callable[[GuidanceFn], GuidanceFn]:
    """Register a variant ``fn(step) -> (delta, scale)`` under ``name`` (x_next += scale · M · delta)."""

    def wrap(fn: GuidanceFn) -> GuidanceFn:
        GUIDANCE_VARIANTS[name] = fn
        return fn

    return wrap


@register_guidance("paper")
def paper_guidance(s: GuidanceStep) -> tuple[torch.Tensor, float]:
    # x + dt·(v + λΔ) = x_next + dt·λ·Δ
    return s.x - s.target, (s.sigma_next - s.sigma) * s.strength


@register_guidance("noised")
def noised_guidance(s: GuidanceStep) -> tuple[torch.Tensor, float]:
    noised_target = (1.0 - s.sigma) * s.target + s.sigma * s.noise
    return s.x - noised_target, (s.sigma_next - s.sigma) * s.strength


@register_guidance("x0")
def x0_guidance(s: GuidanceStep) -> tuple[torch.Tensor, float]:
    # v' = v + λM(x̂₀ − x_fg)/σ, so x_next' = x_next + dt·λ/σ·M(x̂₀ − x_fg)
    x0_pred = s.x - s.sigma * s.velocity
    return x0_pred - s.target, (s.sigma_next - s.sigma) * s.strength / s.sigma


@register_guidance("replace")
def replace_guidance(s: GuidanceStep) -> tuple[torch.Tensor, float]:
    noised_target = (1.0 - s.sigma_next) * s.target + s.sigma_next * s.noise
    return noised_target - s.x_next, s.strength


class _RowSelection:
    """Guided rows of an (N, C) latent, by index: per-step cost scales with the guided rows only."""

    def __init__(self, index: torch.Tensor) -> None:
        self.index = index

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, self.index)

    def add_(self, dst: torch.Tensor, values: torch.Tensor, alpha: float) -> None:
        dst.index_add_(0, self.index, values.to(dst.dtype), alpha=alpha)


class _FullSelection:
    """All entries (dense latents, or masks that are not row masks); the weight carries the mask."""

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def add_(self, dst: torch.Tensor, values: torch.Tensor, alpha: float) -> None:
        dst.add_(values.to(dst.dtype), alpha=alpha)


@dataclass
class FrontGuidance:
    """Front-partial guidance settings.

    target:  same shape as the latent (rows/entries with ``mask == 0`` are ignored).
    mask:    broadcastable to the latent, values in [0, 1]; for (N, C) latents a (N,) or (N, 1) row mask.
    strength: λ (see the module docstring for its meaning per variant); 0 = unguided.
    sigma_range: guidance acts only on steps whose starting sigma lies in [low, high].
    noise:   "initial" (the sampler's starting noise) or "fresh" (new noise each step) for noised targets.
    """

    target: torch.Tensor
    mask: torch.Tensor
    strength: float
    variant: str = "paper"
    sigma_range: tuple[float, float] = (0.0, 1.0)
    noise: str = "initial"

    def __post_init__(self) -> None:
        if self.variant not in GUIDANCE_VARIANTS:
            raise ValueError(f"unknown guidance variant {self.variant!r}; known: {sorted(GUIDANCE_VARIANTS)}")
        if self.strength < 0:
            raise ValueError(f"guidance strength must be >= 0, got {self.strength}")
        if self.variant in FRACTION_VARIANTS and self.strength > 1:
            raise ValueError(f"{self.variant!r} guidance strength is a fraction in [0, 1], got {self.strength}")
        if self.noise not in ("initial", "fresh"):
            raise ValueError(f"guidance noise must be 'initial' or 'fresh', got {self.noise!r}")

    def prepare(self, noise: torch.Tensor) -> PreparedGuidance:
        """Bind to a latent of ``noise``'s shape: pick the guided entries once, so each step is cheap."""
        x_shape = noise.shape
        if tuple(self.target.shape) != tuple(x_shape):
            raise ValueError(f"guidance target shape {tuple(self.target.shape)} != latent shape {tuple(x_shape)}")
        math_dtype = torch.promote_types(noise.dtype, torch.float32)  # fp16 latents: guide in float32
        mask = self.mask.to(device=noise.device, dtype=math_dtype)
        target = self.target.to(device=noise.device, dtype=math_dtype)
        is_row_mask = len(x_shape) == 2 and (mask.ndim == 1 or (mask.ndim == 2 and mask.shape[1] == 1))
        if is_row_mask:
            rows = mask.reshape(-1)
            if rows.shape[0] != x_shape[0]:
                raise ValueError(f"row mask has {rows.shape[0]} rows for {x_shape[0]} tokens")
            index = torch.nonzero(rows > 0).flatten()
            selection: _RowSelection | _FullSelection = _RowSelection(index)
            w = rows.index_select(0, index)[:, None]
            weight = None if bool((w == 1).all()) else w
        else:
            try:
                torch.broadcast_shapes(mask.shape, x_shape)
            except RuntimeError as e:
                raise ValueError(f"guidance mask {tuple(mask.shape)} does not broadcast to {tuple(x_shape)}") from e
            selection = _FullSelection()
            weight = mask
        fixed_noise = None
        if self.variant in NOISE_VARIANTS and self.noise == "initial":
            fixed_noise = selection.gather(noise).to(math_dtype)
        return PreparedGuidance(self, selection, selection.gather(target), weight, fixed_noise)


@dataclass
class PreparedGuidance:
    settings: FrontGuidance
    selection: _RowSelection | _FullSelection
    target: torch.Tensor
    weight: torch.Tensor | None
    fixed_noise: torch.Tensor | None

    def active(self, sigma: float) -> bool:
        lo, hi = self.settings.sigma_range
        return lo <= sigma <= hi

    def apply_(
        self,
        x: torch.Tensor,
        velocity: torch.Tensor,
        x_next: torch.Tensor,
        sigma: float,
        sigma_next: float,
        generator: torch.Generator | None = None,
    ) -> None:
        """Overwrite the guided entries of ``x_next`` (the plain Euler result) in place."""
        sel = self.selection
        noise = self.fixed_noise
        if noise is None and self.settings.variant in NOISE_VARIANTS:
            noise = draw_noise(self.target.shape, generator, self.target.device, self.target.dtype)
        strength = float(self.settings.strength)
        step = GuidanceStep(sel, x, velocity, x_next, self.target, noise, sigma, sigma_next, strength)
        delta, scale = GUIDANCE_VARIANTS[self.settings.variant](step)
        if self.weight is not None:
            delta = delta * self.weight
        sel.add_(x_next, delta, scale)
