"""Refiners as the cascade's hook: surface extraction of dense fields in slabs, both refiners' fields, the
cascade's order (refiner decode → fusion / free space → refine → hand-off from the refined mesh), on/off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from consistent3dgen.cascade import Condition, SparseStageConfig, mesh_to_cells, run_sparse_stages
from consistent3dgen.errors import NoSurfaceError
from consistent3dgen.generators.base import Refiner, SparseLatent
from consistent3dgen.generators.direct3d_s2.refinement import (
    InteriorRefiner,
    SignRefiner,
    surface_mesh,
    surface_voxels,
)
from consistent3dgen.generators.direct3d_s2.refiner import Voxel_RefinerXL, Voxel_RefinerXL_sign
from consistent3dgen.geometry.frames import normalize_to_cube
from consistent3dgen.geometry.marching_cubes import sparse_marching_cubes
from consistent3dgen.geometry.voxels import SparseVoxels, all_voxels
from consistent3dgen.sampling import FlowMatchSchedule

SMALL = (8, 8, 8, 8)  # the refiners' UNet at a cheap width ([0] must be 8)


def _grid(r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ax = torch.arange(r, dtype=torch.float32)
    return torch.meshgrid(ax, ax, ax, indexing="ij")


def _nudged(field: np.ndarray, level: float) -> np.ndarray:
    eps = 1e-3 * (1 + abs(level))  # as surface_voxels moves samples off the level
    return np.where(np.abs(field - level) < eps, level + eps, field).astype(np.float32)


def _dense_reference(field: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """This package's marching cubes of the whole dense field (every voxel present; closed at the border)."""
    r = field.shape[0]
    coords = all_voxels(r)
    values = _nudged(field, level)[coords[:, 0], coords[:, 1], coords[:, 2]]
    return sparse_marching_cubes(SparseVoxels(coords, r, values[:, None]), level=level)


def _same_mesh(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    (va, fa), (vb, fb) = a, b
    assert len(va) == len(vb) and len(fa) == len(fb)
    np.testing.assert_allclose(np.sort(va[fa].mean(1), axis=0), np.sort(vb[fb].mean(1), axis=0), atol=1e-5)


def _same_vertices_as_skimage(mesh: tuple[np.ndarray, np.ndarray], field: np.ndarray, level: float) -> None:
    """The official way: skimage (Lewiner) on the dense grid, open at the border. Same grid-edge vertices (the
    triangles may differ inside ambiguous cubes)."""
    from skimage.measure import marching_cubes

    ref, _, _, _ = marching_cubes(_nudged(field, level), level, method="lewiner")
    ref = -1 + (2 * ref + 1) / field.shape[0]  # voxel centres, this package's convention
    assert len(mesh[0]) == len(ref)
    np.testing.assert_allclose(np.sort(mesh[0], axis=0), np.sort(ref, axis=0), atol=1e-5)


@pytest.mark.parametrize("slab", [1, 7, 64])
def test_surface_of_a_solid_field_equals_dense_marching_cubes(slab):
    """A solid ball (negative inside, far from the border) plus waves: the slab scan keeps only voxels near the
    surface; without dropping the cubes with absent corners the interior would get a second surface."""
    x, y, z = _grid(40)
    field = torch.tanh((torch.sqrt((x - 19.3) ** 2 + (y - 20.1) ** 2 + (z - 18.7) ** 2) - 12) / 3)
    field = field + 0.3 * torch.sin(x / 3) * torch.cos(z / 4)
    level = 0.2
    voxels = surface_voxels(lambda a, b: field[a:b], 40, level, slab=slab)
    assert len(voxels) < 0.2 * 40**3  # a band, not the volume
    mesh = surface_mesh(voxels, level)
    _same_mesh(mesh, _dense_reference(field.numpy(), level))
    unfiltered = sparse_marching_cubes(voxels, level=level)
    assert len(unfiltered[1]) > 1.5 * len(mesh[1])  # what the face filter removes: the fake inner surface


def test_surface_touching_the_border_stays_open_like_dense_marching_cubes():
    x, y, _ = _grid(16)
    field = (x - 7.37 + 0.1 * y) / 4  # a plane across the whole grid, no sample near the level
    verts, faces = surface_mesh(surface_voxels(lambda a, b: field[a:b], 16, 0.0, slab=5), 0.0)
    _same_vertices_as_skimage((verts, faces), field.numpy(), 0.0)
    from skimage.measure import marching_cubes

    assert len(faces) == len(marching_cubes(field.numpy(), 0.0)[1])  # no ambiguous cube in a plane, no border face


def test_no_surface_is_a_no_surface_error():
    flat = torch.full((8, 8, 8), 0.9)
    with pytest.raises(NoSurfaceError, match="no surface at level 0.4"):
        surface_mesh(surface_voxels(lambda a, b: flat[a:b], 8, 0.4), 0.4)


def _shell_voxels(r: int, radius: float) -> SparseVoxels:
    x, y, z = _grid(r)
    d = torch.sqrt((x - r / 2 + 0.5) ** 2 + (y - r / 2 + 0.5) ** 2 + (z - r / 2 + 0.5) ** 2) - radius
    band = d.abs() < 2.5
    return SparseVoxels(band.nonzero().numpy(), r, (d[band] / 2.5).numpy()[:, None].astype(np.float32))


def test_interior_refiner_mesh_is_the_refined_field_at_twice_the_level():
    torch.manual_seed(0)
    model = Voxel_RefinerXL(layers_per_block=1, layers_mid_block=1, patch_size=16, res=16,
                            block_out_channels=SMALL, feat_channels=4).eval()
    for n in (1, 2, 3):  # averaging filters (as random_weights draws them), so the output is not ~0 everywhere
        getattr(model, f"adaptive_conv{n}")[2].weight.data.abs_()
    refiner = InteriorRefiner(model, vae=None)
    assert isinstance(refiner, Refiner) and refiner.level(0.2) == 0.4 and refiner.resolution == 16
    sdf = _shell_voxels(16, 5.0)
    feats = torch.randn(len(sdf), 4, generator=torch.Generator().manual_seed(1))
    from consistent3dgen.generators.direct3d_s2.sparse_tensor import SparseTensor

    c4 = torch.cat([torch.zeros(len(sdf), 1, dtype=torch.int32), torch.as_tensor(sdf.coords)], 1)
    dense = model.refine(SparseTensor(torch.as_tensor(sdf.feats), c4), SparseTensor(feats, c4))[0, 0].numpy()
    level = float(np.quantile(dense, 0.3))  # a level the random refiner's field crosses
    _same_mesh(refiner.refine(sdf, feats, level), _dense_reference(dense, level))
    with pytest.raises(ValueError, match="works at 16"):
        refiner.refine(SparseVoxels(sdf.coords, 32, sdf.feats), feats, level)


def test_sign_refiner_field_is_decoded_values_on_the_voxels_and_the_sign_elsewhere():
    torch.manual_seed(0)
    model = Voxel_RefinerXL_sign(layers_per_block=1, layers_mid_block=1, patch_size=8, res=16,
                                 block_out_channels=SMALL).eval()
    refiner = SignRefiner(model, vae=None)
    assert refiner.level(0.2) == 0.2 and refiner.resolution == 32
    sdf = _shell_voxels(32, 9.0)
    from consistent3dgen.generators.direct3d_s2.sparse_tensor import SparseTensor

    c4 = torch.cat([torch.zeros(len(sdf), 1, dtype=torch.int32), torch.as_tensor(sdf.coords)], 1)
    signs = model.predict_signs(SparseTensor(torch.as_tensor(sdf.feats), c4))[0].numpy()
    assert (signs == 1).any() and (signs == -1).any()  # the random classifier says both
    # the official field: |1| * sign upsampled ×2 off the decoded voxels, the decoded values on them
    field = signs.repeat(2, 0).repeat(2, 1).repeat(2, 2).astype(np.float32)
    field[sdf.coords[:, 0], sdf.coords[:, 1], sdf.coords[:, 2]] = sdf.feats[:, 0]
    _same_vertices_as_skimage(refiner.refine(sdf, None, 0.2), field, 0.2)


# --------------------------------------------------------------------------- the cascade's hook


class FakeStage:
    """Decodes one SDF voxel per token (value = mean feature, as test_cascade's fake); velocity 0."""

    latent_factor, latent_channels = 2, 2

    def __init__(self, resolution: int, refiner=None):
        self.resolution = resolution
        self.refiner = refiner
        self.decoded = 0

    def token_order(self, coords):
        return torch.arange(len(coords))

    def velocity(self, x, coords, t, cond):
        return torch.zeros_like(x)

    def encode_sdf(self, sdf):
        return SparseLatent.from_voxels(sdf.downsample(2))

    def decode_sdf(self, latent, chunk_size=None):
        self.decoded += 1
        v = latent.to_voxels()
        return SparseVoxels(v.coords * 2, self.resolution, np.full((len(v), 1), -0.5, np.float32))


def _octahedron(r: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[r, 0, 0], [-r, 0, 0], [0, r, 0], [0, -r, 0], [0, 0, r], [0, 0, -r]], np.float32)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return v, f


class FakeRefiner:
    name = "fake"

    def __init__(self):
        self.calls: list[tuple] = []

    def level(self, base):
        return base + 0.25

    def decode(self, latent, chunk_size=None):
        v = latent.to_voxels()
        return SparseVoxels(v.coords * 2, 16, np.full((len(v), 1), -0.5, np.float32)), "from the decoder"

    def refine(self, sdf, decoded, level):
        self.calls.append((sdf, decoded, level))
        return _octahedron()


class FakeSeen:
    """Fusion writes +0.75 on every decoded voxel, so refine must see it; no target, no free space."""

    def target(self, index, sim):
        return None

    def fusion_sdf(self, index, sim, level=None):
        c = np.argwhere(np.ones((16, 16, 16), bool))
        return SparseVoxels(c, 16, np.full((len(c), 1), 0.75, np.float32))

    def free_voxels(self, points, sim):
        return None


def _run(refine: bool):
    refiner = FakeRefiner()
    stages = [FakeStage(16, refiner), FakeStage(16)]
    # (fusion, which writes +0.75 everywhere, only with the refiner: without it the hand-off needs a surface)
    cfgs = [SparseStageConfig(FlowMatchSchedule.shifted(2, 1.0), fusion=refine, mc_level=0.1, refine=refine,
                              cell_distance=1.0) for _ in stages]
    first = SparseVoxels([[2, 2, 2], [4, 4, 4]], 8)
    out = run_sparse_stages(stages, cfgs, first, Condition(None), FakeSeen(), progress=False)
    return out, stages, refiner


def test_cascade_refines_after_fusion_and_hands_the_refined_mesh_on():
    out, stages, refiner = _run(refine=True)
    assert stages[0].decoded == 0  # the refiner decoded in the stage's place
    (sdf, decoded, level), = refiner.calls
    assert decoded == "from the decoder" and level == pytest.approx(0.35)  # level(base) with the base 0.1
    assert np.all(sdf.feats == 0.75)  # fusion came first
    # the next stage's tokens come from the refined mesh (re-normalised into the cube)
    v, f = _octahedron()
    want = mesh_to_cells(normalize_to_cube(v).apply(v), f, 16, 2, 1.0)
    np.testing.assert_array_equal(np.sort(out.latents[1].to_voxels().keys), np.sort(want.keys))
    assert out.refined == [{"refiner": "fake", "mc_level": pytest.approx(0.35), "faces": 8}, None]
    assert out.mesh is None  # the last stage has no refiner: the output is extracted from its SDF


def test_cascade_without_refine_never_calls_the_refiner():
    out, stages, refiner = _run(refine=False)
    assert refiner.calls == [] and stages[0].decoded == 1 and out.refined == [None, None] and out.mesh is None
