"""Offline failure time: ``consistent3dgen generate photo.png`` with no VGGT weights and no hub, in a fresh process.

Three ways of having no network (as in ``tests/test_offline.py``): ``HF_HUB_OFFLINE=1`` (no probe: the baseline),
a hub endpoint that refuses connections, and one that accepts them and never answers (the probe's timeout,
``io.weights.HUB_PROBE_TIMEOUT``). Beside them, the start-up of a process that only imports torch. Prints the
median wall time of each over ``--runs`` runs, interleaved, and each one's excess over the baseline; the excess of
the silent endpoint should be about the probe timeout and no more (no retries with back-off). Usage:

    python benchmarks/bench_offline.py [--runs 5] [--image src/consistent3dgen/examples/spot_rgba.png]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "consistent3dgen" / "examples"


def timed(cmd: list[str], env: dict, cwd: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    return time.perf_counter() - t0, out.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image", type=Path, default=EXAMPLES / "spot_rgba.png")
    args = ap.parse_args()

    from consistent3dgen.io.weights import HUB_PROBE_TIMEOUT

    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    refused_url = f"http://127.0.0.1:{refusing.getsockname()[1]}"
    refusing.close()  # nothing listens there now
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"

    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_ENDPOINT", "HUGGINGFACE_HUB_CACHE")
    base_env = {k: v for k, v in os.environ.items() if k not in drop}
    generate = [sys.executable, "-m", "consistent3dgen", "generate", str(args.image.resolve()), "--out", "x.glb"]
    cases = {
        "import torch only": ([sys.executable, "-c", "import torch"], {}),
        "HF_HUB_OFFLINE=1 (baseline)": (generate, {"HF_HUB_OFFLINE": "1"}),
        "endpoint refuses": (generate, {"HF_ENDPOINT": refused_url}),
        "endpoint silent": (generate, {"HF_ENDPOINT": silent_url}),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for name, (cmd, extra) in cases.items():
                env = {**base_env, "HF_HOME": str(Path(tmp) / "hf_home"), **extra}
                wall, rc = timed(cmd, env, tmp)
                if cmd is generate and rc != 2:
                    raise SystemExit(f"{name}: exit code {rc}, expected 2")
                times[name].append(wall)
    silent.close()
    base = statistics.median(times["HF_HUB_OFFLINE=1 (baseline)"])
    print(f"probe timeout {HUB_PROBE_TIMEOUT:.1f} s; load average {os.getloadavg()[0]:.2f}; {args.runs} runs each")
    for name, walls in times.items():
        med = statistics.median(walls)
        print(f"{name:30s} median {med:5.2f} s  excess over baseline {med - base:+5.2f} s  ratio {med / base:4.2f}")


if __name__ == "__main__":
    main()
