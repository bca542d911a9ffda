"""A Gaussian data distribution whose exact flow velocity is known in closed form (for testing guidance).

For ``x_0 ~ N(μ, Σ)`` and the linear path ``x_σ = (1 − σ)x_0 + σε``: ``Cov(x_σ) = S = (1 − σ)²Σ + σ²I``,
``E[x_0 | x_σ] = μ + (1 − σ)ΣS⁻¹(x_σ − (1 − σ)μ)`` and, since ``ε − x_0 = (x_σ − x_0)/σ``, the exact
velocity is ``v(x_σ) = (x_σ − E[x_0 | x_σ]) / σ``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GaussianFlow:
    """Exact flow-matching velocity of N(mean, cov) in d dimensions; latents are (d, n): one column a sample."""

    mean: torch.Tensor  # (d,)
    cov: torch.Tensor  # (d, d)

    def velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: object = None) -> torch.Tensor:
        sigma = float(timestep.reshape(-1)[0]) / 1000.0
        d = self.mean.shape[0]
        mean = self.mean.to(x.dtype)[:, None]
        cov = self.cov.to(x.dtype)
        s = (1 - sigma) ** 2 * cov + sigma**2 * torch.eye(d, dtype=x.dtype)
        x0 = mean + (1 - sigma) * cov @ torch.linalg.solve(s, x - (1 - sigma) * mean)
        return (x - x0) / sigma

    def conditional(self, observed: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of the other coordinates given ``x[observed] = values`` (observed: bool (d,))."""
        o, u = observed, ~observed
        c_oo, c_uo, c_uu = self.cov[o][:, o], self.cov[u][:, o], self.cov[u][:, u]
        mean = self.mean[u] + c_uo @ torch.linalg.solve(c_oo, values - self.mean[o])
        return mean, c_uu - c_uo @ torch.linalg.solve(c_oo, c_uo.T)


def example_gaussian(dtype: torch.dtype = torch.float64) -> tuple[GaussianFlow, torch.Tensor, torch.Tensor]:
    """A correlated 4-D Gaussian, the mask (first two coordinates) and a target 1.2σ/0.8σ off the mean."""
    a = torch.tensor([[1.0, 0.3, 0.5, 0.2], [0.0, 0.8, 0.4, -0.3], [0, 0, 0.6, 0.1], [0, 0, 0, 0.5]], dtype=dtype)
    flow = GaussianFlow(torch.tensor([0.5, -1.0, 0.2, 0.8], dtype=dtype), a.T @ a + 0.05 * torch.eye(4, dtype=dtype))
    mask = torch.tensor([True, True, False, False])
    target = flow.mean.clone()
    target[mask] += torch.tensor([1.2, -0.8], dtype=dtype)
    return flow, mask, target
