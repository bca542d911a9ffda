"""Colour from the input image (issue 14): the coloured output seen from the input camera reproduces the image,
occluded surfaces do not take the colours in front of them, the files hold the colours, and the turntable."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from consistent3dgen.colour import bake_texture, vertex_colours
from consistent3dgen.geometry.render import intrinsics_from_fov, raycast
from consistent3dgen.io.meshes import export_mesh
from consistent3dgen.pointmap import PointMap
from consistent3dgen.turntable import render_coloured, turntable_frames, write_turntable

SIZE = 96
K = intrinsics_from_fov(40.0, SIZE, SIZE)


def pattern(p: np.ndarray) -> np.ndarray:
    """A smooth colour field on the sphere: about one period across it per channel."""
    return np.stack([128 + 100 * np.sin(3 * p[:, 0]), 128 + 100 * np.sin(3 * p[:, 1]),
                     128 + 100 * np.cos(3 * (p[:, 2] - 3))], axis=1)


@pytest.fixture(scope="module")
def sphere():
    """A unit sphere 3 in front of the camera and the input view of it: image = pattern at the hit points."""
    s = trimesh.creation.icosphere(subdivisions=4)
    v = s.vertices + [0.0, 0.0, 3.0]
    hit = raycast(v, s.faces, K, SIZE, SIZE)
    img = np.full((SIZE, SIZE, 3), 255, np.uint8)
    img[hit.mask] = np.clip(np.rint(pattern(hit.points[hit.mask].astype(np.float64))), 0, 255)
    pm = PointMap(points=np.nan_to_num(hit.points), mask=hit.mask, image=img, intrinsics=K)
    return v, np.asarray(s.faces), pm


def colour_error(render: np.ndarray, pm: PointMap, v: np.ndarray, f: np.ndarray) -> float:
    """Mean absolute colour error (0..255, over channels) on the overlap of the render and the input mask."""
    overlap = raycast(v, f, K, SIZE, SIZE).mask & pm.mask
    assert overlap.sum() > 0.9 * pm.mask.sum()
    return float(np.abs(render[overlap].astype(float) - pm.image[overlap].astype(float)).mean())


def test_the_input_view_of_the_vertex_colours_matches_the_image(sphere, tmp_path):
    v, f, pm = sphere
    colours, seen = vertex_colours(v, f, pm)
    # seen: the front (normals towards the camera); the far side (past the horizon's grazing band) never
    cos = np.einsum("ij,ij->i", v - [0, 0, 3], v) / np.linalg.norm(v, axis=1)  # normal . viewing ray
    facing = cos < 0
    assert seen[cos > 0.1].sum() == 0 and seen[cos > 0].sum() < 0.1 * seen.sum()  # polyhedral horizon
    assert seen[facing].mean() > 0.8  # only grazing vertices at the silhouette may miss the mask
    render = render_coloured(v, f, K, SIZE, SIZE, colours=colours, shaded=False)
    # bound: linear interpolation over edges of ~0.08 of a field with second derivative <= 900 (0..255 per
    # unit²) errs by <= 900 * 0.08² / 8 ~ 0.7; plus vertex sampling (bilinear over 1/176-unit pixels) and the
    # silhouette's grazing triangles. Measured 0.35; a colour from the wrong place costs tens.
    err = colour_error(render, pm, v, f)
    assert err < 1.5, err
    # the file holds them: GLB and PLY round-trip, colours not all one
    for ext in (".glb", ".ply"):
        out = export_mesh(v, f, tmp_path / f"s{ext}", vertex_colors=colours)
        loaded = trimesh.load(out, force="mesh", process=False)
        vc = loaded.visual.vertex_colors[:, :3]
        assert len(np.unique(vc, axis=0)) > 100
        np.testing.assert_array_equal(vc, colours)


def test_a_baked_texture_in_the_glb_reproduces_the_image(sphere, tmp_path):
    v, f, pm = sphere
    colours, _ = vertex_colours(v, f, pm)
    tex = bake_texture(v, f, colours, pm, size=512)
    out = export_mesh(tex.vertices, tex.faces, tmp_path / "t.glb", uv=tex.uv, texture=tex.image)
    loaded = trimesh.load(out, force="mesh", process=False)
    assert loaded.visual.kind == "texture"
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    assert image.shape == (512, 512, 3)
    render = render_coloured(loaded.vertices, loaded.faces, K, SIZE, SIZE, uv=loaded.visual.uv, texture=image,
                             shaded=False)
    # texels seen by the camera take the image itself: error from nearest-texel lookup only (plus silhouette);
    # measured 0.31
    err = colour_error(render, pm, loaded.vertices, loaded.faces)
    assert err < 1.5, err
    # the texture is not one colour, and an unseen texel far from the seen side is not white background
    assert image.reshape(-1, 3).std(0).min() > 10
    with pytest.raises(Exception, match="only"):
        export_mesh(tex.vertices, tex.faces, tmp_path / "t.ply", uv=tex.uv, texture=tex.image)


def plate(half: float, z: float, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    xs = np.linspace(-half, half, n)
    xx, yy = np.meshgrid(xs, xs)
    verts = np.stack([xx.ravel(), yy.ravel(), np.full(n * n, z)], axis=1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            i = r * n + c
            faces += [[i, i + 1, i + n], [i + 1, i + n + 1, i + n]]
    return verts, np.asarray(faces)


def test_an_occluded_layer_does_not_take_the_front_colours():
    """A small green plate in front of a large red one: the red plate's hidden middle stays red (filled from
    its own visible rim along the mesh), although the image shows green where it projects."""
    fv, ff = plate(0.35, 2.0)
    bv, bf = plate(1.0, 3.0)
    v = np.concatenate([fv, bv])
    f = np.concatenate([ff, bf + len(fv)])
    n_front = len(fv)
    hit = raycast(v, f, K, SIZE, SIZE)
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    front_px = hit.mask & (hit.face < len(ff))
    img[front_px] = (0, 200, 0)
    img[hit.mask & ~front_px] = (200, 0, 0)
    pm = PointMap(points=np.nan_to_num(hit.points), mask=hit.mask, image=img, intrinsics=K)
    colours, seen = vertex_colours(v, f, pm)
    back = np.arange(len(v)) >= n_front
    # back vertices that project into the green region (behind the front plate)
    behind = back & (np.abs(v[:, 0]) < 0.3 * 1.5) & (np.abs(v[:, 1]) < 0.3 * 1.5)
    assert behind.sum() >= 4
    assert not seen[behind].any()
    np.testing.assert_array_equal(colours[behind], np.tile([200, 0, 0], (behind.sum(), 1)))
    inner_front = ~back & (np.abs(v[:, 0]) < 0.3) & (np.abs(v[:, 1]) < 0.3)
    np.testing.assert_array_equal(colours[inner_front], np.tile([0, 200, 0], (inner_front.sum(), 1)))


def test_turntable_turns_and_is_written_atomically(sphere, tmp_path):
    v, f, pm = sphere
    colours, _ = vertex_colours(v, f, pm)
    frames = turntable_frames(v, f, colours, n_frames=8, size=64)
    assert len(frames) == 8 and frames[0].shape == (64, 64, 3)
    # the first frame looks at the seen side (its colours), the opposite one at the filled back: they differ
    assert np.abs(frames[0].astype(float) - frames[4].astype(float)).mean() > 3
    for fr in frames:  # the object stays in the frame, inside the border
        obj = (fr < 250).any(axis=2)
        assert obj.sum() > 0.2 * fr.shape[0] * fr.shape[1]
        assert not obj[0].any() and not obj[-1].any() and not obj[:, 0].any() and not obj[:, -1].any()
    out = write_turntable(frames, tmp_path / "turn.gif")
    assert [p.name for p in tmp_path.iterdir()] == ["turn.gif"]
    with Image.open(out) as gif:
        assert gif.n_frames == 8


def test_generate_writes_a_textured_glb_and_a_turntable(tmp_path, capsys):
    """The whole chain on a bundled example with the mini prior: --colour texture --turntable."""
    from consistent3dgen.cli import main
    from consistent3dgen.demo import EXAMPLES_DIR, load_example

    ex = EXAMPLES_DIR
    out, gif = tmp_path / "spot.glb", tmp_path / "spot.gif"
    argv = ["generate", str(ex / "spot_depth.png"), "--intrinsics", str(ex / "spot_intrinsics.txt"),
            "--image", str(ex / "spot_rgba.png"), "--out", str(out), "--colour", "texture",
            "--turntable", str(gif), "--max-faces", "4000", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spot.gif", "spot.glb"]
    pm = load_example("spot")
    h, w = pm.shape
    mesh = trimesh.load(out, force="mesh", process=False)
    assert mesh.visual.kind == "texture"
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    render = render_coloured(mesh.vertices, mesh.faces, pm.intrinsics, w, h, uv=mesh.visual.uv, texture=image,
                             shaded=False)
    overlap = raycast(mesh.vertices, mesh.faces, pm.intrinsics, w, h).mask & pm.mask
    assert overlap.sum() > 0.8 * pm.mask.sum()
    err = float(np.abs(render[overlap].astype(float) - pm.image[overlap].astype(float)).mean())
    # seen texels sample the image; the error is where the generated surface strays from the input's
    assert err < 3.0, err
    with Image.open(gif) as g:
        assert g.n_frames == 36 and g.size == (256, 256)


def test_texture_needs_a_glb_and_is_refused_before_any_work(tmp_path, capsys):
    from consistent3dgen.cli import main

    argv = ["generate", str(tmp_path / "never_read.npz"), "--out", str(tmp_path / "m.obj"), "--colour", "texture"]
    assert main(argv) == 2
    assert "--colour texture" in capsys.readouterr().err
    argv = ["generate", str(tmp_path / "never_read.npz"), "--out", str(tmp_path / "m.glb"),
            "--turntable", str(tmp_path / "t.avi")]
    assert main(argv) == 2
    assert "--turntable" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_colour_asked_for_an_input_without_image_is_refused_before_the_models(tmp_path, capsys, monkeypatch):
    from consistent3dgen.cli import main
    from consistent3dgen.demo import EXAMPLES_DIR as ex
    from consistent3dgen.pipeline import Pipeline

    def fail(*args, **kwargs):
        raise AssertionError("the models loaded before the colour option was checked")

    monkeypatch.setattr(Pipeline, "from_pretrained", fail)
    argv = ["generate", str(ex / "spot_depth.png"), "--intrinsics", str(ex / "spot_intrinsics.txt"),
            "--out", str(tmp_path / "m.glb"), "--colour", "vertex"]
    assert main(argv) == 2
    assert "no colour image" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_result_mesh_carries_the_colours_and_exports_them(sphere, tmp_path):
    from consistent3dgen.geometry.frames import CanonicalFrame, camera_to_canonical
    from consistent3dgen.options import GenerationOptions
    from consistent3dgen.pipeline import PipelineResult

    v, f, pm = sphere
    frame = CanonicalFrame(center=(0.0, 0.0, 3.0), scale=0.9)
    res = PipelineResult(camera_to_canonical(v, frame).astype(np.float32), f, frame, pm, GenerationOptions())
    assert res.colours is None  # nothing computed until asked
    mesh = res.mesh
    expected, _ = vertex_colours(*res.arrays("camera"), pm)
    np.testing.assert_array_equal(mesh.visual.vertex_colors[:, :3], expected)
    assert res.default_colour("m.glb") == "vertex" and res.default_colour("m.stl") == "none"
    out = res.export(tmp_path / "m.obj")  # OBJ: vertex colours as trimesh writes them (after each vertex)
    loaded = trimesh.load(out, force="mesh", process=False)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], expected)
    plain = res.export(tmp_path / "p.glb", colour="none")
    assert trimesh.load(plain, force="mesh").visual.kind != "vertex"
    # no image: no colours, at no cost, and asking for them is an input error
    bare = PipelineResult(res.vertices, f, frame, PointMap(points=pm.points, mask=pm.mask, intrinsics=K),
                          GenerationOptions())
    assert bare.colourize() is None and bare.default_colour("m.glb") == "none"
    from consistent3dgen.errors import InputError

    with pytest.raises(InputError, match="no colour image"):
        bare.export(tmp_path / "b.glb", colour="vertex")


def test_mp4_turntable_needs_imageio_ffmpeg(tmp_path):
    from consistent3dgen.errors import InputError
    from consistent3dgen.turntable import check_turntable_path, mp4_available

    frames = [np.full((64, 64, 3), i * 20, np.uint8) for i in range(6)]
    if not mp4_available():
        with pytest.raises(InputError, match="imageio-ffmpeg"):
            check_turntable_path(tmp_path / "t.mp4")
        return
    out = write_turntable(frames, tmp_path / "t.mp4")
    assert out.stat().st_size > 0 and [p.name for p in tmp_path.iterdir()] == ["t.mp4"]
