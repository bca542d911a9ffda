"""``consistent3dgen demo``: the whole pipeline on the bundled RGB-D examples with the bundled mini prior.

The examples are renders (made by ``scripts/make_examples.py`` with :mod:`consistent3dgen.views`) of meshes the
mini prior never saw in training. For each: mesh (camera frame), preview PNG, metrics; one JSON report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .options import BASELINE

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


def list_examples(folder: Path = EXAMPLES_DIR) -> list[str]:
    return sorted(p.name[: -len("_depth.png")] for p in folder.glob("*_depth.png"))


def load_example(name: str, folder: Path = EXAMPLES_DIR):
    from .errors import InputError
    from .io.pointmap_io import load_depth

    depth = folder / f"{name}_depth.png"
    if not depth.is_file():
        raise InputError(f"unknown example {name!r}; bundled: {', '.join(list_examples(folder))}")
    return load_depth(depth, intrinsics=folder / f"{name}_intrinsics.txt", image=folder / f"{name}_rgba.png")


def run_demo(out_dir: str | Path, generator: str = "mini", examples: list[str] | None = None, seed: int = 0,
             compare: bool = False, progress: bool = True, **options) -> dict:
    """Run the pipeline on each example; write meshes, previews and ``report.json`` into ``out_dir``."""
    from .io.atomic import atomic_write_text
    from .pipeline import ConsistentPipeline
    from .preview import preview_panel, save_png

    out = Path(out_dir)
    names = examples or list_examples()
    t0 = time.perf_counter()
    pipe = ConsistentPipeline.from_pretrained(generator)
    report: dict = {"generator": pipe.generator.name, "examples": {}}
    runs = [("guided", {})] + ([("unguided", dict(BASELINE))] if compare else [])
    for name in names:
        pm = load_example(name)
        for label, extra in runs:
            res = pipe(pm, seed=seed, progress=progress, **{**options, **extra})
            v, f = res.mesh("camera")
            mesh_path = res.export(out / f"{name}_{label}.glb", frame="camera")
            preview = save_png(preview_panel(v, f, pm), out / f"{name}_{label}_preview.png")
            metrics = res.metrics()
            report["examples"].setdefault(name, {})[label] = {
                "mesh": str(mesh_path), "preview": str(preview), "metrics": metrics, **res.report()}
            print(f"{name:>16s} {label:>8s}: depth error mean {metrics['depth_error_mean']:.4f} "
                  f"p90 {metrics['depth_error_p90']:.4f} (x object size), normal error "
                  f"{metrics['normal_error_deg_mean']:.1f} deg, silhouette IoU {metrics['silhouette_iou']:.3f}, "
                  f"{len(f)} faces, {res.timings['total']:.1f} s -> {mesh_path}")
    report["seconds"] = time.perf_counter() - t0
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float))
    print(f"demo done in {report['seconds']:.1f} s; report: {out / 'report.json'}")
    return report
