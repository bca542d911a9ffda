"""What a generator stage must offer the guided sampler and the stage pipeline.

A generator = a dense stage (coarse occupancy on a small latent grid) + one or more sparse stages (SDF on
sparse voxels, latent tokens at ``resolution // latent_factor``). The sampler only ever sees tensors and a
velocity function, so any model that implements these protocols can be guided.

Conventions (Direct3D-S2, diffusers flow matching): ``x_t = (1 - sigma) * x_0 + sigma * noise``, the model
predicts ``v = noise - x_0`` given ``timestep = 1000 * sigma``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..geometry.voxels import SparseVoxels


@dataclass
class SparseLatent:
    """Latent tokens of a sparse stage: coords (N, 3) int32 at ``resolution`` (latent grid), feats (N, C)."""

    coords: torch.Tensor
    feats: torch.Tensor
    resolution: int

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def to(self, device: str | torch.device) -> SparseLatent:
        """The same tokens with coords and feats on ``device`` (self when they are there already)."""
        device = torch.device(device)
        if self.coords.device == device and self.feats.device == device:
            return self
        return SparseLatent(self.coords.to(device), self.feats.to(device), self.resolution)

    def to_voxels(self) -> SparseVoxels:
        return SparseVoxels(
            self.coords.detach().cpu().numpy(), self.resolution, self.feats.detach().float().cpu().numpy()
        )

    @classmethod
    def from_voxels(cls, v: SparseVoxels, device: str | torch.device = "cpu", dtype=torch.float32) -> SparseLatent:
        if v.feats is None:
            raise ValueError("latent voxels need features")
        return cls(
            torch.as_tensor(v.coords, device=device, dtype=torch.int32),
            torch.as_tensor(v.feats, device=device, dtype=dtype),
            v.resolution,
        )


@runtime_checkable
class DenseStage(Protocol):
    """Coarse stage: occupancy at ``occupancy_resolution``³ ↔ latent (C, L, L, L)."""

    occupancy_resolution: int  # Direct3D-S2: 64
    latent_shape: tuple[int, int, int, int]  # Direct3D-S2: (8, 16, 16, 16)

    def encode_occupancy(self, occupancy: torch.Tensor) -> torch.Tensor:
        """(B, 1, R, R, R) {0, 1} float → (B, C, L, L, L) latent (posterior mean)."""

    def decode_occupancy(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, L, L, L) → (B, 1, R, R, R) occupancy logits."""

    def velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
        """Flow velocity for a batch of latents; ``timestep`` (B,) = 1000·sigma."""


@runtime_checkable
class SparseStage(Protocol):
    """Sparse SDF stage: SDF voxels at ``resolution`` ↔ latent tokens at ``resolution // latent_factor``."""

    resolution: int  # 512 or 1024 (SDF grid)
    latent_factor: int  # 8
    latent_channels: int

    def encode_sdf(self, sdf: SparseVoxels) -> SparseLatent:
        """Narrow-band SDF voxels (feats (N, 1) in [-1, 1]) → latent tokens (posterior mean)."""

    def decode_sdf(self, latent: SparseLatent) -> SparseVoxels:
        """Latent tokens → SDF voxels at ``resolution`` (feats (N, 1) in [-1, 1]). A stage that can decode in
        spatial chunks takes ``chunk_size`` (chunks per axis) as an optional keyword (low-memory mode passes it)."""

    def token_order(self, coords: torch.Tensor) -> torch.Tensor:
        """Permutation putting latent coords in the order the model needs (e.g. block order)."""

    def velocity(self, x: torch.Tensor, coords: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
        """Flow velocity (N, C) for tokens x (N, C) at ``coords`` (N, 3); ``timestep`` (1,) = 1000·sigma."""

    # Optional, looked up with getattr by the cascade:
    # ``refiner: Refiner | None``, the stage's post-decode refinement (below);
    # ``prepare_condition(cond, mask) -> cond``, the stage's own form of the image condition (e.g. Direct3D-S2
    # v1.0's sparse condition tokens), called once per stage for the positive and the negative input.


@runtime_checkable
class Refiner(Protocol):
    """A sparse stage's optional last step (e.g. Direct3D-S2's refiners): it decodes the tokens in place of
    ``decode_sdf`` (keeping what it needs from the decoder), and, after the cascade's fusion and free-space clamp,
    turns the SDF into the stage's mesh (used for the hand-off to the next stage and for the output)."""

    name: str

    def level(self, base: float) -> float:
        """The refined field's marching-cubes level, given the generator's level for the decoded SDF."""

    def decode(self, latent: SparseLatent) -> tuple[SparseVoxels, Any]:
        """Latent tokens → (SDF voxels as ``decode_sdf`` gives them, what ``refine`` needs from the decoder); takes
        ``chunk_size`` as ``decode_sdf`` does."""

    def refine(self, sdf: SparseVoxels, decoded: Any, level: float) -> tuple[Any, Any]:
        """SDF voxels (same rows as decoded) → mesh ``(vertices (V, 3) canonical, faces (F, 3))`` at ``level``."""


def stage_device(stage: Any) -> torch.device:
    """Where a stage's models run: its ``device`` attribute when it has one, else the CPU."""
    device = getattr(stage, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def stage_modules(stage: Any) -> list[nn.Module]:
    """The models of a stage (or of a conditioner): the object itself when it is a module, what its ``modules()``
    gives when it defines one, else its attributes that are modules (Direct3D-S2's adapters: ``vae``, ``dit``)."""
    if stage is None:
        return []
    if isinstance(stage, nn.Module):
        return [stage]
    own = getattr(stage, "modules", None)
    if callable(own):
        return list(own())
    return [v for v in vars(stage).values() if isinstance(v, nn.Module)] if hasattr(stage, "__dict__") else []


class Conditioner(Protocol):
    """Image → conditioning tokens; the unconditional input is ``torch.zeros_like`` of them."""

    def __call__(self, image: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplerSettings:
    """The default schedule of one stage: Euler steps and the flow-matching resolution shift."""

    steps: int
    shift: float


@dataclass
class Generator:
    """A complete prior: dense stage, sparse stages (coarse to fine), optional image conditioner, and the
    defaults it brings: sampler settings per stage and generation-option values (guidance strength, thresholds,
    the SDF convention its sparse VAE was trained on: ``band``, ``shell``, ``mc_level``)."""

    dense: DenseStage
    sparse: list[SparseStage]
    dense_sampler: SamplerSettings
    sparse_samplers: list[SamplerSettings]
    defaults: dict[str, Any] = field(default_factory=dict)  # GenerationOptions name → value
    conditioner: Conditioner | None = None
    name: str = "generator"
    # condition used when there is no conditioner (an unconditional prior: its all-zero "uncond" tokens);
    # classifier-free guidance is then skipped, since there is no negative branch
    null_condition: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.sparse_samplers) != len(self.sparse):
            raise ValueError(f"{len(self.sparse_samplers)} sparse sampler settings for {len(self.sparse)} stages")

    def modules(self) -> Iterator[nn.Module]:
        """Every model of the generator, once: the stages', the conditioner's and any other field holding models
        (e.g. refiners), in field order."""
        seen: set[int] = set()
        for f in fields(self):
            value = getattr(self, f.name)
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, (torch.Tensor, str, int, float, dict, SamplerSettings)) or item is None:
                    continue
                for m in stage_modules(item):
                    if id(m) not in seen:
                        seen.add(id(m))
                        yield m

    def to(self, device: str | torch.device) -> Generator:
        """Move every model (and the null condition) to ``device``; returns self."""
        for m in self.modules():
            m.to(device)
        if self.null_condition is not None:
            self.null_condition = self.null_condition.to(device)
        return self

    def has_refiners(self) -> bool:
        return any(getattr(s, "refiner", None) is not None for s in self.sparse)

    def option_defaults(self) -> dict[str, Any]:
        """What unset :class:`~consistent3dgen.options.GenerationOptions` resolve to with this generator
        (``refine``: on when a stage has a refiner, unless its defaults say otherwise)."""
        return {"refine": self.has_refiners(), **self.defaults, "dense_steps": self.dense_sampler.steps,
                "sparse_steps": tuple(s.steps for s in self.sparse_samplers)}
