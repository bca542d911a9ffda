"""``consistent3dgen batch`` (issue 15): the input conventions, checks before any work, the manifest, reruns,
a real SIGKILL part-way, local worker processes and a local Ray cluster.

Runs use a random tiny prior with two sampling steps per stage (fast); its meshes are noise, which is all a batch
needs. The bad item is a depth map whose image beside it has another size: it passes the checks before the work
(readable files, a camera) and fails when it is read, with both paths in its error, so it costs no pipeline run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consistent3dgen import batch
from consistent3dgen.batch import MANIFEST, Manifest, plan_items
from consistent3dgen.cli import main
from consistent3dgen.demo import EXAMPLES_DIR
from consistent3dgen.errors import InputError
from consistent3dgen.io.atomic import TMP_TAG, is_stale_temp

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "consistent3dgen"]


@pytest.fixture(scope="module")
def fast_prior(tiny_prior_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random prior with 2 dense / 2 sparse steps and few tokens: a run takes seconds."""
    folder = tmp_path_factory.mktemp("fast_prior")
    for f in tiny_prior_dir.iterdir():
        shutil.copy(f, folder / f.name)
    spec = json.loads((folder / "pipeline.json").read_text())
    spec["stages"]["dense"]["sampler"]["steps"] = 2
    for stage in spec["stages"]["sparse"]:
        stage["sampler"]["steps"] = 2
    spec["defaults"]["occupancy_threshold"] = 0.999  # the random dense stage adds (almost) no tokens
    (folder / "pipeline.json").write_text(json.dumps(spec))
    return folder


def copy_example(name: str, folder: Path, as_name: str | None = None) -> Path:
    """The bundled example's three files in ``folder`` (named ``as_name``); returns the depth map."""
    folder.mkdir(parents=True, exist_ok=True)
    as_name = as_name or name
    for end in ("_depth.png", "_intrinsics.txt", "_rgba.png"):
        shutil.copy(EXAMPLES_DIR / f"{name}{end}", folder / f"{as_name}{end}")
    return folder / f"{as_name}_depth.png"


def write_bad(folder: Path, name: str = "bad") -> Path:
    """A 16x16 depth PNG with a camera and an 8x8 image beside it: it fails only when read."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), 1000, np.uint16)).save(folder / f"{name}_depth.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(folder / f"{name}_rgba.png")
    (folder / f"{name}_intrinsics.txt").write_text("20 20 8 8\n")
    return folder / f"{name}_depth.png"

BAD_ERROR = "must match"  # the image and the depth map differ in size


def records(out: Path) -> list[dict]:
    """The manifest's complete lines (a torn last line, from a kill, left out)."""
    data = (out / MANIFEST).read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def assert_outputs_complete(out: Path, rec: dict) -> None:
    import trimesh

    assert rec["status"] == "ok", rec
    mesh = trimesh.load(out / rec["outputs"]["mesh"], force="mesh", process=False)
    assert len(mesh.faces) == rec["faces"] > 0
    report = json.loads((out / rec["outputs"]["report"]).read_text())
    assert report["input"] == rec["input"] and report["faces"] == rec["faces"]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def temps(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if TMP_TAG in p.name]


# ------------------------------------------------------------------------------------------------ conventions


def test_the_parser_and_the_batch_module_load_no_torch():
    code = ("import sys; from consistent3dgen.cli import build_parser; "
            "a = build_parser().parse_args(['batch', 'x_depth.png', '--out', 'o', '--workers', '2']); "
            "import consistent3dgen.batch; print(a.workers, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["2", "False"], out.stderr


def test_mesh_formats_are_the_exporters():
    from consistent3dgen.io.meshes import EXPORT_FORMATS

    assert tuple("." + f for f in batch.MESH_FORMATS) == EXPORT_FORMATS


def test_plan_reads_the_bundled_layout_folders_npz_and_list_files(tmp_path):
    from consistent3dgen.demo import load_example
    from consistent3dgen.io.pointmap_io import save_npz

    items = plan_items([EXAMPLES_DIR])
    assert [it.name for it in items] == ["spot", "stanford-bunny", "teapot"]
    for it in items:
        assert it.kind == "depth"
        assert it.intrinsics == str(EXAMPLES_DIR / f"{it.name}_intrinsics.txt")
        assert it.image == str(EXAMPLES_DIR / f"{it.name}_rgba.png") and it.mask is None

    data = tmp_path / "data"
    copy_example("teapot", data / "a")
    save_npz(load_example("spot"), data / "spot.npz")
    shared = tmp_path / "shared_camera"
    shared.mkdir()
    shutil.copy(EXAMPLES_DIR / "spot_depth.png", shared / "cam_depth.png")  # no intrinsics file beside it
    lst = data / "items.txt"
    lst.write_text("# a comment\n\na/teapot_depth.png\n"
                   '{"input": "a/teapot_depth.png", "name": "teapot_fov", "fov": 40}\n'
                   f'{{"input": "{data / "spot.npz"}"}}\n')
    items = plan_items([shared], lst, fov=55.0)
    by_name = {it.name: it for it in items}
    assert list(by_name) == ["cam", "teapot", "teapot_fov", "spot"]
    assert by_name["cam"].fov == 55.0 and by_name["cam"].intrinsics is None  # the shared camera
    assert by_name["teapot"].intrinsics == str(data / "a" / "teapot_intrinsics.txt")  # beside wins over --fov
    assert by_name["teapot_fov"].fov == 40 and by_name["teapot_fov"].intrinsics is None  # the line wins
    assert by_name["teapot_fov"].image == str(data / "a" / "teapot_rgba.png")
    assert by_name["spot"].kind == "pointmap" and by_name["spot"].image is None


@pytest.mark.parametrize("case", ["missing", "extension", "no_camera", "duplicate", "json", "key", "not_npz",
                                  "not_depth_png"])
def test_plan_refuses_bad_inputs_in_one_line(tmp_path, case):
    bad = tmp_path / "in"
    bad.mkdir()
    inputs: list = []
    list_file = None
    if case == "missing":
        inputs = [bad / "nope_depth.png"]
    elif case == "extension":
        (bad / "x.txt").write_text("1")
        inputs = [bad / "x.txt"]
    elif case == "no_camera":
        shutil.copy(EXAMPLES_DIR / "spot_depth.png", bad / "spot_depth.png")
        inputs = [bad / "spot_depth.png"]
    elif case == "duplicate":
        inputs = [EXAMPLES_DIR / "spot_depth.png", copy_example("spot", bad)]
    elif case in ("json", "key"):
        list_file = bad / "l.txt"
        list_file.write_text('{"input": "a.png", oops}\n' if case == "json" else '{"input": "a.png", "size": 3}\n')
    elif case == "not_npz":
        (bad / "p.npz").write_bytes(b"not a zip")
        inputs = [bad / "p.npz"]
    else:  # an 8-bit PNG named as a depth map
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "q_depth.png")
        inputs = [bad / "q_depth.png"]
    with pytest.raises(InputError) as e:
        plan_items(inputs, list_file)
    assert "\n" not in str(e.value)
    words = {"missing": "not found", "extension": "cannot tell", "no_camera": "needs a camera",
             "duplicate": "output name 'spot'", "json": "not a JSON object", "key": "unknown key",
             "not_npz": "not a zip", "not_depth_png": "not a 16-bit PNG"}
    assert words[case] in str(e.value)


def test_bad_arguments_are_one_line_exit_2_before_any_work(tmp_path, capsys, no_work):
    (tmp_path / "afile").write_text("x")
    good = copy_example("teapot", tmp_path / "in")
    bare = copy_example("teapot", tmp_path / "bare", "plain")
    (bare.parent / "plain_rgba.png").unlink()  # a depth map and its camera, no image
    (tmp_path / "o2" / "teapot.glb").mkdir(parents=True)
    cases = [
        (["batch", str(tmp_path / "never_read_depth.png"), "--out", str(tmp_path / "afile")], "is a file"),
        (["batch", str(tmp_path / "missing_depth.png"), "--out", str(tmp_path / "o")], "not found"),
        (["batch", str(good), "--out", str(tmp_path / "o"), "--workers", "0"], "--workers"),
        (["batch", str(good), "--out", str(tmp_path / "o"), "--image", str(good)], "beside each"),
        (["batch", "--out", str(tmp_path / "o")], "no inputs"),
        (["batch", str(good), "--out", str(tmp_path / "o"), "--guidance", "nan"], "guidance"),
        (["batch", str(good), "--out", str(tmp_path / "o2")], "is a folder"),
        (["batch", str(good), "--out", str(tmp_path / "o"), "--format", "stl", "--colour", "vertex"], "STL holds no"),
        (["batch", str(bare), "--out", str(tmp_path / "o"), "--colour", "vertex"], "have no image"),
    ]
    for argv, words in cases:
        before = listing(tmp_path)
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and words in err, (argv, err)
        assert listing(tmp_path) == before, argv  # nothing written, not even the output folder


# ------------------------------------------------------------------------------------------------ manifest


def test_manifest_cuts_a_torn_last_line_and_is_locked(tmp_path):
    path = tmp_path / MANIFEST
    good = [{"name": "a", "status": "ok", "outputs": {}}, {"name": "b", "status": "failed", "error": "x"}]
    torn = b'{"name": "c", "status": "o'
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in good) + b"not a record\n" + torn)
    m = Manifest(path)
    try:
        assert [r["name"] for r in m.records] == ["a", "b"]
        assert m.repaired_bytes == len(torn) and m.skipped_lines == 1
        assert path.read_bytes().endswith(b"not a record\n")
        if os.name == "posix":
            with pytest.raises(InputError, match="another batch"):
                Manifest(path)
        m.append({"name": "c", "status": "ok", "outputs": {}, "metrics": {"x": np.float32(0.5)}})
        assert m.last()["c"]["status"] == "ok"
    finally:
        m.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"name": "c", "status": "ok", "outputs": {}, "metrics": {"x": 0.5}}
    Manifest(path).close()  # the lock went with the first one


# ------------------------------------------------------------------------------------------------ runs


def test_rerun_skips_what_is_done_and_retries_failures_only_when_asked(tmp_path, fast_prior, capsys, monkeypatch):
    from consistent3dgen.pipeline import Pipeline

    teapot = copy_example("teapot", tmp_path / "in")
    bad = write_bad(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["batch", str(teapot), str(bad), "--out", str(out), "--generator", str(fast_prior), "--device", "cpu",
            "--quiet"]
    assert main(argv) == 1  # one item failed
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: 1 of 2 item(s) failed (bad)") and "--retry-failed" in err
    recs = records(out)
    assert [(r["name"], r["status"]) for r in recs] == [("teapot", "ok"), ("bad", "failed")]
    assert_outputs_complete(out, recs[0])
    assert recs[0]["metrics"]["silhouette_iou"] >= 0 and recs[0]["timings"]["attempt"] > 0
    assert BAD_ERROR in recs[1]["error"] and str(bad) in recs[1]["error"] and "\n" not in recs[1]["error"]
    assert recs[1]["outputs"] == {} and recs[1]["error_type"] == "InputError"
    assert sorted(os.listdir(out)) == [MANIFEST, "teapot.glb", "teapot.json"]

    loads = []
    real = Pipeline.from_pretrained.__func__
    monkeypatch.setattr(Pipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(1) or real(cls, *a, **k)))
    assert main(argv) == 1  # nothing to run: no model loaded, no line added
    assert loads == [] and len(records(out)) == 2
    assert "1 done earlier, 1 failed earlier" in capsys.readouterr().out

    assert main([*argv, "--retry-failed"]) == 1  # the failure is run again (and fails again), teapot is not
    recs = records(out)
    assert [(r["name"], r["status"]) for r in recs] == [("teapot", "ok"), ("bad", "failed"), ("bad", "failed")]
    assert loads == [1]

    assert main([*argv, "--format", "ply"]) == 1  # another format: other outputs, so not done yet
    recs = records(out)
    assert [(r["name"], r["status"]) for r in recs[3:]] == [("teapot", "ok")]
    assert recs[3]["outputs"]["mesh"] == "teapot.ply"
    assert_outputs_complete(out, recs[3])
    item = plan_items([teapot])[0]
    assert batch._is_done(recs[3], item, out, "ply")
    (out / "teapot.json").unlink()  # an output that went missing: the item is not done any more
    assert not batch._is_done(recs[3], item, out, "ply")


def test_batch_meshes_carry_the_input_images_colours_unless_colour_none(tmp_path, fast_prior):
    import trimesh

    teapot = copy_example("teapot", tmp_path / "in")
    image = np.asarray(Image.open(tmp_path / "in" / "teapot_rgba.png"))
    seen = image[image[..., 3] > 0, :3].astype(float)
    common = ["--generator", str(fast_prior), "--device", "cpu", "--quiet"]
    assert main(["batch", str(teapot), "--out", str(tmp_path / "vertex"), *common]) == 0  # the default: vertex
    assert main(["batch", str(teapot), "--out", str(tmp_path / "none"), "--colour", "none", *common]) == 0

    coloured = trimesh.load(tmp_path / "vertex" / "teapot.glb", force="mesh", process=False)
    assert coloured.visual.kind == "vertex"
    c = np.asarray(coloured.visual.vertex_colors)[:, :3].astype(float)
    assert len(c) == len(coloured.vertices) > 0
    assert (np.ptp(c, axis=1) > 20).mean() > 0.5  # not grey: the teapot image's warm browns
    assert np.sign(c[:, 0].mean() - c[:, 2].mean()) == np.sign(seen[:, 0].mean() - seen[:, 2].mean())
    assert np.abs(c.mean(0) - seen.mean(0)).max() < 40  # about the image's mean colour
    assert json.loads((tmp_path / "vertex" / "teapot.json").read_text())["colour"] == "vertex"

    plain = trimesh.load(tmp_path / "none" / "teapot.glb", force="mesh", process=False)
    assert plain.visual.kind is None  # no colours written
    assert len(plain.faces) == len(coloured.faces)  # the same mesh otherwise (same seed)
    assert json.loads((tmp_path / "none" / "teapot.json").read_text())["colour"] == "none"


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (Linux /proc), ours excluded."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if marker.encode() in (d / "environ").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and /proc are POSIX / Linux")
def test_sigkill_part_way_loses_nothing_and_the_rerun_finishes_only_the_rest(tmp_path, fast_prior):
    # two workers: when the first mesh is recorded, the third item has only just started (the kill is part-way)
    inputs = [copy_example("teapot", tmp_path / "in"), copy_example("spot", tmp_path / "in"),
              copy_example("teapot", tmp_path / "in", "pot"), write_bad(tmp_path / "in")]
    out = tmp_path / "out"
    marker = f"C3DG_BATCH_TEST={uuid.uuid4().hex}"
    env = {**os.environ, "C3DG_BATCH_TEST": marker.split("=")[1]}
    argv = [*CLI, "batch", *map(str, inputs), "--out", str(out), "--generator", str(fast_prior), "--workers", "2",
            "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        while proc.poll() is None:  # until the first finished mesh is recorded
            if (out / MANIFEST).exists() and any(r["status"] == "ok" for r in records(out)):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()  # still running: the kill is part-way
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    if sys.platform.startswith("linux"):  # the workers notice their driver is gone and exit
        for _ in range(600):
            if not _marked_pids(marker):
                break
            time.sleep(0.2)
        assert not _marked_pids(marker), "worker processes outlived their killed driver"

    names = {"teapot", "spot", "pot", "bad"}
    before = records(out)
    assert before and {r["name"] for r in before} <= names
    planned = {MANIFEST} | {f"{n}{e}" for n in names for e in (".glb", ".json")}
    for f in os.listdir(out):  # finished outputs, the manifest, or a killed writer's temporary file (swept later)
        assert f in planned or is_stale_temp(out / f), f
    for rec in before:
        if rec["status"] == "ok":
            assert_outputs_complete(out, rec)

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert rerun.returncode in (0, 1), rerun.stderr  # 1 when the bad item failed (now or before)
    after = records(out)
    new = after[len(before):]
    assert after[: len(before)] == before  # nothing recorded was changed or lost
    assert {r["name"] for r in new} == names - {r["name"] for r in before}  # only the rest, the failure not retried
    last = {r["name"]: r for r in after}
    assert [last[n]["status"] for n in ("teapot", "spot", "pot", "bad")] == ["ok", "ok", "ok", "failed"]
    for name in ("teapot", "spot", "pot"):
        assert_outputs_complete(out, last[name])
    assert sorted(os.listdir(out)) == sorted(planned - {"bad.glb", "bad.json"})  # no temporary file left
    assert rerun.returncode == 1 and "1 of 4 item(s) failed (bad)" in rerun.stderr


@pytest.mark.slow
def test_ray_local_cluster_same_manifest(tmp_path, fast_prior):
    pytest.importorskip("ray", reason="ray is not installed (pip install \".[ray]\"; the dev extra brings it)")
    inputs = [copy_example("teapot", tmp_path / "in"), write_bad(tmp_path / "in")]
    out = tmp_path / "out"
    argv = [*CLI, "batch", *map(str, inputs), "--out", str(out), "--generator", str(fast_prior), "--workers", "2",
            "--quiet", "--ray"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, err  # the bad item failed, as it does locally
    recs = records(out)
    last = {r["name"]: r for r in recs}
    assert len(recs) == 2 and last["teapot"]["status"] == "ok" and last["bad"]["status"] == "failed"
    assert_outputs_complete(out, last["teapot"])
    assert last["teapot"]["worker"]["pid"] != proc.pid  # ran in a Ray worker process
    error = last["bad"]["error"]
    assert BAD_ERROR in error and str(inputs[1]) in error and "c3dg-batch-" not in error  # the driver's paths
    assert sorted(os.listdir(out)) == [MANIFEST, "teapot.glb", "teapot.json"]
    again = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert again.returncode == 1 and len(records(out)) == 2  # done and failed items skipped: nothing ran
