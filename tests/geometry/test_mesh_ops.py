"""Mesh clean-up and statistics: connected pieces, small-piece removal, simplification to a face budget."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from consistent3dgen.geometry.mesh_ops import mesh_pieces, remove_small_components, simplify_mesh


def test_simplify_keeps_budget_and_open_rim() -> None:
    hemi = trimesh.creation.icosphere(subdivisions=4)
    keep = hemi.vertices[hemi.faces].mean(axis=1)[:, 2] > 0
    open_mesh = trimesh.Trimesh(hemi.vertices, hemi.faces[keep])
    rim_before = len(open_mesh.outline().entities)
    v, f = simplify_mesh(open_mesh.vertices, open_mesh.faces, max_faces=500)
    assert 400 <= len(f) <= 500
    out = trimesh.Trimesh(v, f)
    assert len(out.outline().entities) == rim_before == 1
    # The rim stays on the z ≈ 0 circle: border vertices are not collapsed away.
    rim = out.vertices[np.unique(out.outline().entities[0].points)]
    np.testing.assert_allclose(np.linalg.norm(rim[:, :2], axis=1), 1.0, atol=0.02)
    same_v, same_f = simplify_mesh(open_mesh.vertices, open_mesh.faces, max_faces=10**6)
    assert len(same_f) == len(open_mesh.faces)
    with pytest.raises(ValueError, match="face budget"):
        simplify_mesh(open_mesh.vertices, open_mesh.faces, max_faces=3)


def test_remove_small_components_keeps_the_main_piece_and_drops_specks() -> None:
    big = trimesh.creation.icosphere(subdivisions=3)  # 1280 faces
    speck = trimesh.creation.icosphere(subdivisions=0)  # 20 faces
    speck.vertices += 3.0
    mid = trimesh.creation.icosphere(subdivisions=2)  # 320 faces
    mid.vertices -= 3.0
    both = trimesh.util.concatenate([big, speck, mid])
    v, f = remove_small_components(both.vertices, both.faces, 0.05)
    assert len(f) == len(big.faces) + len(mid.faces) and len(v) == len(big.vertices) + len(mid.vertices)
    assert f.max() == len(v) - 1 and (v[:, 0] < 2.0).all()  # indices remapped, the speck's vertices gone
    v0, f0 = remove_small_components(both.vertices, both.faces, 0.0)
    assert len(f0) == len(both.faces)


def test_mesh_pieces_of_two_disjoint_boxes() -> None:
    small = trimesh.creation.box(extents=(1.0, 1.0, 1.0))  # area 6
    large = trimesh.creation.box(extents=(2.0, 2.0, 2.0))  # area 24
    large.apply_translation([5.0, 0.0, 0.0])
    both = trimesh.util.concatenate([small, large])
    stats = mesh_pieces(both.vertices, both.faces)
    assert stats == {"pieces": 2, "large_pieces": 2, "largest_area_fraction": pytest.approx(24 / 30),
                     "watertight": True}
    assert isinstance(stats["pieces"], int) and isinstance(stats["watertight"], bool)
    speck = trimesh.creation.box(extents=(0.05, 0.05, 0.05))  # area 0.015: 0.05 % of the total, a speck
    speck.apply_translation([-3.0, 0.0, 0.0])
    with_speck = trimesh.util.concatenate([small, large, speck])
    stats = mesh_pieces(with_speck.vertices, with_speck.faces)
    assert stats["pieces"] == 3 and stats["large_pieces"] == 2


def test_mesh_pieces_of_a_sphere_and_of_open_or_empty_meshes() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    assert mesh_pieces(sphere.vertices, sphere.faces) == {"pieces": 1, "large_pieces": 1, "largest_area_fraction": 1.0,
                                                          "watertight": True}
    open_cap = sphere.faces[sphere.vertices[sphere.faces].mean(axis=1)[:, 2] > 0]
    stats = mesh_pieces(sphere.vertices, open_cap)  # unused vertices do not count as pieces
    assert stats["pieces"] == 1 and stats["largest_area_fraction"] == 1.0 and not stats["watertight"]
    assert mesh_pieces(sphere.vertices, np.zeros((0, 3), np.int64)) == {
        "pieces": 0,
        "large_pieces": 0,
        "largest_area_fraction": 0.0,
        "watertight": False,
    }
    with pytest.raises(ValueError, match="indices"):
        mesh_pieces(sphere.vertices, sphere.faces + len(sphere.vertices))
