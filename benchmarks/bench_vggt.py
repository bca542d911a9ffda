"""One 518x518 image through a random-weight full-size VGGT on the CPU: seconds and peak memory.

Usage: python benchmarks/bench_vggt.py [--dtype fp32|bf16] [--threads N] [--repeats R]

The weights are random (layout of facebook/VGGT-1B without the track head, which inference does not use), filled
in place after building on the meta device so that building costs no extra copy. Prints one JSON line:
build seconds, forward seconds (median of the repeats), and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import torch


def peak_rss_gb() -> float:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from consistent3dgen.reconstruct.vggt import VGGT

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = VGGT(enable_track=False)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "_norm.weight")) or p.ndim == 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    if args.dtype == "bf16":
        model.aggregator.to(torch.bfloat16)  # as load_vggt(dtype="bf16"): heads stay float32
    model.eval()
    build_s = time.perf_counter() - t0
    rss_after_build = peak_rss_gb()

    image = torch.rand(1, 3, 518, 518, generator=gen)
    times = []
    for _ in range(args.repeats):
        t1 = time.perf_counter()
        with torch.no_grad():
            out = model(image)
        times.append(time.perf_counter() - t1)
    finite = all(torch.isfinite(out[k]).all().item() for k in ("depth", "world_points", "pose_enc"))
    result = {
        "benchmark": "vggt_cpu_one_image_518",
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": args.dtype,
        "threads": args.threads,
        "build_s": round(build_s, 2),
        "forward_s_median": round(statistics.median(times), 2),
        "forward_s_all": [round(t, 2) for t in times],
        "peak_rss_gb_after_build": round(rss_after_build, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "outputs_finite": finite,
        "depth_shape": list(out["depth"].shape),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
