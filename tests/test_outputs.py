"""Writing outputs, tried as a careless or hostile user would (issue 13, "the edges"), through the CLI.

Every output path is checked before any work: before the input is read (the tests give an input that does
not exist, so an error about it would mean the outputs were checked too late) and before any model loads.
A command's outputs appear together or not at all; SIGTERM cleans up like Ctrl-C; a SIGKILLed write leaves a
temporary file that the next write into that folder removes.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from consistent3dgen.cli import main
from consistent3dgen.demo import EXAMPLES_DIR
from consistent3dgen.io import atomic


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def commands(tmp_path, out=None, report=None, preview=None, folder=None):
    """(command, argv) for each command the paths apply to; the input never exists."""
    never = str(tmp_path / "never_read.npz")
    cmds = []
    if out or report or preview:
        argv = ["generate", never, "--out", str(out or tmp_path / "m.glb"), "--quiet"]
        argv += ["--report", str(report)] if report else []
        argv += ["--preview", str(preview)] if preview else []
        cmds.append(argv)
    if folder:
        cmds += [["foreground", never, "--out", str(folder)], ["demo", "--out", str(folder), "--quiet"],
                 ["eval", str(tmp_path / "never_read.obj"), "--out", str(folder)]]
    return cmds


def assert_refused(argv, tmp_path, capsys, *words):
    before = listing(tmp_path)
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert "never_read" not in err, err  # about the output, not the input
    for w in words:
        assert w in err, (argv, err)
    assert listing(tmp_path) == before, argv  # nothing written, not even a folder


@pytest.fixture
def scene(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "d.glb").mkdir()
    (tmp_path / "d.json").mkdir()
    (tmp_path / "d.png").mkdir()
    return tmp_path


def test_an_output_that_is_a_folder_is_refused_before_any_work(scene, capsys, no_work):
    t = scene
    for argv in commands(t, out=t / "d.glb") + commands(t, report=t / "d.json") + commands(t, preview=t / "d.png"):
        assert_refused(argv, t, capsys, "is a folder")
    for argv in commands(t, folder=t / "afile"):  # an output folder that is a file
        assert_refused(argv, t, capsys, "--out", "is a file")
    (t / "fg" / "foreground.json").mkdir(parents=True)  # a file the command writes is a folder
    assert_refused(commands(t, folder=t / "fg")[0], t, capsys, "foreground.json is a folder")


def test_an_output_in_a_read_only_folder_is_refused_before_any_work(scene, capsys, no_work):
    ro = scene / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: chmod does not make a folder read-only (see the parent-is-a-file test)")
        t = scene
        for argv in (commands(t, out=ro / "m.glb") + commands(t, report=ro / "r.json")
                     + commands(t, preview=ro / "p.png") + commands(t, folder=ro / "new")):
            assert_refused(argv, t, capsys, "permission denied")
    finally:
        ro.chmod(0o700)


def test_an_output_under_a_file_is_refused_before_any_work(scene, capsys, no_work):
    t, f = scene, scene / "afile"  # unwritable as root too: its "folder" is a file
    for argv in (commands(t, out=f / "m.glb") + commands(t, report=f / "r.json") + commands(t, preview=f / "p.png")
                 + commands(t, folder=f / "out")):
        assert_refused(argv, t, capsys, "is a file")


def test_an_unknown_extension_is_refused_before_any_work(scene, capsys, no_work):
    t = scene
    for argv, words in [(commands(t, out=t / "m.xyz")[0], ("--out", "'.xyz'", ".glb .obj .ply .stl")),
                        (commands(t, out=t / "mesh")[0], ("--out", "no extension")),
                        (commands(t, report=t / "r.txt")[0], ("--report", "'.txt'", ".json")),
                        (commands(t, preview=t / "p.bmp")[0], ("--preview", "'.bmp'", ".png .jpg .jpeg"))]:
        assert_refused(argv, t, capsys, *words)


def test_a_refused_output_is_refused_at_once(scene):
    """Checked before torch even loads (a fresh process): a bad --out costs a fraction of a second."""
    t = scene
    code = ("import sys; from consistent3dgen.cli import main; "
            "rcs = [main(a.split('|')) for a in sys.argv[1:]]; "
            "print(rcs, 'torch' in sys.modules)")
    argvs = [commands(t, out=t / "d.glb")[0]] + commands(t, folder=t / "afile")
    out = subprocess.run([sys.executable, "-c", code, *("|".join(a) for a in argvs)], capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == f"{[2] * len(argvs)} False", (out.stdout, out.stderr)
    assert len(out.stderr.strip().splitlines()) == len(argvs)


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--ablation-seeds", "0"], ["--size", "8"],
                                  ["--size", "100000"], ["--prior-samples", "-1"]])
def test_eval_numbers_are_refused_before_any_work(tmp_path, capsys, no_work, argv):
    assert_refused(["eval", str(tmp_path / "never_read.obj"), "--out", str(tmp_path / "e"), *argv], tmp_path,
                   capsys, argv[0])


def test_the_preview_format_follows_the_extension(tmp_path):
    from consistent3dgen.errors import InputError
    from consistent3dgen.preview import save_image

    img = np.full((8, 12, 3), 200, np.uint8)
    assert save_image(img, tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
    for name in ("p.jpg", "p.JPEG"):
        assert save_image(img, tmp_path / name).read_bytes().startswith(b"\xff\xd8\xff")
    with pytest.raises(InputError, match="unknown image format"):
        save_image(img, tmp_path / "p.bmp")
    assert listing(tmp_path) == ["p.JPEG", "p.jpg", "p.png"]


# ------------------------------------------------------------------------------------ partial sets


def failing_write(fail_on: str, errno: int = 28, message: str = "No space left on device"):
    """An atomic_write_text that fails (after writing a little) on the path ending in ``fail_on``."""
    real = atomic.atomic_write_text

    def write(path, text):
        if not str(path).endswith(fail_on):
            return real(path, text)
        with atomic.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write(text[:10])
            raise OSError(errno, message)

    return write


def teapot_args():
    ex = EXAMPLES_DIR
    return [str(ex / "teapot_depth.png"), "--intrinsics", str(ex / "teapot_intrinsics.txt"),
            "--image", str(ex / "teapot_rgba.png")]


def test_generate_leaves_no_mesh_when_the_report_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(atomic, "atomic_write_text", failing_write("run.json"))
    out = tmp_path / "out"
    out.mkdir()
    argv = ["generate", *teapot_args(), "--out", str(out / "m.glb"), "--report", str(out / "run.json"),
            "--preview", str(out / "p.png"), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write") and "run.json" in err and "No space left" in err
    assert "\n" not in err
    assert listing(out) == []  # neither the mesh nor the preview, and no temporary file


def test_foreground_writes_all_four_files_or_none(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(atomic, "atomic_write_text", failing_write("foreground.json", 13, "Permission denied"))
    assert main(["foreground", *teapot_args(), "--resolution", "128", "--out", str(tmp_path / "fg")]) == 1
    err = capsys.readouterr().err.strip()
    assert "foreground.json" in err and "Permission denied" in err and "\n" not in err
    assert listing(tmp_path) == []  # the folder it would have made is gone too


def test_demo_stopped_part_way_says_what_is_missing(tmp_path, capsys, monkeypatch):
    from consistent3dgen import preview

    calls = []
    real = preview.save_image

    def save(image, path):
        calls.append(path)
        if len(calls) == 2:
            with atomic.atomic_path(path):
                raise OSError(28, "No space left on device")
        return real(image, path)

    monkeypatch.setattr(preview, "save_image", save)
    monkeypatch.setattr(preview, "preview_panel", lambda v, f, pm, **kw: np.zeros((4, 4, 3), np.uint8))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--examples", "teapot", "spot", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No space left" in err
    assert "2 of 5 outputs written" in err and "missing: spot_guided.glb, spot_guided_preview.png, report.json" in err
    assert listing(out) == ["teapot_guided.glb", "teapot_guided_preview.png"]  # each run's pair is whole


# ------------------------------------------------------------------------------------ signals

SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from consistent3dgen import cli
    from consistent3dgen.io.atomic import atomic_path

    def slow_write(args):  # a write that takes long: SIGTERM / SIGKILL arrive in the middle of it
        with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
            f.write(b"\\0" * 2_000_000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        return 0

    cli.run_generate = slow_write
    sys.exit(cli.main(["generate", "never_read.npz", "--out", sys.argv[1]]))
""")


def start_writing(target):
    p = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing", p.communicate()
    return p


def temp_files(folder):
    return [p for p in folder.iterdir() if atomic.TMP_TAG in p.name]


def test_sigterm_during_a_write_cleans_up_like_ctrl_c(tmp_path):
    p = start_writing(tmp_path / "big.glb")
    assert len(temp_files(tmp_path)) == 1
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and err.strip() == "terminated"
    assert listing(tmp_path) == []


def test_a_temp_file_left_by_sigkill_is_removed_by_the_next_write(tmp_path):
    p = start_writing(tmp_path / "big.glb")
    p.kill()
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    (left,) = temp_files(tmp_path)
    assert left.name.startswith(f".big.glb.{atomic.TMP_TAG}-{p.pid}-") and left.stat().st_size == 2_000_000
    foreign = [tmp_path / ".x.tmp", tmp_path / ".big.glb.k2j3h4l5.glb"]  # not ours: never touched
    for f in foreign:
        f.write_bytes(b"someone else's")
    atomic.atomic_write_text(tmp_path / "next.json", "{}")
    assert not left.exists()
    assert listing(tmp_path) == sorted([".big.glb.k2j3h4l5.glb", ".x.tmp", "next.json"])
