"""Direct3D-S2's two refiners as the cascade's :class:`~consistent3dgen.generators.base.Refiner` hook.

Official order (``direct3d_s2/pipeline.py``, ``Direct3DS2Pipeline.inference`` with ``remove_interior``, and
``Voxel_RefinerXL.run`` / ``Voxel_RefinerXL_sign.run`` in ``models/refiner/unet_refiner.py``):

* 512 stage: the sparse VAE decodes the SDF *and* its last features (``return_feat=True``); ``Voxel_RefinerXL``
  turns them into a dense refined SDF (interior surfaces removed); marching cubes at ``2 × mc_threshold``
  (0.4 for the default 0.2). The 1024 stage's tokens come from this mesh (``normalize_mesh`` + ``mesh2index``).
* 1024 stage: ``Voxel_RefinerXL_sign`` predicts an inside/outside sign per 512 voxel from the pooled SDF; the
  field is ``|sdf| · sign`` (±1 off the decoded voxels), the decoded values kept on them; marching cubes at
  ``mc_threshold`` (0.2).

Here the cascade first fuses the decoded SDF with the seen shell and clamps free space, then refines.

The official code forms the dense field (512³, and 1024³ for the sign refiner) and runs skimage on it. Here the
field is scanned in slabs along x and only the corner voxels of the cubes whose 8 values straddle the level are
kept (:func:`surface_voxels`); sparse marching cubes on them, keeping only the faces of those cubes
(:func:`surface_mesh`), gives the iso-surface of the whole field without a dense 1024³ array. Vertices follow
this package's voxel-centre convention (:mod:`consistent3dgen.geometry.voxels`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...devices import module_device
from ...errors import NoSurfaceError
from ...geometry.voxels import SparseVoxels, linear_index
from ..base import SparseLatent
from .refiner import Voxel_RefinerXL, Voxel_RefinerXL_sign
from .sparse_codec import decode_sdf
from .sparse_tensor import SparseTensor

# values closer than this (× (1 + |level|)) to the level are moved just above it before the scan, so that the
# scan and marching cubes (which nudges by 1e-4 of the value span) agree on every sample's side
_NUDGE = 1e-3


def _cubes(inside: torch.Tensor, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``op`` over the 8 corners of every cube of a (X, Y, Z) bool grid → (X-1, Y-1, Z-1)."""
    a = op(inside[:-1], inside[1:])
    a = op(a[:, :-1], a[:, 1:])
    return op(a[:, :, :-1], a[:, :, 1:])


@torch.no_grad()
def surface_voxels(values: Callable[[int, int], torch.Tensor], resolution: int, level: float, slab: int = 32
                   ) -> SparseVoxels:
    """The corner voxels (with their values) of every cube whose 8 values straddle ``level``.

    ``values(a, b)`` gives the field's planes ``x ∈ [a, b)`` as a (b − a, R, R) tensor; planes are asked for
    ``slab`` cubes at a time (plus one shared plane), so memory stays at one slab.
    """
    r = int(resolution)
    eps = _NUDGE * (1.0 + abs(level))
    keys, vals = [], []
    for x0 in range(0, r - 1, slab):
        x1 = min(x0 + slab, r - 1)  # cubes with their lower corner at x ∈ [x0, x1)
        v = values(x0, x1 + 1).float()
        v = torch.where((v - level).abs() < eps, torch.full_like(v, level + eps), v)
        below = v < level
        cross = _cubes(below, torch.logical_or) & ~_cubes(below, torch.logical_and)
        n = x1 - x0
        corner = torch.zeros_like(below)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    corner[dx : dx + n, dy : dy + r - 1, dz : dz + r - 1] |= cross
        idx = corner.nonzero()
        vals.append(v[idx[:, 0], idx[:, 1], idx[:, 2]].cpu().numpy())
        idx[:, 0] += x0
        keys.append(linear_index(idx.cpu().numpy(), r))
    if not keys:
        return SparseVoxels(np.zeros((0, 3), np.int32), r, np.zeros((0, 1), np.float32))
    key = np.concatenate(keys)
    uniq, first = np.unique(key, return_index=True)  # planes shared by two slabs appear twice
    coords = np.stack(np.unravel_index(uniq, (r, r, r)), axis=1)
    return SparseVoxels(coords, r, np.concatenate(vals)[first, None].astype(np.float32))


def surface_mesh(voxels: SparseVoxels, level: float, what: str = "the refined field") -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the cubes whose 8 corners are all in ``voxels`` (canonical vertices, faces).

    Sparse marching cubes counts absent voxels as outside; a cube with an absent corner would get a surface that
    the whole field does not have. Its vertices lie on grid edges with an absent end, so the faces touching such a
    vertex are dropped. With :func:`surface_voxels`' output this is dense marching cubes of the whole field.
    """
    from ...geometry.marching_cubes import sparse_marching_cubes

    if len(voxels) == 0 or not np.any(voxels.feats[:, 0] < level):
        raise NoSurfaceError(f"{what} has no surface at level {level:g}")
    verts, faces = sparse_marching_cubes(voxels, level=level)
    r = voxels.resolution
    u = (verts.astype(np.float64) + 1.0) * (r / 2.0) - 0.5  # voxel units: grid samples at integers
    near = np.rint(u)
    axis = np.abs(u - near).argmax(axis=1)  # each vertex lies inside one grid edge, along this axis
    rows = np.arange(len(u))
    lo = near.copy()
    lo[rows, axis] = np.floor(u[rows, axis])
    hi = lo.copy()
    hi[rows, axis] += 1
    good = _present(voxels, lo) & _present(voxels, hi)
    faces = faces[good[faces].all(axis=1)]
    if len(faces) == 0:
        raise NoSurfaceError(f"{what} has no surface at level {level:g}")
    used, remap = np.unique(faces, return_inverse=True)
    return verts[used], remap.reshape(faces.shape).astype(faces.dtype)


def _present(voxels: SparseVoxels, points: np.ndarray) -> np.ndarray:
    r = voxels.resolution
    inside = ((points >= 0) & (points < r)).all(axis=1)
    out = np.zeros(len(points), bool)
    out[inside] = voxels.lookup(points[inside].astype(np.int32)) >= 0
    return out


def _batch0(coords: np.ndarray, device: torch.device) -> torch.Tensor:
    xyz = torch.as_tensor(np.asarray(coords), dtype=torch.int32)
    return torch.cat([torch.zeros(len(xyz), 1, dtype=torch.int32), xyz], dim=1).to(device)


class InteriorRefiner:
    """``Voxel_RefinerXL`` on the 512 stage: decoded SDF + the decoder's last features → dense refined SDF →
    mesh at ``2 × base`` (official ``self.refiner.run(*outputs, mc_threshold=mc_threshold*2.0)``)."""

    name = "Voxel_RefinerXL"

    def __init__(self, model: Voxel_RefinerXL, vae: torch.nn.Module):
        self.model = model.eval()
        self.vae = vae

    @property
    def resolution(self) -> int:
        return int(self.model.res)

    def level(self, base: float) -> float:
        return 2.0 * base

    def decode(self, latent: SparseLatent, chunk_size: int | None = None) -> tuple[SparseVoxels, torch.Tensor]:
        """The stage's decode, with the decoder's last features (the refiner's second input)."""
        return decode_sdf(self.vae, latent, chunk_size=chunk_size, return_feat=True)

    @torch.no_grad()
    def refine(self, sdf: SparseVoxels, decoded: torch.Tensor, level: float) -> tuple[np.ndarray, np.ndarray]:
        if sdf.resolution != self.resolution:
            raise ValueError(f"the 512 refiner works at {self.resolution}^3, the SDF is at {sdf.resolution}^3")
        device = module_device(self.model)
        c4 = _batch0(sdf.coords, device)
        values = SparseTensor(torch.as_tensor(sdf.feats, dtype=torch.float32).to(device), c4)
        dense = self.model.refine(values, SparseTensor(decoded.to(device), c4))[0, 0]  # (R, R, R)
        voxels = surface_voxels(lambda a, b, field=dense: field[a:b], self.resolution, level)
        del dense  # (the dense grid is not needed for the mesh)
        return surface_mesh(voxels, level, f"the {self.name} output")


class SignRefiner:
    """``Voxel_RefinerXL_sign`` on the 1024 stage: inside/outside signs at half the resolution; the field is the
    decoded SDF on its voxels and the sign elsewhere; mesh at ``base`` (official ``mc_threshold``)."""

    name = "Voxel_RefinerXL_sign"

    def __init__(self, model: Voxel_RefinerXL_sign, vae: torch.nn.Module):
        self.model = model.eval()
        self.vae = vae

    @property
    def resolution(self) -> int:
        return 2 * int(self.model.res)

    def level(self, base: float) -> float:
        return base

    def decode(self, latent: SparseLatent, chunk_size: int | None = None) -> tuple[SparseVoxels, None]:
        return decode_sdf(self.vae, latent, chunk_size=chunk_size), None

    @torch.no_grad()
    def refine(self, sdf: SparseVoxels, decoded: None, level: float) -> tuple[np.ndarray, np.ndarray]:
        if sdf.resolution != self.resolution:
            raise ValueError(f"the sign refiner works at {self.resolution}^3, the SDF is at {sdf.resolution}^3")
        device = module_device(self.model)
        feats = torch.as_tensor(sdf.feats, dtype=torch.float32).to(device)
        signs = self.model.predict_signs(SparseTensor(feats, _batch0(sdf.coords, device)))[0]  # (R/2)³ int8
        order = np.argsort(sdf.coords[:, 0], kind="stable")
        xs = sdf.coords[order, 0]
        coords = torch.as_tensor(sdf.coords[order], dtype=torch.long).to(device)
        vals = feats[torch.as_tensor(order).to(device), 0]

        def planes(a: int, b: int) -> torch.Tensor:
            # |sdf| · sign with |sdf| = 1 off the decoded voxels, the decoded values on them (official ``run``)
            half = signs[a // 2 : (b + 1) // 2].float().repeat_interleave(2, dim=0)
            out = half[a % 2 : a % 2 + (b - a)].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
            lo, hi = np.searchsorted(xs, [a, b])
            c = coords[lo:hi]
            out[c[:, 0] - a, c[:, 1], c[:, 2]] = vals[lo:hi]
            return out

        voxels = surface_voxels(planes, self.resolution, level)
        return surface_mesh(voxels, level, f"the {self.name} output")
