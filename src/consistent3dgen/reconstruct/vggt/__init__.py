"""VGGT (Visual Geometry Grounded Transformer) in pure PyTorch, state-dict compatible with facebook/VGGT-1B."""

from .model import VGGT, VGGTConfig

__all__ = ["VGGT", "VGGTConfig"]
