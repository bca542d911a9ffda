"""Steps 1–3 of the method for one view: point map → seen-surface mesh → thin-shell SDF → front-half cells.

This is what the generator's encoder sees, and what ``consistent3dgen foreground`` writes out so a user can check
the reconstruction before generating: the shell's zero level set must lie ``shell`` voxels from the seen surface.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .geometry.frames import CanonicalFrame, canonical_to_camera
from .geometry.shell import (
    ShellResult,
    exact_distance,
    foreground_occupancy,
    front_half_mask,
    latent_cells,
    thin_shell,
)
from .geometry.surface import SeenMesh, pointmap_to_mesh, to_canonical
from .geometry.voxels import SparseVoxels
from .pointmap import PointMap


@dataclass
class Foreground:
    """The seen side of one view, ready for a sparse stage at ``resolution``.

    seen: canonical-frame single-layer mesh; shell: thin-shell SDF (+ per-voxel distances and camera-side flags);
    cells: latent cells (``resolution // factor``) touched by the shell; front: bool over ``cells``, True on the
    camera side (the part kept as the guidance target).
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

    @property
    def sdf(self) -> SparseVoxels:
        return self.shell.sdf

    def front_cells(self) -> SparseVoxels:
        """The camera-side latent cells (the part of the shell kept as the guidance target)."""
        return SparseVoxels(self.cells.coords[self.front], self.cells.resolution)

    def occupancy(self, resolution: int, front_only: bool = True) -> np.ndarray:
        """Dense (R, R, R) bool occupancy of the (front) cells at the dense stage's resolution."""
        return foreground_occupancy(self.cells, self.front if front_only else None, resolution)


def build_foreground(
    pointmap: PointMap,
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
) -> Foreground:
    """Point map → canonical seen mesh → thin shell at ``resolution``³ → latent cells and their front half."""
    mesh_cam = pointmap_to_mesh(pointmap, conf_threshold=conf_threshold, drop_percent=drop_percent,
                                max_stretch=max_stretch)
    seen, frame = to_canonical(mesh_cam, margin=margin, depth_ratio=depth_ratio, frame=frame)
    result = thin_shell(seen.vertices, seen.faces, resolution, band=band, shell=shell)
    cells = latent_cells(result.sdf, factor)
    front = front_half_mask(cells, result.sdf, result.front_side, factor=factor)
    return Foreground(pointmap, frame, seen, result, cells, front, resolution, factor, band, shell)


def shell_fidelity(fg: Foreground) -> dict:
    """How far the mesh extracted from the thin shell lies from the seen surface, in voxels.

    ``offset_*``: distance of extracted vertices to the seen surface (ideally ``shell_offset`` everywhere);
    ``coverage_*``: distance from seen-surface vertices to the extracted mesh (ideally ``shell_offset``: the shell
    wraps the whole seen surface). Both via exact closest points.
    """
    from .geometry.extract import sparse_marching_cubes
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


def write_foreground(fg: Foreground, out_dir: str | Path, fidelity: dict | None = None) -> dict[str, Path]:
    """Write the seen mesh, the thin-shell voxels and the extracted shell mesh (camera frame) + a JSON report."""
    from .geometry.extract import export_mesh
    from .io.atomic import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fidelity = fidelity if fidelity is not None else shell_fidelity(fg)
    paths = {
        "seen_mesh": out / "seen_surface.ply",
        "shell": out / f"thin_shell_{fg.resolution}.npz",
        "shell_mesh": out / f"thin_shell_{fg.resolution}.ply",
        "report": out / "foreground.json",
    }
    seen_cam = canonical_to_camera(fg.seen.vertices.astype(np.float64), fg.frame)
    colors = None
    if fg.pointmap.image is not None:
        colors = fg.pointmap.image.reshape(-1, 3)[fg.seen.pixel_index]
    export_mesh(seen_cam, fg.seen.faces, paths["seen_mesh"], vertex_colors=colors)
    fg.sdf.save_npz(
        str(paths["shell"]),
        udf=fg.shell.udf,
        front_side=fg.shell.front_side,
        cells=fg.cells.coords,
        front_cells=fg.front,
        frame=np.array(json.dumps(fg.frame.to_dict())),
    )
    verts, faces = fidelity["_mesh"]
    export_mesh(canonical_to_camera(verts.astype(np.float64), fg.frame), faces, paths["shell_mesh"])
    report = {k: v for k, v in fidelity.items() if not k.startswith("_")}
    report["frame"] = fg.frame.to_dict()
    atomic_write_text(paths["report"], json.dumps(report, indent=2))
    return paths
