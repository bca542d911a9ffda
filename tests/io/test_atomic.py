"""io.atomic: output sets (all or none), stale temporary files (ours and only ours), output-path checks."""

import os
import subprocess
import sys

import pytest

from consistent3dgen.errors import InputError
from consistent3dgen.io import atomic
from consistent3dgen.io.atomic import (
    OutputError,
    atomic_path,
    atomic_write_text,
    check_output_file,
    check_output_folder,
    output_set,
    remove_stale_temps,
)


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_an_output_set_appears_together_on_success(tmp_path):
    with output_set() as outs:
        atomic_write_text(tmp_path / "a.json", "1")
        atomic_write_text(tmp_path / "sub" / "b.json", "2")
        # staged: only temporary files so far, none under the targets' names
        assert not (tmp_path / "a.json").exists() and not (tmp_path / "sub" / "b.json").exists()
        assert outs.targets == [tmp_path / "a.json", tmp_path / "sub" / "b.json"]
    assert listing(tmp_path) == ["a.json", "sub", "sub/b.json"]


def test_a_failed_output_set_leaves_nothing(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError), output_set():
        atomic_write_text(tmp_path / "a.json", "1")
        atomic_write_text(tmp_path / "new" / "deeper" / "b.json", "2")
        with output_set():  # a nested set joins the outer one
            atomic_write_text(tmp_path / "c.json", "3")
        raise RuntimeError("the report failed")
    assert listing(tmp_path) == ["keep.txt"]  # no outputs, no temporary files, no folders it created


def test_a_write_that_fails_in_a_set_names_its_target(tmp_path):
    with pytest.raises(OutputError, match="cannot write .*b.json: No space left"), output_set():
        atomic_write_text(tmp_path / "a.json", "1")
        with atomic_path(tmp_path / "b.json"):
            raise OSError(28, "No space left on device")
    assert listing(tmp_path) == []


def test_a_failed_rename_takes_the_set_back(tmp_path):
    with pytest.raises(OutputError, match="none of the outputs were written"), output_set():
        atomic_write_text(tmp_path / "a.json", "1")
        atomic_write_text(tmp_path / "b.json", "2")
        (tmp_path / "b.json").mkdir()  # someone made a folder there meanwhile
    assert listing(tmp_path) == ["b.json"]


def test_temporary_files_are_named_as_ours(tmp_path):
    with atomic_path(tmp_path / "mesh.glb") as tmp:
        name = os.path.basename(tmp)
        assert name.startswith(f".mesh.glb.{atomic.TMP_TAG}-{os.getpid()}-") and name.endswith(".glb")
        assert atomic._TMP_RE.match(name)


def test_stale_temporary_files_ours_only(tmp_path):
    host = atomic._HOST
    other_host = "000000" if host != "000000" else "111111"
    stale = tmp_path / f".m.glb.{atomic.TMP_TAG}-{dead_pid()}-{host}-abcd1234.glb"
    alive = tmp_path / f".m.glb.{atomic.TMP_TAG}-{os.getpid()}-{host}-abcd1234.glb"  # ours, being written
    remote = tmp_path / f".m.glb.{atomic.TMP_TAG}-{dead_pid()}-{other_host}-abcd1234.glb"  # another machine's
    foreign = [tmp_path / ".x.tmp", tmp_path / ".m.glb.abcd1234.glb", tmp_path / "notes.txt"]
    for p in [stale, alive, remote, *foreign]:
        p.write_bytes(b"x")
    folder_like = tmp_path / f".d.{atomic.TMP_TAG}-{dead_pid()}-{host}-abcd1234"
    folder_like.mkdir()
    assert remove_stale_temps(tmp_path) == [stale]
    assert all(p.exists() for p in [alive, remote, folder_like, *foreign])


def test_output_path_checks(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "d.glb").mkdir()
    for path, message in [(tmp_path / "d.glb", "is a folder"), (tmp_path / "m.xyz", "unknown file type '.xyz'"),
                          (tmp_path / "afile" / "m.glb", "it is a file"),
                          (tmp_path / "afile" / "new" / "m.glb", "cannot create folder")]:
        with pytest.raises(InputError, match=message):
            check_output_file(path, (".glb",))
    assert check_output_file(tmp_path / "new" / "deeper" / "m.GLB", (".glb",)).name == "m.GLB"
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "afile")
    with pytest.raises(InputError, match="report.json is a folder"):
        (tmp_path / "out" / "report.json").mkdir(parents=True)
        check_output_folder(tmp_path / "out", ["report.json"])
    assert listing(tmp_path) == ["afile", "d.glb", "out", "out/report.json"]  # checks create nothing


def test_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    """What a read-only folder gives a non-root user (as root, chmod cannot make one: os.access stands in)."""
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match=r"--report: cannot write into .*: permission denied"):
        check_output_file(tmp_path / "r.json", (".json",), "--report")
    with pytest.raises(InputError, match=r"--out: cannot create folder .*new in .*: permission denied"):
        check_output_folder(tmp_path / "new")
