"""File input/output: point maps and depth, images, meshes (by extension), weights, atomic writes."""
