"""consistent3dgen: one image (or point map) of an object → a 3D mesh whose seen side matches the input.

Reconstruction at the seen side (point maps from VGGT, depth or files) + generation at the unseen side
(a flow-matching 3D prior steered by front-partial guidance), training-free.
"""

from .errors import InputError, WeightsNotFoundError
from .pointmap import PointMap

__version__ = "0.1.0"

__all__ = ["InputError", "PointMap", "WeightsNotFoundError", "__version__"]
