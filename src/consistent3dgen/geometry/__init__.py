"""Geometry: point map → surface → thin-shell SDF on sparse voxels → mesh, and rendering for metrics."""
