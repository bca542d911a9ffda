"""The evaluation harness: render a view of a known mesh, run the pipeline guided and unguided over seeds, score.

For each mesh (by default the four evaluation meshes, never used in training): one RGB-D view (the input),
then for every setting and seed: input-view consistency (depth error relative to the object size, normal
error, silhouette IoU), Chamfer-L1 and F-score to the full mesh (camera frame, normalised by the reference's
bounding-box diagonal, see :mod:`consistent3dgen.metrics`), and the spread across seeds of the rendered depth
over the seen pixels (the paper's "stochastic" problem: guided results should barely vary there).
On the unseen side (hidden from the input camera): completeness, accuracy and F-score
(:func:`~consistent3dgen.metrics.unseen_side_distance`), plus pieces, the largest piece's area share and
watertightness; two naive baselines without any prior (the seen shell alone, the seen surface mirrored and closed)
are scored the same way, so the prior's contribution is a measured difference.
Ablations: λ sweep, with/without the back-half cut, guidance variants, fusion on/off, free space on/off,
dense-stage start. Writes ``report.json``, ``report.md`` and PNG plots at the end, together (an output set).

Several input views (:func:`evaluate_views`, ``eval --views 1 2 4``): the same settings and the seen-shell baseline
for each number of views (cameras evenly spaced in azimuth from the single-view camera); seen-side scores per view,
unseen-side scores on the samples hidden from every view; one report with a row per number of views.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .geometry.render import render_depth
from .metrics import input_view_consistency, mesh_distance, mesh_structure, unseen_side_distance_views
from .options import BASELINE
from .pointmap import PointMap, relative_to_first, rigid_inverse
from .views import load_normalized_mesh, orbit_camera, orbit_views_rgbd, render_rgbd, views_to_pointmaps

EVAL_MESHES = ("spot", "stanford-bunny", "teapot", "suzanne")
# (azimuth, elevation) of the input view per mesh; others get the default
VIEWS = {"spot": (35.0, 20.0), "stanford-bunny": (-30.0, 15.0), "teapot": (25.0, 25.0), "suzanne": (20.0, 10.0)}
DEFAULT_VIEW = (30.0, 20.0)

# the main rows: the baseline (options.BASELINE: the prior alone, λ = 0, so fusion is off too; the dense stage
# starts as in every setting, like the image-conditioned dense stage of the paper's baseline), the defaults, and
# the defaults without fusion (what guidance alone achieves)
MAIN_SETTINGS = (("unguided", BASELINE), ("guided", {}), ("guided, no fusion", {"fusion": False}))

ABLATIONS: dict[str, list[tuple[str, dict]]] = {
    "guidance strength λ (paper variant)": [(f"λ={lam:g}", {"guidance": lam}) for lam in (0.0, 2.0, 4.0, 8.0, 12.0)],
    "guidance variant": [("paper λ=8", {"guidance": 8.0, "guidance_variant": "paper"}),
                         ("noised λ=8", {"guidance": 8.0, "guidance_variant": "noised"}),
                         ("x0 λ=1", {"guidance": 1.0, "guidance_variant": "x0"}),
                         ("replace λ=1", {"guidance": 1.0, "guidance_variant": "replace"})],
    "back-half cut": [("front cut", {"front_cut": True}), ("whole shell", {"front_cut": False})],
    "spatial fusion": [("fusion off", {"fusion": False}), ("fusion on", {"fusion": True})],
    "free space": [("free space off", {"free_space": False}), ("free space on", {"free_space": True})],
    "silhouette slack": [(f"mask dilated {px} px", {"free_space_dilation": px}) for px in (0, 1, 2)],
    "token growth": [(f"dense occupancy + {k} cells", {"token_dilation": k}) for k in (0, 1, 2)],
    "dense candidates": [(f"best of {k}", {"dense_candidates": k}) for k in (1, 8)],
    "first-stage passes": [(f"{k} pass{'es' if k > 1 else ''}", {"first_stage_passes": k}) for k in (1, 2, 3)],
    "later-stage start": [(f"sigma {s:g}", {"sparse_start_sigma": s}) for s in (1.0, 0.6, 0.3)],
    "dense start": [("SDEdit from foreground", {"dense_start": "sdedit"}), ("pure noise", {"dense_start": "noise"})],
}


@dataclass
class EvalCase:
    name: str
    pointmap: PointMap  # the (first) input view
    ref_vertices: np.ndarray  # the first view's camera frame
    ref_faces: np.ndarray
    # every input view, poses relative to the first (relative_to_first); one view: [pointmap], no pose
    views: list[PointMap] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.views:
            self.views = [self.pointmap]

    @property
    def inputs(self) -> PointMap | list[PointMap]:
        """What the pipeline is given: the point map itself for one view (exactly as before), else the list."""
        return self.pointmap if len(self.views) == 1 else self.views

    def cameras(self) -> list[tuple[np.ndarray, int, int, np.ndarray | None]]:
        """``(K, width, height, cam_from_first)`` per view, for :func:`~consistent3dgen.metrics.hidden_from_cameras`
        (None where a view has no pose: the single view, whose frame the reference is in)."""
        return [(pm.intrinsics, pm.shape[1], pm.shape[0],
                 None if pm.cam_to_world is None else rigid_inverse(pm.pose)) for pm in self.views]


def make_case(mesh_path: str | Path, size: int = 160, view: tuple[float, float] | None = None,
              views: int = 1) -> EvalCase:
    """Normalise the mesh, render the input RGB-D view(s), keep the mesh in the first camera's frame as reference.

    ``views`` > 1: that many cameras evenly spaced in azimuth from the single-view camera (same elevation and
    distance, :func:`~consistent3dgen.views.orbit_views_rgbd`), poses relative to the first; one view is the
    case as it always was (no pose), so single-view numbers do not change.
    """
    if views < 1:
        raise ValueError(f"number of views must be at least 1, got {views}")
    path = Path(mesh_path)
    name = path.stem
    v, f = load_normalized_mesh(path)
    az, el = view or VIEWS.get(name, DEFAULT_VIEW)
    if views == 1:
        pose = orbit_camera(az, el, 2.5)
        rgbd = render_rgbd(v, f, pose, size=size)
        v_cam = v @ pose[:3, :3].T + pose[:3, 3]
        return EvalCase(name, rgbd.to_pointmap(), v_cam.astype(np.float32), f)
    rgbds = orbit_views_rgbd(v, f, views, size=size, azimuth_deg=az, elevation_deg=el, distance=2.5)
    pms = relative_to_first(views_to_pointmaps(rgbds))  # as the pipeline re-expresses them
    pose = rgbds[0].cam_from_world
    v_cam = v @ pose[:3, :3].T + pose[:3, 3]
    return EvalCase(name, pms[0], v_cam.astype(np.float32), f, pms)


def score_runs(case: EvalCase, meshes: list[tuple[np.ndarray, np.ndarray]], n_points: int = 20_000,
               tau: float = 0.02) -> dict:
    """Per-seed metrics averaged, plus the seen-side depth spread across seeds (relative to object size).

    Seen side: the first view's scores as the top-level keys; with several views also ``views`` (each view's
    scores, the mesh moved into its camera) and their means ``views_*``. Unseen side: reference and output
    samples hidden from every view; ``unseen_share`` = the share of the reference's samples hidden so.
    """
    pm = case.pointmap
    h, w = pm.shape
    multi = len(case.views) > 1
    cameras = case.cameras()
    per_seed, per_view, depths = [], [], []
    for v, f in meshes:
        ivc = input_view_consistency(v, f, pm).to_dict()
        dist = mesh_distance(v, f, case.ref_vertices, case.ref_faces, n_points=n_points, tau=tau).to_dict()
        # one view, no pose: the single-camera test exactly (unseen_side_distance is this with one camera)
        unseen = unseen_side_distance_views(v, f, case.ref_vertices, case.ref_faces, cameras,
                                            n_points=n_points, tau=tau).to_dict()
        structure = mesh_structure(v, f)
        row = {**ivc, **{k: dist[k] for k in ("chamfer_l1", "fscore")},
               **{f"unseen_{k}": unseen[k] for k in ("completeness", "accuracy", "fscore")},
               "unseen_share": unseen["ref_hidden"] / n_points,
               "pieces": float(structure["pieces"]),
               "large_pieces": float(structure["large_pieces"]),  # > 0.5 % of the area each
               "largest_piece_share": structure["largest_area_fraction"],
               "watertight": float(structure["watertight"])}  # averaged: the share of watertight runs
        if multi:  # each view's own consistency: the mesh (first view's frame) moved into that view's camera
            views = [input_view_consistency(view.from_shared(v).astype(np.float32), f, view).to_dict()
                     for view in case.views]
            per_view.append(views)
            row.update({f"views_{k}": float(np.nanmean([s[k] for s in views])) for k in VIEW_KEYS})
        per_seed.append(row)
        depths.append(render_depth(v, f, pm.intrinsics, w, h))
    out = {k: float(np.nanmean([r[k] for r in per_seed])) for k in per_seed[0]}
    if multi:
        out["views"] = [{k: float(np.nanmean([seed[i][k] for seed in per_view])) for k in VIEW_KEYS}
                        for i in range(len(case.views))]
    if len(depths) > 1:
        d = np.stack(depths)  # (S, H, W), NaN where a seed's mesh misses
        seen = pm.mask & np.isfinite(d).all(axis=0)
        out["seen_spread"] = float(np.std(d[:, seen], axis=0).mean() / per_seed[0]["object_size"]) if seen.any() \
            else float("nan")
    out["seeds"] = len(meshes)
    return out


METRIC_KEYS = ("depth_error_mean", "depth_error_p90", "normal_error_deg_mean", "silhouette_iou", "object_size",
               "overlap_pixels", "chamfer_l1", "fscore", "unseen_completeness", "unseen_accuracy", "unseen_fscore",
               "pieces", "large_pieces", "largest_piece_share", "watertight", "seen_spread")
VIEW_KEYS = ("depth_error_mean", "depth_error_p90", "normal_error_deg_mean", "silhouette_iou")  # per input view


# ------------------------------------------------------------------------- naive baselines (no prior at all)

BASELINES = ("seen shell", "mirrored")


def seen_shell_baseline(pointmap: PointMap | list[PointMap], resolution: int, band: float, shell: float,
                        conf_threshold: float = 0.0, drop_percent: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The seen surface alone, closed as a thin shell: marching cubes of the thin-shell SDF the pipeline guides
    towards (its zero level lies ``shell`` voxels either side of the seen surface), in the camera frame.

    Several views (a list, poses ``cam_to_world``): all their seen meshes merged, as the pipeline does
    (re-expressed relative to the first view), the result in the first view's camera frame."""
    if isinstance(pointmap, list):
        pointmap = relative_to_first(pointmap)
    from .geometry.frames import canonical_to_camera
    from .geometry.marching_cubes import sparse_marching_cubes
    from .seen_side import build_seen_shell

    fg = build_seen_shell(pointmap, resolution, band=band, shell=shell, conf_threshold=conf_threshold,
                          drop_percent=drop_percent)
    v, f = sparse_marching_cubes(fg.sdf, level=0.0)
    return canonical_to_camera(v.astype(np.float64), fg.frame).astype(np.float32), f


def mirrored_baseline(pointmap: PointMap, resolution: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The seen surface mirrored about a mid-depth plane and closed at the silhouette, as a volume.

    Assumed object depth ``D``: the larger of the silhouette's metric width and height (the seen points' x / y
    extent) and the seen depth range, like the canonical frame's assumption (depth ratio 1); extents are 0.5–99.5th
    percentiles, robust to stray points. The mirror plane is ``D / 2`` behind the nearest seen point; per pixel of
    the mask the object fills its viewing ray from the seen depth ``z`` to ``max(2 z_plane - z, z)``. The volume
    (``resolution`` voxels along its longest side, camera frame) is meshed by marching cubes, so the walls along
    the silhouette join front and back and the mesh is closed.
    """
    from skimage.measure import marching_cubes

    if pointmap.intrinsics is None:
        raise ValueError("the mirrored baseline needs the point map's intrinsics (K)")
    k = np.asarray(pointmap.intrinsics, np.float64)
    h, w = pointmap.shape
    m = pointmap.mask & np.isfinite(pointmap.points).all(axis=-1)
    zf = np.where(m, pointmap.points[..., 2].astype(np.float64), np.nan)
    seen = pointmap.points[m].astype(np.float64)
    lo_p, hi_p = np.percentile(seen, 0.5, axis=0), np.percentile(seen, 99.5, axis=0)
    depth = float(max(hi_p[0] - lo_p[0], hi_p[1] - lo_p[1], hi_p[2] - lo_p[2]))
    plane = float(lo_p[2]) + depth / 2.0
    zb = np.maximum(2.0 * plane - zf, zf)
    # bounding box of the front and back points (the back on the same rays, so perspective widens it)
    ray = pointmap.points[m].astype(np.float64) / zf[m][:, None]
    pts = np.concatenate([ray * zf[m][:, None], ray * zb[m][:, None]])
    lo, hi = pts.min(0), pts.max(0)
    step = float((hi - lo).max()) / (resolution - 1)
    lo -= 2 * step
    n = np.ceil((hi - lo) / step).astype(int) + 3
    axes = [lo[i] + step * np.arange(n[i]) for i in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.rint((k[0, 0] * x + k[0, 1] * y) / z + k[0, 2]).astype(np.int64)
        v = np.rint(k[1, 1] * y / z + k[1, 2]).astype(np.int64)
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    field = np.full(x.shape, -step)  # positive inside: the distance to the nearer of front and back along z
    ui, vi = u[inside], v[inside]
    field[inside] = np.where(m[vi, ui], np.minimum(z[inside] - zf[vi, ui], zb[vi, ui] - z[inside]), -step)
    field = np.clip(np.nan_to_num(field, nan=-step), -2 * step, 2 * step)
    verts, faces, _, _ = marching_cubes(field, level=0.0)
    return (lo + verts * step).astype(np.float32), faces.astype(np.int64)


def run_baselines(pipe, case: EvalCase) -> dict[str, dict]:  # noqa: ANN001 - a Pipeline
    """The naive baselines scored like the generated meshes (deterministic: one run each). Several views: the seen
    shell of all of them; no mirrored baseline (mirroring one view about its mid-depth plane ignores the others)."""
    opts = pipe.resolve_options()
    resolution = int(pipe.generator.sparse[-1].resolution)
    seen = case.pointmap if len(case.views) == 1 else case.views
    builders = {
        "seen shell": lambda: seen_shell_baseline(seen, resolution, opts.band, opts.shell,
                                                  opts.conf_threshold, opts.drop_percent),
        "mirrored": lambda: mirrored_baseline(case.pointmap),
    }
    out = {}
    for label in BASELINES if len(case.views) == 1 else ("seen shell",):
        t0 = time.perf_counter()
        mesh = builders[label]()
        out[label] = {**score_runs(case, [mesh]), "seconds": time.perf_counter() - t0, "failed_runs": 0}
    return out


def run_setting(pipe, case: EvalCase, seeds: list[int], options: dict) -> dict:
    """Score one setting over seeds; a run that yields no surface is reported (``failed``), not raised."""
    from .errors import NoSurfaceError

    meshes, seconds, failed = [], [], []
    for s in seeds:
        try:
            res = pipe(case.inputs, seed=s, progress=False, **options)
        except NoSurfaceError as e:
            failed.append(str(e))
            continue
        meshes.append(res.arrays("camera"))
        seconds.append(res.timings["total"])
    out = score_runs(case, meshes) if meshes else {k: float("nan") for k in METRIC_KEYS}
    out["seconds"] = float(np.mean(seconds)) if seconds else float("nan")
    out["failed_runs"] = len(failed)
    if failed:
        out["failure"] = failed[0]
    return out


class NothingSeen:
    """A view that shows nothing, in :class:`~consistent3dgen.seen_side.SeenSide`'s place for the pipeline's steps:
    no dense start, seen cells or free space; for the sparse stages (:class:`~consistent3dgen.cascade.SeenView`)
    no target, fusion or free space."""

    def dense_start(self, resolution):  # noqa: ANN001, ANN201
        return None

    def dense_free_space(self, resolution):  # noqa: ANN001, ANN201
        return None

    def seen_cells(self):  # noqa: ANN201
        return None

    def free_cells(self):  # noqa: ANN201
        return None

    def target(self, index, sim):  # noqa: ANN001, ANN201
        return None

    def fusion_sdf(self, index, sim, level=None):  # noqa: ANN001, ANN201
        return None

    def free_voxels(self, points, sim):  # noqa: ANN001, ANN201
        return None


COHERENT_SHARE = 0.95  # a sample is one body when its largest piece holds this share of the area (issue 12)


def prior_samples(pipe, count: int = 10, first_seed: int = 0, **overrides) -> list[dict]:  # noqa: ANN001, ANN003
    """The prior alone, with no view at all: the pipeline's own steps on :class:`NothingSeen` (the dense stage from
    noise, its occupancy as the first sparse stage's tokens, every sparse stage unguided); each sample's
    :func:`~consistent3dgen.metrics.mesh_structure` (+ seed, tokens). Whether the prior itself makes one closed
    body, apart from what guidance and fusion add. ``overrides``: generation options (e.g. step counts)."""
    import torch

    from .errors import NoSurfaceError

    if pipe.generator.conditioner is not None:
        raise ValueError("prior samples need an unconditional prior (the mini prior); this one needs an image")
    opts = pipe.resolve_options(**{"progress": False, **overrides, "guidance": 0.0})
    condition, nothing = pipe.encode_condition(None, opts), NothingSeen()
    rows = []
    for seed in range(first_seed, first_seed + count):
        rng = torch.Generator().manual_seed(seed)
        cells = pipe.first_tokens(pipe.run_dense_stage(nothing, condition, opts, rng), nothing, opts)
        try:
            if not len(cells):
                raise NoSurfaceError("the dense stage left no cell")
            sparse = pipe.run_sparse_stages(cells, nothing, condition, opts, rng)
            structure = mesh_structure(*pipe.extract(sparse.sdf, opts, mesh=sparse.mesh))
        except NoSurfaceError:
            structure = {"pieces": 0, "large_pieces": 0, "largest_area_fraction": 0.0, "watertight": False}
        rows.append({"seed": seed, "tokens": len(cells), **structure})
    return rows


def evaluate(mesh_paths: list[str | Path], out_dir: str | Path, generator: str = "mini", seeds: int = 3,
             ablations: bool = True, ablation_seeds: int = 1, size: int = 160, prior_count: int = 10) -> dict:
    """Guided vs unguided over ``seeds`` seeds on each mesh, ``prior_count`` samples of the prior alone, then the
    ablations; writes the reports."""
    from .io.atomic import atomic_write_text, output_set
    from .pipeline import Pipeline

    out = Path(out_dir)
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(generator)
    defaults = pipe.resolve_options().to_dict()
    report: dict = {"generator": pipe.generator.name, "defaults": defaults, "seeds": seeds, "meshes": {},
                    "ablations": {}}
    cases = [make_case(p, size=size) for p in mesh_paths]
    for case in cases:
        row = {}
        for label, opts in MAIN_SETTINGS:
            row[label] = run_setting(pipe, case, list(range(seeds)), opts)
            print(f"{case.name:>16s} {label:>17s}: " + _fmt(row[label]), flush=True)
        for label, scores in run_baselines(pipe, case).items():
            row[label] = scores
            print(f"{case.name:>16s} {label:>17s}: " + _fmt(row[label]), flush=True)
        report["meshes"][case.name] = row
    if prior_count and pipe.generator.conditioner is None:
        report["prior_samples"] = prior_samples(pipe, prior_count)
        shares = [r["largest_area_fraction"] for r in report["prior_samples"]]
        print(f"prior alone, {len(shares)} samples: largest piece " + " ".join(f"{x:.2f}" for x in shares), flush=True)
    report["summary"] = summarize(report["meshes"], report.get("prior_samples"))
    if ablations:
        # only a signed prior with several sparse stages has a later stage to start otherwise
        later_stage = len(pipe.generator.sparse) > 1 and defaults["seen_field"] == "signed"
        for group, settings in ABLATIONS.items():
            if group == "later-stage start" and not later_stage:
                continue
            res = {}
            for label, opts in settings:
                per_mesh = {c.name: run_setting(pipe, c, list(range(ablation_seeds)), opts) for c in cases}
                res[label] = {"mean": _mean_over(per_mesh), "per_mesh": per_mesh}
                print(f"[{group}] {label:>24s}: " + _fmt(res[label]["mean"]), flush=True)
            report["ablations"][group] = res
    report["seconds"] = time.perf_counter() - t0
    with output_set():  # report.json, report.md and the plots appear together, or none of them
        atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float))
        atomic_write_text(out / "report.md", markdown(report))
        plots(report, out)
    return report


def summarize(meshes: dict, prior: list[dict] | None = None) -> dict:
    """The targets (issue 12's), checked per mesh or on the means over meshes."""
    g = _mean_over({k: v["guided"] for k, v in meshes.items()})
    u = _mean_over({k: v["unguided"] for k, v in meshes.items()})
    def ratio(a: float, b: float) -> float:
        # undefined (NaN) when the baseline is ~0: then "guided is 5x better" cannot be claimed
        return a / b if np.isfinite(a) and np.isfinite(b) and b > 1e-9 else float("nan")

    s = {"guided": g, "unguided": u,
         "depth_error_ratio": ratio(g["depth_error_mean"], u["depth_error_mean"]),
         "spread_ratio": ratio(g.get("seen_spread", np.nan), u.get("seen_spread", np.nan))}
    if all("guided, no fusion" in v for v in meshes.values()):
        nf = _mean_over({k: v["guided, no fusion"] for k, v in meshes.items()})
        s["guided, no fusion"] = nf
        s["depth_error_ratio_no_fusion"] = ratio(nf["depth_error_mean"], u["depth_error_mean"])
        s["spread_ratio_no_fusion"] = ratio(nf.get("seen_spread", np.nan), u.get("seen_spread", np.nan))
    for label in BASELINES:  # the naive baselines' means, beside the generated rows
        if all(label in v for v in meshes.values()):
            s[label] = _mean_over({k: v[label] for k, v in meshes.items()})
    guided = [v["guided"] for v in meshes.values()]
    s["targets"] = {
        "depth error guided <= 1/5 unguided": bool(s["depth_error_ratio"] <= 0.2),
        "depth error mean <= 0.4 % and p90 <= 0.8 % (every mesh)": all(
            r["depth_error_mean"] <= 0.004 and r.get("depth_error_p90", np.nan) <= 0.008 for r in guided),
        "silhouette IoU >= 0.97 (every mesh)": all(r["silhouette_iou"] >= 0.97 for r in guided),
        "at most 3 pieces above 0.5 % of the area (every mesh)": all(r.get("large_pieces", np.nan) <= 3
                                                                     for r in guided),
        "seen-side spread guided <= 1/5 unguided": bool(s["spread_ratio"] <= 0.2),
    }
    if "unseen_fscore" in g:
        beats = all(v["guided"]["unseen_fscore"] > max(v[b]["unseen_fscore"] for b in BASELINES if b in v)
                    for v in meshes.values() if any(b in v for b in BASELINES))
        s["targets"]["unseen F@0.02 >= 0.65 (mean) and above both naive baselines (every mesh)"] = bool(
            g["unseen_fscore"] >= 0.65 and beats)
    if prior:
        coherent = sum(r["largest_area_fraction"] >= COHERENT_SHARE for r in prior)
        s["prior_coherent"] = f"{coherent} of {len(prior)}"
        label = (f"prior alone: >= 90 % of the samples (9 of 10) with the largest piece >= {COHERENT_SHARE:.0%} "
                 "of the area")
        s["targets"][label] = bool(coherent >= 0.9 * len(prior))
    return s


def _mean_over(per_mesh: dict) -> dict:
    keys = {k for m in per_mesh.values() for k, v in m.items() if isinstance(v, (int, float))}
    out = {}
    for k in sorted(keys):
        vals = np.array([m.get(k, np.nan) for m in per_mesh.values()], float)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def _fmt(m: dict) -> str:
    if m.get("failed_runs"):
        return f"{m['failed_runs']} run(s) without a surface ({m.get('failure', '')})"
    parts = [f"depth {m['depth_error_mean']:.4f}", f"p90 {m['depth_error_p90']:.4f}",
             f"normal {m['normal_error_deg_mean']:.1f}°", f"IoU {m['silhouette_iou']:.3f}",
             f"CD {m['chamfer_l1']:.4f}", f"F {m['fscore']:.3f}", f"unseen F {m['unseen_fscore']:.3f}",
             f"pieces {m['pieces']:.0f} (largest {m['largest_piece_share']:.2f})"]
    if "seen_spread" in m and np.isfinite(m["seen_spread"]):
        parts.append(f"spread {m['seen_spread']:.4f}")
    return ", ".join(parts) + f", {m.get('seconds', 0):.1f} s"


COLUMNS = [("failed_runs", "failed", "{:.0f}"), ("depth_error_mean", "depth err", "{:.4f}"),
           ("depth_error_p90", "p90", "{:.4f}"),
           ("normal_error_deg_mean", "normal °", "{:.1f}"), ("silhouette_iou", "IoU", "{:.3f}"),
           ("chamfer_l1", "Chamfer-L1", "{:.4f}"), ("fscore", "F@0.02", "{:.3f}"),
           ("seen_spread", "seen spread", "{:.4f}"), ("seconds", "s/run", "{:.1f}")]


# the side the input camera does not see, and the mesh's structure (pieces, largest piece's area share, watertight)
UNSEEN_COLUMNS = [("unseen_completeness", "unseen completeness", "{:.4f}"),
                  ("unseen_accuracy", "unseen accuracy", "{:.4f}"), ("unseen_fscore", "unseen F@0.02", "{:.3f}"),
                  ("pieces", "pieces", "{:.1f}"), ("large_pieces", "pieces > 0.5 %", "{:.1f}"),
                  ("largest_piece_share", "largest piece", "{:.3f}"), ("watertight", "watertight", "{:.2f}")]

# an ablation's row: the seen side's scores, then the unseen side's and the structure, since some choices (the
# back-half cut, token growth, the later stage's start) matter only there
ABLATION_COLUMNS = [c for c in COLUMNS if c[0] != "seconds"] + [
    c for c in UNSEEN_COLUMNS if c[0] in ("unseen_fscore", "pieces", "large_pieces", "largest_piece_share")] + [
    c for c in COLUMNS if c[0] == "seconds"]


def _table(rows: list[tuple[str, dict]], columns: list[tuple[str, str, str]] = COLUMNS) -> str:
    head = "| | " + " | ".join(c[1] for c in columns) + " |\n|---|" + "---:|" * len(columns) + "\n"
    body = ""
    for label, m in rows:
        cells = [fmt.format(m[k]) if k in m and np.isfinite(m[k]) else "–" for k, _, fmt in columns]
        body += f"| {label} | " + " | ".join(cells) + " |\n"
    return head + body


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# Evaluation ({report['generator']}, {report['seeds']} seeds)", "",
             "Depth/normal errors from the input view (depth relative to the object's bounding-box diagonal); "
             "Chamfer-L1 and F-score@0.02 to the full mesh (normalised by its diagonal); seen spread = std of the "
             "rendered depth across seeds over the seen pixels, relative to the object size.", "",
             "Unguided = the prior alone (λ = 0, no fusion); guided = the defaults; guided, no fusion = what "
             "guidance achieves without writing the seen shell into the output. Naive baselines (no prior): "
             "seen shell = the seen surface closed as a thin shell (marching cubes of its thin-shell SDF); "
             "mirrored = the seen surface mirrored about a mid-depth plane (object depth assumed = the silhouette's "
             "larger side) and closed at the silhouette (a volume, marching cubes).", "",
             "## Guided vs unguided, per mesh", ""]
    rows = []
    for name, r in report["meshes"].items():
        rows += [(f"{name} {label}", r[label]) for label in r]
    rows += [(f"**mean {label}**", s[label]) for label in ("unguided", "guided", "guided, no fusion", *BASELINES)
             if label in s]
    lines += [_table(rows), "", "## Unseen side and structure", "",
              "Reference surface samples hidden from the input camera (depth test against the reference rendered "
              "from it) → distance to the output (completeness); the output's own hidden samples → distance to the "
              "reference (accuracy); F-score@0.02 of those; distances relative to the reference's diagonal. "
              "Pieces: connected pieces (sharing a vertex); largest piece: its share of the area; watertight: share "
              "of runs whose every edge has two faces.", "",
              _table(rows, UNSEEN_COLUMNS), "", f"Depth-error ratio guided/unguided: **{s['depth_error_ratio']:.3f}**; "
              f"seen-spread ratio: **{s['spread_ratio']:.3f}**."]
    if "depth_error_ratio_no_fusion" in s:
        lines += [f"Without fusion: depth-error ratio **{s['depth_error_ratio_no_fusion']:.3f}**, seen-spread "
                  f"ratio **{s['spread_ratio_no_fusion']:.3f}**."]
    if report.get("prior_samples"):
        lines += ["", f"Prior alone (no view: dense stage from noise, unguided): {s['prior_coherent']} samples with "
                  f"the largest piece ≥ {COHERENT_SHARE:.0%} of the area; per seed "
                  + ", ".join(f"{r['largest_area_fraction']:.2f} ({r['pieces']} pieces)"
                              for r in report["prior_samples"]) + "."]
    lines += [""]
    lines += [f"- {k}: {'met' if ok else 'NOT met'}" for k, ok in s["targets"].items()]
    for group, res in report.get("ablations", {}).items():
        lines += ["", f"## Ablation: {group}", "", _table([(k, v["mean"]) for k, v in res.items()], ABLATION_COLUMNS)]
    lines += ["", f"Total time {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


PLOT_KEYS = ("depth_error_mean", "chamfer_l1", "silhouette_iou")  # one λ-sweep plot each


def report_files() -> list[str]:
    """The files :func:`evaluate` writes into its folder (at the end, together; the plots with ablations only)."""
    return ["report.json", "report.md"] + [f"lambda_sweep_{k}.png" for k in PLOT_KEYS]


def plots(report: dict, out: Path) -> None:
    """λ sweep curves (depth error and Chamfer vs λ) as PNG."""
    from .preview import line_plot

    sweep = report.get("ablations", {}).get("guidance strength λ (paper variant)")
    if not sweep:
        return
    lams = [float(k.split("=")[1]) for k in sweep]
    for key in PLOT_KEYS:
        line_plot(lams, [v["mean"][key] for v in sweep.values()], out / f"lambda_sweep_{key}.png", title=key,
                  x_label="guidance strength λ")


# ------------------------------------------------------------------------- several input views

# the settings run per view count (read when evaluate_views runs, so a test may swap in fewer steps)
VIEW_SETTINGS = MAIN_SETTINGS

# the views report's columns: the unseen side (hidden from every view), then the seen side
VIEW_COLUMNS = [("unseen_fscore", "unseen F@0.02", "{:.3f}"), ("unseen_completeness", "unseen completeness", "{:.4f}"),
                ("unseen_accuracy", "unseen accuracy", "{:.4f}"), ("depth_error_mean", "depth err (view 1)", "{:.4f}"),
                ("views_depth_error_mean", "depth err (all views)", "{:.4f}"),
                ("silhouette_iou", "IoU (view 1)", "{:.3f}"), ("views_silhouette_iou", "IoU (all views)", "{:.3f}"),
                ("pieces", "pieces", "{:.1f}"), ("large_pieces", "pieces > 0.5 %", "{:.1f}"),
                ("unseen_share", "unseen share", "{:.3f}"), ("failed_runs", "failed", "{:.0f}")]
PER_VIEW_COLUMNS = [("depth_error_mean", "depth err", "{:.4f}"), ("depth_error_p90", "p90", "{:.4f}"),
                    ("normal_error_deg_mean", "normal °", "{:.1f}"), ("silhouette_iou", "IoU", "{:.3f}")]


def views_report_files() -> list[str]:
    """The files :func:`evaluate_views` writes into its folder (at the end, together)."""
    return ["report.json", "report.md"]


def evaluate_views(mesh_paths: list[str | Path], out_dir: str | Path, view_counts: list[int],
                   generator: str = "mini", seeds: int = 1, size: int = 160) -> dict:
    """The main settings and the seen-shell baseline (plus mirrored with one view) on each mesh, for each number
    of input views (:func:`make_case` ``views=n``); one report (``report.json``, ``report.md``) of them all."""
    from .io.atomic import atomic_write_text, output_set
    from .pipeline import Pipeline

    out = Path(out_dir)
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(generator)
    report: dict = {"generator": pipe.generator.name, "defaults": pipe.resolve_options().to_dict(), "seeds": seeds,
                    "size": size, "view_counts": list(view_counts), "settings": [label for label, _ in VIEW_SETTINGS],
                    "meshes": {}}
    for path in mesh_paths:
        per_count: dict[str, dict] = {}
        for n in view_counts:
            case = make_case(path, size=size, views=n)
            row = {label: run_setting(pipe, case, list(range(seeds)), opts) for label, opts in VIEW_SETTINGS}
            row.update(run_baselines(pipe, case))
            for label, scores in row.items():
                print(f"{case.name:>16s} {n} view{'s' * (n > 1):1s} {label:>17s}: {_fmt_views(scores)}", flush=True)
            per_count[str(n)] = row
        report["meshes"][Path(path).stem] = per_count
    report["summary"] = {str(n): _mean_rows([m[str(n)] for m in report["meshes"].values()]) for n in view_counts}
    report["seconds"] = time.perf_counter() - t0
    with output_set():  # report.json and report.md appear together, or neither
        atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float))
        atomic_write_text(out / "report.md", views_markdown(report))
    return report


def _mean_rows(rows: list[dict[str, dict]]) -> dict[str, dict]:
    """Per label (setting or baseline): the mean over meshes, the per-view scores averaged view by view."""
    out = {}
    for label in rows[0]:
        per_mesh = {str(i): r[label] for i, r in enumerate(rows) if label in r}
        mean = _mean_over(per_mesh)
        views = [r["views"] for r in per_mesh.values() if "views" in r]
        if views:
            mean["views"] = [_mean_over({str(j): v[i] for j, v in enumerate(views)}) for i in range(len(views[0]))]
        out[label] = mean
    return out


def _fmt_views(m: dict) -> str:
    if m.get("failed_runs") and not np.isfinite(m.get("unseen_fscore", np.nan)):
        return f"{m['failed_runs']} run(s) without a surface ({m.get('failure', '')})"
    parts = [f"unseen F {m['unseen_fscore']:.3f}", f"compl {m['unseen_completeness']:.4f}",
             f"acc {m['unseen_accuracy']:.4f}", f"depth {m['depth_error_mean']:.4f}",
             f"IoU {m['silhouette_iou']:.3f}", f"pieces {m['pieces']:.0f}"]
    if "views" in m:
        parts.append("per view depth " + "/".join(f"{v['depth_error_mean']:.4f}" for v in m["views"]))
    return ", ".join(parts) + f", {m.get('seconds', 0):.1f} s"


def _views_label(n: int) -> str:
    return f"{n} view{'s' * (n > 1)}"


def _with_view_fallback(m: dict) -> dict:
    """One view: its scores are also the "all views" ones."""
    return {**{f"views_{k}": m[k] for k in VIEW_KEYS if k in m}, **m}


def views_markdown(report: dict) -> str:
    counts = report["view_counts"]
    s = report["summary"]
    settings = report["settings"]
    lines = [f"# Evaluation by number of input views ({report['generator']}, {report['seeds']} seed"
             f"{'s' * (report['seeds'] > 1)}, {report['size']} px)", "",
             "Views: cameras evenly spaced in azimuth around the mesh from the single-view evaluation's camera (same "
             "elevation and distance), poses given to the pipeline; the output and the reference are in the first "
             "view's camera frame. Unseen side: reference / output surface samples hidden from EVERY view (depth test "
             "per camera, as with one view); unseen share = the share of the reference's samples hidden so. Seen "
             "side: each view's depth error (relative to the object size) and silhouette IoU, the mesh rendered from "
             "that view's camera; view 1 = the single-view camera, all views = their mean. Seen shell = the seen "
             "surfaces of all views merged and closed as a thin shell (no prior). The mirrored baseline is reported "
             "for one view only: mirroring one view about its mid-depth plane ignores the other views.", "",
             "## Guided, by number of views (mean over meshes)", "",
             _table([(_views_label(n), _with_view_fallback(s[str(n)]["guided"])) for n in counts
                     if "guided" in s[str(n)]], VIEW_COLUMNS), "",
             "## Every setting and baseline, by number of views (mean over meshes)", ""]
    labels = [*settings, *BASELINES]
    rows = [(f"{_views_label(n)}, {label}", _with_view_fallback(s[str(n)][label]))
            for n in counts for label in labels if label in s[str(n)]]
    lines += [_table(rows, VIEW_COLUMNS), ""]
    multi = [n for n in counts if n > 1]
    if multi:
        lines += ["## Seen side per view, guided (mean over meshes)", ""]
        rows = [(f"{_views_label(n)}: view {i + 1}", v) for n in multi if "guided" in s[str(n)]
                for i, v in enumerate(s[str(n)]["guided"].get("views", []))]
        lines += [_table(rows, PER_VIEW_COLUMNS), ""]
    lines += ["## Per mesh", ""]
    for name, per_count in report["meshes"].items():
        rows = [(f"{_views_label(n)}, {label}", _with_view_fallback(per_count[str(n)][label]))
                for n in counts for label in labels if label in per_count[str(n)]]
        lines += [f"### {name}", "", _table(rows, VIEW_COLUMNS), ""]
    lines += [f"Total time {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"
