"""Gaussian noise on any device from one seeded generator: drawn where the generator lives, then moved.

A run seeds one CPU ``torch.Generator``; drawing from it on the CPU and moving the result keeps the numbers the
same on every device (a CUDA tensor cannot be drawn from a CPU generator anyway), and a CPU run bit-identical to
drawing directly.
"""

from __future__ import annotations

import torch


def draw_noise(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``torch.randn(shape)`` drawn on ``generator``'s device (the CPU without one), returned on ``device``."""
    source = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=source)
    return z if device is None else z.to(device)
