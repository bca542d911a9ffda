"""consistent3dgen: one image (or point map) of an object → a 3D mesh whose seen side matches the input.

Reconstruction at the seen side (point maps from VGGT, depth or files) + generation at the unseen side
(a flow-matching 3D prior steered by front-partial guidance), training-free::

    from consistent3dgen import Pipeline

    pipe = Pipeline.from_pretrained("mini")          # the bundled prior; "direct3d-s2" or a folder for the paper's
    result = pipe("photo_rgba.png", seed=0)          # a path, PIL image, uint8 array, PointMap or a list of views
    result.mesh.export("object.glb")                 # a trimesh.Trimesh in the input camera's frame

The pipeline and its options load torch, so they are imported on first use: ``import consistent3dgen`` and
the CLI's ``--help`` stay light.
"""

from typing import Any

from .errors import InputError, WeightsNotFoundError
from .pointmap import PointMap

__version__ = "0.1.0"

# name -> (module, attribute), imported when first asked for
_LAZY = {
    "Pipeline": ("pipeline", "Pipeline"),
    "PipelineResult": ("pipeline", "PipelineResult"),
    "GenerationOptions": ("options", "GenerationOptions"),
    "StepInfo": ("sampling.sampler", "StepInfo"),
    "load_depth": ("io.pointmap_io", "load_depth"),
    "load_pointmap": ("io.pointmap_io", "load_pointmap"),
    "depth_to_pointmap": ("io.pointmap_io", "depth_to_pointmap"),
}

__all__ = ["GenerationOptions", "InputError", "Pipeline", "PipelineResult", "PointMap", "StepInfo",
           "WeightsNotFoundError", "__version__", "depth_to_pointmap", "load_depth", "load_pointmap"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
