"""How each front-guidance variant behaves on a Gaussian with an exact velocity (numbers for docs/guidance.md).

For every configuration: max |x_m − x_fg| over samples (masked coordinates), and the max error of the
unmasked coordinates' sample mean / covariance against the exact conditional N(μ_u|m, Σ_u|m).
Run: ``python benchmarks/bench_guidance_gaussian.py [--samples 4000]``.
"""

from __future__ import annotations

import argparse

import torch

from consistent3dgen.sampling import FlowMatchSchedule, FrontGuidance, sample
from consistent3dgen.sampling.toy import example_gaussian

CONFIGS = [
    # (variant, strength, steps, shift, noise, resample, eta)
    ("none", 0.0, 50, 6.0, "initial", 0, 0.0),
    ("paper", 1.0, 50, 6.0, "initial", 0, 0.0),
    ("paper", 5.0, 50, 6.0, "initial", 0, 0.0),
    ("paper", 10.0, 50, 6.0, "initial", 0, 0.0),
    ("paper", 18.0, 50, 6.0, "initial", 0, 0.0),
    ("noised", 5.0, 50, 6.0, "initial", 0, 0.0),
    ("noised", 18.0, 50, 6.0, "initial", 0, 0.0),
    ("noised", 18.0, 50, 6.0, "fresh", 0, 0.0),
    ("x0", 0.5, 50, 6.0, "initial", 0, 0.0),
    ("x0", 1.0, 50, 6.0, "initial", 0, 0.0),
    ("replace", 1.0, 50, 6.0, "initial", 0, 0.0),
    ("replace", 1.0, 50, 6.0, "fresh", 0, 0.0),
    ("replace", 1.0, 100, 1.0, "fresh", 0, 1.0),
    ("replace", 1.0, 100, 1.0, "fresh", 5, 1.0),
    ("replace", 1.0, 100, 1.0, "fresh", 20, 1.0),
    ("replace", 1.0, 100, 1.0, "fresh", 20, 0.0),
    ("x0", 1.0, 100, 1.0, "initial", 20, 1.0),
]


def run(variant, strength, steps, shift, noise, resample, eta, n, seed=0):
    flow, mask, target = example_gaussian()
    cond_mean, cond_cov = flow.conditional(mask, target[mask])
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(4, n, generator=g, dtype=torch.float64)
    guidance = None
    if variant != "none":
        guidance = FrontGuidance(target[:, None].expand(4, n).clone(), mask.double(), strength, variant, noise=noise)
    x = sample(
        flow.velocity, eps, FlowMatchSchedule.shifted(steps, shift), None, guidance=guidance, generator=g,
        progress=False, resample=resample, eta=eta,
    ).x
    masked_err = (x[mask] - target[mask][:, None]).abs().max().item()
    xu = x[~mask]
    return masked_err, (xu.mean(1) - cond_mean).abs().max().item(), (torch.cov(xu) - cond_cov).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=4000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| variant | λ | steps | shift | ε | resample | eta | max abs(x_m − x_fg) | mean err | cov err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cfg in CONFIGS:
        m, me, ce = run(*cfg, n=args.samples)
        print("| " + " | ".join(str(c) for c in cfg) + f" | {m:.3g} | {me:.3f} | {ce:.3f} |", flush=True)


if __name__ == "__main__":
    main()
