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


def check_examples(examples: list[str] | None) -> list[str]:
    """The example names to run (default all); an unknown one is an ``InputError`` (checked before any work)."""
    from .errors import InputError

    bundled = list_examples()
    names = list(examples or bundled)
    unknown = [n for n in names if n not in bundled]
    if unknown:
        raise InputError(f"unknown example {', '.join(map(repr, unknown))}; bundled: {', '.join(bundled)}")
    return names


def demo_outputs(names: list[str], compare: bool = False) -> list[str]:
    """The file names the demo writes into its folder, in order (``report.json`` last)."""
    labels = ["guided"] + (["unguided"] if compare else [])
    files = [f"{n}_{label}{end}" for n in names for label in labels for end in (".glb", "_preview.png")]
    return files + ["report.json"]


def run_demo(out_dir: str | Path, generator: str = "mini", examples: list[str] | None = None, seed: int = 0,
             compare: bool = False, progress: bool = True, device: str = "cpu", dtype: str | None = None,
             low_memory: bool = False, **options) -> dict:
    """Run the pipeline on each example; write meshes, previews and ``report.json`` into ``out_dir``.

    ``device`` / ``dtype`` / ``low_memory``: as :meth:`Pipeline.from_pretrained` takes them.

    Each run's mesh and preview appear together as soon as it is done (an output set); ``report.json`` is
    written last, so its presence means the demo completed. A failure part-way says which outputs are missing.
    """
    from .errors import UserError
    from .io.atomic import atomic_write_text, output_set
    from .pipeline import Pipeline
    from .preview import preview_panel, save_image

    out = Path(out_dir)
    names = check_examples(examples)
    planned = demo_outputs(names, compare)
    written: list[str] = []
    t0 = time.perf_counter()
    try:
        pipe = Pipeline.from_pretrained(generator, device=device, dtype=dtype, low_memory=low_memory)
        report: dict = {"generator": pipe.generator.name, "examples": {}}
        runs = [("guided", {})] + ([("unguided", dict(BASELINE))] if compare else [])
        for name in names:
            pm = load_example(name)
            for label, extra in runs:
                res = pipe(pm, seed=seed, progress=progress, **{**options, **extra})
                v, f = res.arrays("camera")
                panel = preview_panel(v, f, pm, colours=res.colourize())  # as the .glb: coloured when it can be
                with output_set():
                    mesh_path = res.export(out / f"{name}_{label}.glb", frame="camera")
                    preview = save_image(panel, out / f"{name}_{label}_preview.png")
                written += [mesh_path.name, preview.name]
                metrics = res.metrics()
                report["examples"].setdefault(name, {})[label] = {
                    "mesh": str(mesh_path), "preview": str(preview), "metrics": metrics, **res.report()}
                print(f"{name:>16s} {label:>8s}: depth error mean {metrics['depth_error_mean']:.4f} "
                      f"p90 {metrics['depth_error_p90']:.4f} (x object size), normal error "
                      f"{metrics['normal_error_deg_mean']:.1f} deg, silhouette IoU {metrics['silhouette_iou']:.3f}, "
                      f"{len(f)} faces, {res.timings['total']:.1f} s -> {mesh_path}")
        report["seconds"] = time.perf_counter() - t0
        atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float))
    except UserError as e:
        if not written:
            raise
        missing = [n for n in planned if n not in written]
        note = (f"{e} (the demo stopped: {len(written)} of {len(planned)} outputs written in {out}; "
                f"missing: {', '.join(missing)})")
        try:
            err = type(e)(note)
        except TypeError:  # an error class with arguments of its own: raised as it is
            err = None
        if err is None:
            raise
        raise err from e
    print(f"demo done in {report['seconds']:.1f} s; report: {out / 'report.json'}")
    return report
