"""The one Warp bootstrap: lazy (no Warp import until a Warp path runs), quiet, failures mean "use NumPy"."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from consistent3dgen.geometry import warp_runtime


def test_geometry_modules_do_not_import_warp_and_init_prints_nothing() -> None:
    code = (
        "import sys\n"
        "import consistent3dgen.geometry.marching_cubes, consistent3dgen.geometry.shell\n"
        "import consistent3dgen.geometry.render, consistent3dgen.geometry.mesh_ops, consistent3dgen.io.meshes\n"
        "print('warp' in sys.modules)\n"
        "from consistent3dgen.geometry.warp_runtime import warp_available\n"
        "print(warp_available())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    imported, available = out.stdout.split()
    assert imported == "False"
    if available == "True":  # Warp initialised: no banner, no CUDA-driver warning on a CPU-only machine
        assert "CUDA driver" not in out.stderr and "Warp" not in out.stdout + out.stderr


def test_only_the_cuda_driver_warning_is_filtered(capfd: pytest.CaptureFixture[str]) -> None:
    with warp_runtime._without_cuda_driver_warning():
        os.write(2, b"Warp CUDA warning: Could not find or load the NVIDIA CUDA driver. GPU execution ...\n")
        os.write(2, b"something else went wrong\n")
    err = capfd.readouterr().err
    assert "CUDA driver" not in err and "something else went wrong" in err


def test_a_failing_kernel_module_is_unavailable_and_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    real_kernels = warp_runtime.warp_kernels
    monkeypatch.setattr(warp_runtime, "_FAILED", {})
    monkeypatch.setattr(warp_runtime, "init_warp", lambda: None)
    calls = []

    def broken(name: str):  # noqa: ANN202
        calls.append(name)
        raise RuntimeError("no compiler")

    monkeypatch.setattr(warp_runtime, "warp_kernels", broken)
    assert warp_runtime.warp_available() is True  # Warp itself is fine
    assert warp_runtime.warp_available("render") is False
    assert warp_runtime.warp_available("render") is False
    assert calls == ["render"]  # the failure is remembered: no second attempt
    assert isinstance(warp_runtime.warp_error("render"), RuntimeError)
    assert warp_runtime.warp_error("shell") is None
    with pytest.raises(ValueError, match="unknown Warp kernel module"):
        warp_runtime.warp_available("dense")
    with pytest.raises(ValueError, match="unknown Warp kernel module"):
        real_kernels("dense")


def test_missing_warp_means_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warp_runtime, "_FAILED", {})

    def missing():  # noqa: ANN202
        raise ImportError("No module named 'warp'")

    monkeypatch.setattr(warp_runtime, "init_warp", missing)
    assert not warp_runtime.warp_available()
    assert not warp_runtime.warp_available("marching_cubes")
    assert isinstance(warp_runtime.warp_error("marching_cubes"), ImportError)


def test_default_threads_is_positive() -> None:
    assert warp_runtime.default_threads() >= 1
