"""The bundled mini prior: Direct3D-S2's classes at a tiny configuration, one file pair per component."""

from .prior import BUNDLED_DIR, build_component, load_mini_prior, save_mini_prior

__all__ = ["BUNDLED_DIR", "build_component", "load_mini_prior", "save_mini_prior"]
