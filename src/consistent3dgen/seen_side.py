"""What the view tells (steps 1–3 of the method): seen mesh, thin shell per stage, target, fusion SDF, free space.

:func:`build_seen_shell`: point map → seen-surface mesh (canonical cube) → thin-shell SDF at a stage's
resolution → its latent cells and their camera-side half. This is also what ``consistent3dgen foreground``
writes out so a user can check the reconstruction before generating: the shell's zero level set must lie
``shell`` voxels from the seen surface.

:class:`SeenSide`: the same for every sparse stage of a generator, in each stage's (re-normalised) frame, and
what the stages ask of the view: the guidance target ``x_fg`` (the shell encoded by the stage's own VAE, back
half cut), the dense stage's start occupancy, the seen shell's SDF that fusion writes, and free space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .generators.base import SparseLatent, SparseStage
from .geometry.frames import CanonicalFrame, Similarity, canonical_to_camera, compose_frame, view_frame
from .geometry.freespace import free_space_mask
from .geometry.shell import ShellResult, exact_distance, front_half_mask, thin_shell
from .geometry.surface import SeenMesh, merge_views, pointmap_to_mesh, to_canonical
from .geometry.voxels import SparseVoxels, all_voxels, cells_to_occupancy, latent_cells, voxel_centers
from .limits import DEFAULT_MAX_PIXELS, check_memory, encode_bytes, shell_voxel_bound, surface_bytes
from .options import FALLBACK_FREE_SPACE_DILATION
from .pointmap import PointMap, limit_pixels


@dataclass
class SeenShell:
    """The seen side of one or several views, ready for a sparse stage at ``resolution``.

    seen: canonical-frame single-layer mesh (several views: their meshes merged); shell: thin-shell SDF (+ per-voxel
    distances and camera-side flags, each surface's own camera's side); cells: latent cells (``resolution //
    factor``) touched by the shell; front: bool over ``cells``, True on a camera side (the part kept as the
    guidance target). ``pointmap`` is the first view, ``views`` all of them (camera poses relative to the first).
    """

    pointmap: PointMap
    frame: CanonicalFrame
    seen: SeenMesh
    shell: ShellResult
    cells: SparseVoxels
    front: np.ndarray
    resolution: int
    factor: int
    band: float
    shell_offset: float
    views: list[PointMap] | None = None

    def __post_init__(self) -> None:
        if self.views is None:
            self.views = [self.pointmap]

    @property
    def sdf(self) -> SparseVoxels:
        return self.shell.sdf

    def front_cells(self) -> SparseVoxels:
        """The camera-side latent cells (the part of the shell kept as the guidance target)."""
        return SparseVoxels(self.cells.coords[self.front], self.cells.resolution)

    def occupancy(self, resolution: int, front_only: bool = True) -> np.ndarray:
        """Dense (R, R, R) bool occupancy of the (front) cells at the dense stage's resolution."""
        return cells_to_occupancy(self.cells, self.front if front_only else None, resolution)


def build_seen_shell(
    pointmap: PointMap | list[PointMap],
    resolution: int = 512,
    band: float = 2.0,
    shell: float = 1.0,
    factor: int = 8,
    conf_threshold: float = 0.0,
    drop_percent: float = 0.0,
    max_stretch: float = 8.0,
    margin: float = 0.05,
    depth_ratio: float = 1.0,
    frame: CanonicalFrame | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_memory_gb: float | None = None,
    field: str = "thin_shell",
) -> SeenShell:
    """Point map → canonical seen mesh → thin shell at ``resolution``³ → latent cells and their front half.

    Several views (a list; poses ``cam_to_world`` relative to the first, :func:`~consistent3dgen.pointmap.
    relative_to_first`): each view's seen mesh is built in its own camera, all are merged in the first camera's
    frame, the canonical frame is fitted to all of them, and each surface's camera side is its own camera's.

    ``field``: the values of the shell voxels, as the generator's VAE was trained (:data:`~consistent3dgen.options.
    SEEN_FIELDS`): ``thin_shell`` ``clip((d − shell) / (band − shell))``; ``signed`` ``clip(±d / band)``, positive on
    each surface's camera side, negative behind it.

    Bounded (:mod:`consistent3dgen.limits`): a point map above ``max_pixels`` is downscaled first (the returned
    shell's ``pointmap`` is the one used); the seen surface's and the thin shell's memory are estimated before each
    is built and refused (one ``InputError`` line) above ``max_memory_gb`` (None: 80 % of the memory available).
    """
    views = [limit_pixels(v, max_pixels) for v in (pointmap if isinstance(pointmap, list) else [pointmap])]
    pixels = sum(v.shape[0] * v.shape[1] for v in views)
    shapes = ", ".join(f"{v.shape[1]}x{v.shape[0]}" for v in views)
    check_memory("the seen surface", surface_bytes(pixels, 1), max_memory_gb,
                 detail=f"{'a' if len(views) == 1 else len(views)} {shapes} point map{'s' * (len(views) > 1)}",
                 hint="lower --max-pixels (max_pixels)")
    meshes = [pointmap_to_mesh(v, conf_threshold=conf_threshold, drop_percent=drop_percent, max_stretch=max_stretch)
              for v in views]
    mesh_cam = meshes[0] if len(views) == 1 else merge_views(meshes, [v.pose for v in views])
    seen, frame = to_canonical(mesh_cam, margin=margin, depth_ratio=depth_ratio, frame=frame)
    check_shell_memory(seen, resolution, band, max_memory_gb)
    result = thin_shell(seen.vertices, seen.faces, resolution, band=band, shell=shell, facing=seen.facing)
    if field == "signed":
        signed = np.where(result.front_side, result.udf, -result.udf) / np.float32(band)
        result = replace(result, sdf=SparseVoxels(result.sdf.coords, result.sdf.resolution,
                                                  np.clip(signed, -1.0, 1.0).astype(np.float32)[:, None]))
    elif field != "thin_shell":
        raise ValueError(f"unknown seen field {field!r}")
    cells = latent_cells(result.sdf, factor)
    front = front_half_mask(cells, result.sdf, result.front_side, factor=factor)
    return SeenShell(views[0], frame, seen, result, cells, front, resolution, factor, band, shell, views)


def check_shell_memory(seen: SeenMesh, resolution: int, band: float, max_memory_gb: float | None = None) -> None:
    """Refuse (one line) a thin shell whose estimated memory is above the limit, before it is allocated."""
    from .geometry.warp_runtime import warp_available

    grid = dict(pixels=seen.pixels, shape=seen.shape) if seen.on_one_grid else {}
    est = shell_voxel_bound(seen.vertices, seen.faces, resolution, band, **grid)
    backend = "warp" if warp_available("shell") else "numpy"
    check_memory(f"the thin shell at {resolution}^3", est.bytes(backend), max_memory_gb,
                 detail=f"at most {est.voxels:,} voxels within {band:g} voxels of the seen surface",
                 hint="lower the band or the stage resolution")


class SeenSide:
    """The seen side of one or several views for every sparse stage of a generator (coarse to fine).

    Several views (poses relative to the first): one seen mesh and thin shell from all of them, every view's
    camera-side cells kept in the target, free space carved from every view (a point any view shows empty).

    Stage 0's shell fixes the canonical frame (:attr:`frame`); a later stage ``k`` works in that frame followed
    by the similarity ``sim`` that re-normalised the previous stage's mesh, and gets its own shell, built at its
    resolution in that frame the first time it is asked for.
    """

    def __init__(self, pointmap: PointMap | list[PointMap], stages: list[SparseStage], *, band: float, shell: float,
                 conf_threshold: float = 0.0, drop_percent: float = 0.0, front_cut: bool = True,
                 free_space: bool = True, free_space_dilation: int = FALLBACK_FREE_SPACE_DILATION,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_memory_gb: float | None = None,
                 field: str = "thin_shell") -> None:
        # above max_pixels the point maps are downscaled once, here: every stage's shell and free space use them
        views = pointmap if isinstance(pointmap, list) else [pointmap]
        self.views: list[PointMap] = [limit_pixels(v, max_pixels) for v in views]
        self.pointmap = self.views[0]
        self.stages = stages
        self.front_cut = front_cut
        # free space needs a camera to project into; a view without intrinsics shows nothing empty
        self._carving = [v for v in self.views if v.intrinsics is not None]
        self.free_space = free_space and bool(self._carving)
        self.free_space_dilation = int(free_space_dilation)  # pixels of slack around each mask
        self.max_memory_gb = max_memory_gb
        self._shell_kw = dict(band=band, shell=shell, conf_threshold=conf_threshold, drop_percent=drop_percent,
                              max_pixels=None, max_memory_gb=max_memory_gb, field=field)
        first = build_seen_shell(self.views, stages[0].resolution, factor=stages[0].latent_factor, **self._shell_kw)
        self.frame: CanonicalFrame = first.frame
        self._shells: dict[int, SeenShell] = {0: first}

    @property
    def first(self) -> SeenShell:
        return self._shells[0]

    def shell(self, index: int, sim: Similarity) -> SeenShell:
        """Stage ``index``'s seen shell in the first stage's frame followed by ``sim``."""
        if index not in self._shells:
            stage = self.stages[index]
            self._shells[index] = build_seen_shell(self.views, stage.resolution, factor=stage.latent_factor,
                                                   frame=compose_frame(self.frame, sim), **self._shell_kw)
        return self._shells[index]

    # ------------------------------------------------------------------------------ dense stage and tokens

    def dense_start(self, resolution: int) -> np.ndarray:
        """(R, R, R) bool occupancy of the first stage's (camera-side) cells: the dense stage's SDEdit start."""
        return self.first.occupancy(resolution, front_only=self.front_cut)

    def dense_free_space(self, resolution: int) -> np.ndarray | None:
        """(R, R, R) bool: dense voxels the view shows empty (None when free space is off)."""
        if not self.free_space:
            return None
        centres = voxel_centers(all_voxels(resolution), resolution)
        return self._free(centres, self.frame, 2.0 / resolution).reshape((resolution,) * 3)

    def seen_cells(self) -> SparseVoxels:
        """The first stage's latent cells the view saw (camera side only with the back-half cut): always tokens."""
        first = self.first
        return first.front_cells() if self.front_cut else SparseVoxels(first.cells.coords, first.cells.resolution)

    def free_cells(self) -> SparseVoxels | None:
        """The first stage's latent cells that lie wholly in free space (None when free space is off)."""
        if not self.free_space:
            return None
        res = self.first.cells.resolution
        cells = all_voxels(res)
        # a cell is free when its centre is free by more than a cell diagonal (2·√3 / res)
        is_free = self._free(voxel_centers(cells, res), self.frame, 2.0 * np.sqrt(3) / res, silhouette_margin=True)
        return SparseVoxels(cells[is_free], res)

    # ------------------------------------------------------------------------------ sparse stages

    def target(self, index: int, sim: Similarity) -> SparseLatent:
        """``x_fg`` of stage ``index``: its shell encoded by the stage's own VAE, tokens in camera-side cells."""
        shell = self.shell(index, sim)
        stage = self.stages[index]
        check_memory(f"encoding the seen shell at {stage.resolution}^3", encode_bytes(stage, len(shell.sdf)),
                     self.max_memory_gb, detail=f"{len(shell.sdf):,} voxels", device=getattr(stage, "device", None))
        latent = stage.encode_sdf(shell.sdf)
        if not self.front_cut:
            return latent
        keep = shell.front_cells().lookup(latent.coords.cpu().numpy()) >= 0
        idx = torch.as_tensor(np.flatnonzero(keep))
        # the index on each tensor's own device (a stage may give its latent on the GPU)
        return SparseLatent(latent.coords[idx.to(latent.coords.device)], latent.feats[idx.to(latent.feats.device)],
                            latent.resolution)

    def fusion_sdf(self, index: int, sim: Similarity, level: float | None = None) -> SparseVoxels:
        """Trustworthy SDF values near the seen surface, for fusion.

        ``level`` None: the seen field's own values on the camera side of the seen surface (the thin shell's zero
        lies ``shell`` voxels in front of it). Else values that put ``level`` on the seen surface itself, with the
        field's slope (thin shell ``1 / (band − shell)`` a voxel, signed ``1 / band``): ``level + slope·d`` on the
        camera side (d: distance to the seen surface) and ``level − slope·d`` behind it for ``d`` up to the shell's
        half thickness (``shell`` voxels), so the seen side is one closed layer whatever the prior made behind it.
        """
        shell = self.shell(index, sim)
        side = shell.shell.front_side
        if level is None:
            return shell.sdf.select(np.flatnonzero(side))
        band, half = self._shell_kw["band"], self._shell_kw["shell"]
        slope = 1.0 / (band if self._shell_kw["field"] == "signed" else band - half)  # the field's own slope
        depth = half  # 1 voxel (the depth the shell mode extracts at) left cracks on the teapot; 2 did not
        udf = shell.shell.udf
        keep = np.flatnonzero(side | (udf <= depth))
        signed = np.where(side[keep], udf[keep], -udf[keep])
        feats = np.clip(level + slope * signed, -1.0, 1.0).astype(np.float32)[:, None]
        return SparseVoxels(shell.sdf.coords[keep], shell.sdf.resolution, feats)

    def free_voxels(self, points: np.ndarray, sim: Similarity) -> np.ndarray | None:
        """(N,) bool: stage points (frame ``sim``) the view shows empty; None when free space is off."""
        if not self.free_space:
            return None
        margin = 2.0 * self._shell_kw["band"] / self.stages[0].resolution
        return self._free(points, compose_frame(self.frame, sim), margin)

    def _free(self, points: np.ndarray, frame: CanonicalFrame, margin: float, silhouette_margin: bool = False
              ) -> np.ndarray:
        """(N,) bool: canonical points (``frame``: the first camera → this canonical cube) some view shows empty."""
        free = np.zeros(len(points), bool)
        for v in self._carving:
            free |= free_space_mask(points, v, view_frame(frame, v.cam_to_world), margin,
                                    mask_dilation_px=self.free_space_dilation, silhouette_margin=silhouette_margin)
        return free


def shell_fidelity(fg: SeenShell) -> dict:
    """How far the mesh extracted from the thin shell lies from the seen surface, in voxels.

    ``offset_*``: distance of extracted vertices to the seen surface (ideally ``shell_offset`` everywhere);
    ``coverage_*``: distance from seen-surface vertices to the extracted mesh (ideally ``shell_offset``: the shell
    wraps the whole seen surface). Both via exact closest points.
    """
    from .geometry.marching_cubes import sparse_marching_cubes
    from .geometry.shell import to_voxel_units

    verts, faces = sparse_marching_cubes(fg.sdf, level=0.0)
    v_vox = to_voxel_units(verts, fg.resolution)
    s_vox = to_voxel_units(fg.seen.vertices, fg.resolution)
    off = exact_distance(v_vox, s_vox, fg.seen.faces)
    cov = exact_distance(s_vox, v_vox, faces.astype(np.int32))
    return {
        "resolution": fg.resolution,
        "shell_offset_voxels": fg.shell_offset,
        "shell_voxels": len(fg.sdf),
        "latent_cells": len(fg.cells),
        "front_cells": int(fg.front.sum()),
        "offset_mean": float(off.mean()),
        "offset_p90": float(np.percentile(off, 90)),
        "offset_max": float(off.max()),
        "coverage_mean": float(cov.mean()),
        "coverage_p90": float(np.percentile(cov, 90)),
        "coverage_max": float(cov.max()),
        "extracted_vertices": len(verts),
        "extracted_faces": len(faces),
        "_mesh": (verts, faces),
    }


def seen_shell_paths(out_dir: str | Path, resolution: int) -> dict[str, Path]:
    """The files :func:`write_seen_shell` writes into ``out_dir`` (the CLI checks them before the work)."""
    out = Path(out_dir)
    return {
        "seen_mesh": out / "seen_surface.ply",
        "shell": out / f"thin_shell_{resolution}.npz",
        "shell_mesh": out / f"thin_shell_{resolution}.ply",
        "report": out / "foreground.json",
    }


def write_seen_shell(fg: SeenShell, out_dir: str | Path, fidelity: dict | None = None) -> dict[str, Path]:
    """Write the seen mesh, the thin-shell voxels and the extracted shell mesh (camera frame) + a JSON report.

    The four files appear together (:func:`~consistent3dgen.io.atomic.output_set`): all of them, or none.
    """
    from .io.atomic import atomic_write_text, output_set
    from .io.meshes import export_mesh

    out = Path(out_dir)
    fidelity = fidelity if fidelity is not None else shell_fidelity(fg)
    paths = seen_shell_paths(out, fg.resolution)
    seen_cam = canonical_to_camera(fg.seen.vertices.astype(np.float64), fg.frame)
    colors = None
    if all(v.image is not None for v in fg.views):
        view = np.zeros(len(fg.seen.vertices), np.int64) if fg.seen.view is None else fg.seen.view
        colors = np.zeros((len(view), 3), np.uint8)
        for i, v in enumerate(fg.views):
            at = view == i
            colors[at] = v.image[fg.seen.pixels[at, 0], fg.seen.pixels[at, 1]]
    verts, faces = fidelity["_mesh"]
    report = {k: v for k, v in fidelity.items() if not k.startswith("_")}
    report["frame"] = fg.frame.to_dict()
    with output_set():
        export_mesh(seen_cam, fg.seen.faces, paths["seen_mesh"], vertex_colors=colors)
        fg.sdf.save_npz(
            str(paths["shell"]),
            udf=fg.shell.udf,
            front_side=fg.shell.front_side,
            cells=fg.cells.coords,
            front_cells=fg.front,
            frame=np.array(json.dumps(fg.frame.to_dict())),
        )
        export_mesh(canonical_to_camera(verts.astype(np.float64), fg.frame), faces, paths["shell_mesh"])
        atomic_write_text(paths["report"], json.dumps(report, indent=2))
    return paths
