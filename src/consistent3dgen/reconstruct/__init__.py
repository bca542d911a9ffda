"""Seen-side reconstruction: image(s) / depth / stored point map → pixel-aligned :class:`PointMap`s.

``get_reconstructor("vggt"|"depth"|"pointmap"|None, inputs)`` picks one (None infers it from the inputs).
"""

from .base import RECONSTRUCTORS, Reconstructor, get_reconstructor, infer_reconstructor

__all__ = ["RECONSTRUCTORS", "Reconstructor", "get_reconstructor", "infer_reconstructor"]
