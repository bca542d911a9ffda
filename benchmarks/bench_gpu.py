"""GPU benchmark: the whole Direct3D-S2 cascade (DINOv2, dense, 512, 1024, refiners) on one object, random full-size
weights, normal vs low-memory mode; per stage its time, time per sampling step, tokens and peak GPU memory
(``torch.cuda.max_memory_allocated`` of that stage, from ``PipelineResult.report()``).

The weights are random (``generators/direct3d_s2/random_weights.py``, official architecture, written once into
``--weights``), so what they would decode is noise: the dense stage would fill the cube and the 512 stage's
mesh would be a sponge, giving the 1024 stage many times the tokens a trained model gives. The *oracle* (on unless
``--no-oracle``) keeps every model's work (each decoder still runs, on the same tokens) but replaces what it
decodes by the object's own fields (exact occupancy and SDF of an analytic torus, the shape the point map is
rendered from), so the tokens of each stage, and hence every time and memory figure, are those of a model that
decodes this object. The sampling steps are fewer than the official 50 / 30 / 15 (``--steps``) to stay within
``--budget-s``; each stage's time at the official steps is extrapolated from its measured time per step.

Usage::

    python benchmarks/bench_gpu.py                              # full size on the GPU (designed for < 8 min on an H200)
    python benchmarks/bench_gpu.py --size tiny --device cpu     # the same logic on a CPU in about a minute (smoke)
    python benchmarks/bench_gpu.py --modes low-memory --steps 50 30 15   # one mode, official steps
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

OFFICIAL_STEPS = (50, 30, 15)  # dense, 512, 1024 (Direct3D-S2's pipeline)
MODES = ("normal", "low-memory")
GIB = 2**30


# --------------------------------------------------------------------------- the object


class Torus:
    """A torus (metres, world frame) tilted towards the camera: exact SDF, and a mesh of it to render."""

    def __init__(self, major: float = 0.32, minor: float = 0.13, tilt_deg: float = 35.0):
        self.major, self.minor = major, minor
        a = np.radians(tilt_deg)
        self.rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])  # world ← torus

    def sdf(self, p: np.ndarray) -> np.ndarray:
        q = np.asarray(p, np.float64) @ self.rot  # torus frame (rot is orthogonal: p @ rot = rot.T p)
        ring = np.hypot(q[:, 0], q[:, 2]) - self.major
        return np.hypot(ring, q[:, 1]) - self.minor

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        import trimesh

        m = trimesh.creation.torus(major_radius=self.major, minor_radius=self.minor, major_sections=128,
                                   minor_sections=64)
        v = np.asarray(m.vertices)[:, [0, 2, 1]]  # trimesh's torus lies in the xy plane: ours in xz
        return v @ self.rot.T, np.asarray(m.faces)


def render_view(shape: Torus, size: int):
    """(PointMap with colour image and intrinsics, cam_from_world) of one view of ``shape``."""
    from consistent3dgen.views import orbit_camera, render_rgbd

    cam = orbit_camera(25.0, 20.0, 1.6)
    view = render_rgbd(*shape.mesh(), cam, size=size, fov_deg=40.0)
    return view.to_pointmap(), cam


# --------------------------------------------------------------------------- the oracle


class Oracle:
    """What the decoders give, replaced by the shape's fields in each stage's frame (after they ran)."""

    def __init__(self, shape: Torus, cam_from_world: np.ndarray):
        self.shape = shape
        self.world_from_cam = np.linalg.inv(cam_from_world)
        self.seen: Any = None
        self.sims: dict[int, Any] = {}

    def install(self, pipe: Any) -> None:
        build = pipe.build_seen_side

        def build_seen_side(pointmap: Any, opts: Any) -> Any:
            self.seen, self.sims = _SeenProxy(build(pointmap, opts), self), {}
            return self.seen

        pipe.build_seen_side = build_seen_side
        gen = pipe.generator
        gen.dense = _DenseProxy(gen.dense, self)
        gen.sparse = [_SparseProxy(s, k, self) for k, s in enumerate(gen.sparse)]

    def frame(self, k: int | None) -> Any:
        from consistent3dgen.geometry.frames import compose_frame

        return self.seen.frame if k is None else compose_frame(self.seen.frame, self.sims[k])

    def sdf_voxels(self, coords: np.ndarray, resolution: int, k: int | None) -> np.ndarray:
        """Signed distance in voxels of ``resolution`` at the voxel centres of stage ``k`` (None: the dense stage)."""
        from consistent3dgen.geometry.frames import canonical_to_camera
        from consistent3dgen.geometry.voxels import voxel_centers

        frame = self.frame(k)
        out, n = np.empty(len(coords), np.float32), 1 << 22
        for s in range(0, len(coords), n):  # in chunks: the 1024 stage decodes tens of millions of voxels
            cam = canonical_to_camera(voxel_centers(coords[s:s + n], resolution), frame)
            world = cam @ self.world_from_cam[:3, :3].T + self.world_from_cam[:3, 3]
            out[s:s + n] = self.shape.sdf(world) * frame.scale * resolution / 2.0
        return out


class _Proxy:
    def __init__(self, inner: Any, oracle: Oracle):
        self.__dict__.update(_inner=inner, _oracle=oracle)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def modules(self) -> list:
        from consistent3dgen.generators.base import stage_modules

        return stage_modules(self._inner)


class _SeenProxy(_Proxy):
    def target(self, index: int, sim: Any) -> Any:
        self._oracle.sims[index] = sim  # the stage's frame, for its decoder's replacement
        return self._inner.target(index, sim)


class _DenseProxy(_Proxy):
    def decode_occupancy(self, latent: Any) -> Any:
        import torch

        from consistent3dgen.geometry.voxels import all_voxels

        logits = self._inner.decode_occupancy(latent)
        r = self._inner.occupancy_resolution
        inside = self._oracle.sdf_voxels(all_voxels(r), r, None).reshape(1, 1, r, r, r) < 0
        return torch.where(torch.as_tensor(inside, device=logits.device), 8.0, -8.0).to(logits.dtype)


def _replaced(sdf: Any, oracle: Oracle, k: int) -> Any:
    from consistent3dgen.geometry.voxels import SparseVoxels

    d = oracle.sdf_voxels(sdf.coords, sdf.resolution, k)
    return SparseVoxels(sdf.coords, sdf.resolution, np.clip(d / 2.0, -1.0, 1.0)[:, None].astype(np.float32))


class _SparseProxy(_Proxy):
    def __init__(self, inner: Any, k: int, oracle: Oracle):
        super().__init__(inner, oracle)
        refiner = getattr(inner, "refiner", None)
        self.__dict__.update(_k=k, refiner=None if refiner is None else _RefinerProxy(refiner, k, oracle))

    def decode_sdf(self, latent: Any, **kw: Any) -> Any:
        return _replaced(self._inner.decode_sdf(latent, **kw), self._oracle, self._k)


class _RefinerProxy(_Proxy):
    def __init__(self, inner: Any, k: int, oracle: Oracle):
        super().__init__(inner, oracle)
        self.__dict__["_k"] = k

    def decode(self, latent: Any, **kw: Any) -> Any:
        sdf, decoded = self._inner.decode(latent, **kw)
        return _replaced(sdf, self._oracle, self._k), decoded

    def refine(self, sdf: Any, decoded: Any, level: float) -> Any:
        from consistent3dgen.geometry.marching_cubes import sparse_marching_cubes

        try:  # the refiner's work (random weights: what it finds is not used)
            self._inner.refine(sdf, decoded, level)
        except Exception as e:  # noqa: BLE001 - e.g. no surface in a random field
            print(f"    ({self._inner.name} on random weights: {type(e).__name__}; its mesh replaced anyway)")
        return sparse_marching_cubes(sdf, level=level)


# --------------------------------------------------------------------------- one run


def run_mode(mode: str, weights: Path, device: Any, pm: Any, cam: np.ndarray, shape: Torus, steps: tuple[int, ...],
             oracle: bool, seed: int) -> dict:
    import torch

    from consistent3dgen.generators.direct3d_s2.random_weights import DINO_FOLDER
    from consistent3dgen.pipeline import Pipeline

    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(str(weights), device=device, low_memory=mode == "low-memory",
                                              dino_weights=str(weights / DINO_FOLDER))
    load_s = time.perf_counter() - t0
    if oracle:
        Oracle(shape, cam).install(pipe)
    ticks: dict[str, list[float]] = {}
    dev = pipe.device

    def tick(info: Any) -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        ticks.setdefault(info.stage, []).append(time.perf_counter())

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    res = pipe(pm, dense_steps=steps[0], sparse_steps=tuple(steps[1:]), seed=seed, progress=False, callback=tick)
    run_s = time.perf_counter() - t0
    report = res.report()
    official = dict(zip(["dense"] + [f"sparse{s.resolution}" for s in pipe.generator.sparse], OFFICIAL_STEPS,
                        strict=False))
    planned = dict(zip(official, steps, strict=False))
    rows = []
    for s in report["stages"]:
        name, t = s["stage"], ticks.get(s["stage"], [])
        step_s = float(np.median(np.diff(t))) if len(t) >= 2 else None
        row = {"stage": name, "seconds": s.get("seconds"), "steps": len(t), "step_s": step_s,
               "tokens": s.get("tokens"), "peak_bytes": s["memory"]["peak_bytes"], "memory_kind": s["memory"]["kind"]}
        if step_s is not None and name in official:  # the same share of the schedule (SDEdit starts part-way)
            run_official = round(len(t) * official[name] / planned[name])
            row["seconds_at_official_steps"] = s["seconds"] + (run_official - len(t)) * step_s
        rows.append(row)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    out = {"mode": mode, "load_s": load_s, "run_s": run_s, "timings": report["timings"], "stages": rows,
           "peak_bytes": peak, "runtime": report["runtime"], "faces": report["faces"]}
    del pipe, res
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def print_mode(r: dict) -> None:
    def gb(b: Any) -> str:
        return "-" if b is None else f"{b / GIB:.2f}"

    print(f"\n== {r['mode']}  (runtime {r['runtime']}; load {r['load_s']:.1f} s, run {r['run_s']:.1f} s, "
          f"{r['faces']} faces; peak over the run {gb(r['peak_bytes'])} GiB)")
    print(f"{'stage':<11}{'seconds':>9}{'steps':>6}{'s/step':>8}{'@official':>10}{'tokens':>9}{'peak GiB':>10}  kind")
    for s in r["stages"]:
        step = "-" if s["step_s"] is None else f"{s['step_s']:.3f}"
        off = s.get("seconds_at_official_steps")
        print(f"{s['stage']:<11}{s['seconds']:>9.2f}{s['steps']:>6}{step:>8}{'-' if off is None else f'{off:.1f}':>10}"
              f"{s['tokens'] if s['tokens'] is not None else '-':>9}{gb(s['peak_bytes']):>10}  {s['memory_kind']}")
    other = {k: round(v, 2) for k, v in r["timings"].items() if k in ("reconstruct", "foreground", "extract")}
    print(f"other steps (s): {other}")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["full", "tiny"], default="full")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda[:N]")
    ap.add_argument("--version", choices=["v1.0", "v1.1"], default="v1.1")
    ap.add_argument("--weights", type=Path, default=None,
                    help="folder of random weights (written when it holds none; default a folder in the temp dir)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--steps", type=int, nargs=3, default=None, metavar=("DENSE", "S512", "S1024"),
                    help="sampling steps (default full: 10 6 4, tiny: 2 2 2)")
    ap.add_argument("--pixels", type=int, default=None, help="side of the rendered view (default full 518, tiny 96)")
    ap.add_argument("--no-oracle", action="store_true", help="keep what the random decoders give (see the docstring)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip the remaining modes past this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from consistent3dgen.devices import resolve_device
    from consistent3dgen.generators.direct3d_s2.random_weights import write_direct3d_s2

    start = time.perf_counter()
    device = resolve_device(args.device)
    tiny = args.size == "tiny"
    steps = tuple(args.steps or ((2, 2, 2) if tiny else (10, 6, 4)))
    weights = args.weights or Path(tempfile.gettempdir()) / f"c3dg_direct3d_s2_{args.size}_{args.version}_random"
    if not (weights / "config.yaml").is_file():
        t = time.perf_counter()
        write_direct3d_s2(weights, size=args.size, version=args.version, seed=args.seed)
        print(f"wrote random {args.size} {args.version} weights to {weights} in {time.perf_counter() - t:.1f} s")
    shape = Torus()
    pm, cam = render_view(shape, args.pixels or (96 if tiny else 518))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"device {device} ({name}), torch {torch.__version__}, steps {steps} (official {OFFICIAL_STEPS}), "
          f"view {pm.shape[1]}x{pm.shape[0]}, oracle {'off' if args.no_oracle else 'on'}")
    results = []
    for mode in args.modes:
        if results and time.perf_counter() - start > args.budget_s:
            print(f"\nskipped {mode}: past the budget of {args.budget_s:.0f} s")
            continue
        results.append(run_mode(mode, weights, device, pm, cam, shape, steps, not args.no_oracle, args.seed))
        print_mode(results[-1])
    if len(results) == 2 and all(r["peak_bytes"] for r in results):
        print(f"\nlow-memory / normal peak: {results[1]['peak_bytes'] / results[0]['peak_bytes']:.2f}, "
              f"time: {results[1]['run_s'] / results[0]['run_s']:.2f}")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return results


if __name__ == "__main__":
    main()
