"""Guided vs unguided sampler step at 100 k tokens with a cheap stand-in model; prints the time ratio.

The stand-in is a per-token MLP C → 1024 → C (GELU), i.e. one projection pair at the sparse DiT's width
(1024): one DiT block alone has several of those plus attention, and the DiT has dozens of blocks, so the
stand-in is far cheaper than the real model and the measured ratio bounds the real overhead from above.
15 steps = the shortest official schedule (1024 stage), which amortises the one-off mask preparation least.
Guided and unguided runs alternate within one process; medians over repeats.
Run: ``python benchmarks/bench_guidance_overhead.py [--tokens 100000 --channels 16 --variant paper]``.
Target: ratio ≤ 1.02.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from consistent3dgen.sampling import FlowMatchSchedule, FrontGuidance, sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024, help="stand-in MLP width")
    ap.add_argument("--masked", type=float, default=0.5, help="fraction of tokens with a target")
    ap.add_argument("--variant", default="paper")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    n, c = args.tokens, args.channels
    hidden = args.hidden
    model = torch.nn.Sequential(torch.nn.Linear(c, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, c)).to(dev)
    cond_proj = torch.randn(8, c, device=dev, generator=g)

    def velocity(x, t, cond):
        return model(x) + cond @ cond_proj / 8

    noise = torch.randn(n, c, device=dev, generator=g)
    target = torch.randn(n, c, device=dev, generator=g)
    mask = (torch.rand(n, device=dev, generator=g) < args.masked).float()
    strength = 5.0 if args.variant in ("paper", "noised") else 1.0
    guidance = FrontGuidance(target, mask, strength, args.variant)
    sched = FlowMatchSchedule.shifted(args.steps, 6.0)
    cond = torch.randn(8, device=dev, generator=g)

    def timed(gd):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            sample(velocity, noise, sched, cond, uncond=torch.zeros_like(cond), cfg_scale=7.0, guidance=gd,
                   progress=False)  # with CFG, as Direct3D-S2 runs
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    timed(None), timed(guidance)  # warm-up
    plain, guided = [], []
    for _ in range(args.repeats):
        plain.append(timed(None))
        guided.append(timed(guidance))
    # the guidance's own per-step work, timed alone (robust to the noise of a shared CPU)
    prepared = guidance.prepare(noise)
    x_next = noise + 0.01 * target
    apply_times = []
    for _ in range(args.repeats * 3):
        t0 = time.perf_counter()
        prepared.apply_(noise, target, x_next, 0.5, 0.45)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        apply_times.append(time.perf_counter() - t0)
    a = statistics.median(apply_times)
    p, q = statistics.median(plain), statistics.median(guided)
    print(f"device={dev} tokens={n} channels={c} hidden={hidden} masked={args.masked} variant={args.variant} "
          f"threads={torch.get_num_threads()}")
    print(f"unguided step (2 model calls, CFG) {p * 1e3:.2f} ms   guided {q * 1e3:.2f} ms   ratio {q / p:.4f}")
    print(f"guidance apply alone {a * 1e3:.2f} ms/step   (1 + apply/unguided) {1 + a / p:.4f}")


if __name__ == "__main__":
    main()
