"""One 518x518 image through a random-weight full-size VGGT on the CPU: seconds and peak memory.

Usage: python benchmarks/bench_vggt.py [--dtype fp32|bf16] [--threads N] [--repeats R] [--save DIR | --load DIR]

The weights are random (layout of facebook/VGGT-1B without the track head, which inference does not use), filled
in place after building on the meta device so that building costs no extra copy. ``--save DIR`` also writes them
as DIR/model.safetensors (about 4.8 GB) and stops; ``--load DIR`` instead loads that checkpoint through
``load_vggt`` (the real loading path: memory map, no second copy) before the forward pass. Prints one JSON line:
build/load seconds, forward seconds (median of the repeats), and the process's peak resident memory.
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
    ap.add_argument("--save", default=None, help="write the random fp32 weights to DIR/model.safetensors and exit")
    ap.add_argument("--load", default=None, help="load DIR (or a file / hub id) with load_vggt instead")
    args = ap.parse_args()

    from consistent3dgen.reconstruct.vggt import VGGT

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.load:
        from consistent3dgen.reconstruct.vggt.pretrained import load_vggt

        model = load_vggt(args.load, dtype=args.dtype)
    else:
        model = _random_model(VGGT, gen, args.dtype)
    build_s = time.perf_counter() - t0
    rss_after_build = peak_rss_gb()
    if args.save:
        from pathlib import Path

        from safetensors.torch import save_file

        target = Path(args.save) / "model.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target))
        print(json.dumps({"saved": str(target), "build_s": round(build_s, 2)}))
        return 0
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
        "weights": f"loaded from {args.load}" if args.load else "random in memory",
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": args.dtype,
        "threads": args.threads,
        "build_or_load_s": round(build_s, 2),
        "forward_s_median": round(statistics.median(times), 2),
        "forward_s_all": [round(t, 2) for t in times],
        "peak_rss_gb_after_build_or_load": round(rss_after_build, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "outputs_finite": finite,
        "depth_shape": list(out["depth"].shape),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))
    return 0


def _random_model(vggt_cls, gen: torch.Generator, dtype: str) -> torch.nn.Module:
    with torch.device("meta"):
        model = vggt_cls(enable_track=False)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "_norm.weight")) or p.ndim == 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    if dtype == "bf16":
        model.aggregator.to(torch.bfloat16)  # as load_vggt(dtype="bf16"): heads stay float32
    model.eval()
    return model


if __name__ == "__main__":
    sys.exit(main())
