"""File input/output: point maps, meshes, atomic writes."""
