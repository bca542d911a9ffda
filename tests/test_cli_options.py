"""Every generation option's bad values through the CLI: one `error:` line naming the option, exit 2, before
any input is read or model loaded (the input path below does not exist)."""

import pytest

from consistent3dgen.cli import main


@pytest.mark.parametrize(("argv", "name"), [
    (["--guidance", "nan"], "guidance"), (["--guidance", "-5"], "guidance"), (["--guidance", "inf"], "guidance"),
    (["--max-faces", "0"], "max_faces"), (["--max-faces", "-1"], "max_faces"),
    (["--seed", "99999999999999999999"], "seed"), (["--seed", "-1"], "seed"),
    (["--drop-percent", "100"], "drop_percent"), (["--conf-threshold", "nan"], "conf_threshold"),
])
def test_bad_option_values_are_one_line_before_the_work(tmp_path, capsys, argv, name):
    out = tmp_path / "mesh.glb"
    code = main(["generate", str(tmp_path / "never_read.npz"), "--out", str(out), "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err, err
    assert name in err and not out.exists()


@pytest.mark.parametrize("argv", [["--guidance", "high"], ["--seed", "1.5"], ["--variant", "bogus"]])
def test_values_argparse_refuses_are_one_line_too(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as stop:
        main(["generate", str(tmp_path / "x.npz"), "--out", str(tmp_path / "m.glb"), *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("consistent3dgen generate: error:") and argv[0] in err
