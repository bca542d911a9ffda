"""Guidance on a Gaussian whose flow velocity is exact: masked coords reach the target; the unmasked coords
follow the exact conditional N(μ_u|m, Σ_u|m) for `replace` with RePaint resampling (stochastic), and
measurably do not for the deterministic variants. Numbers per variant: docs/guidance.md."""

import pytest
import torch

from consistent3dgen.sampling import FlowMatchSchedule, FrontGuidance, sample
from consistent3dgen.sampling.toy import GaussianFlow, example_gaussian

N_SAMPLES = 4000


def run(variant, strength, steps=50, shift=6.0, noise="initial", resample=0, eta=0.0, seed=0):
    flow, mask, target = example_gaussian()
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(4, N_SAMPLES, generator=g, dtype=torch.float64)
    guidance = None
    if variant is not None:
        guidance = FrontGuidance(target[:, None].expand(4, N_SAMPLES).clone(), mask.double(), strength, variant,
                                 noise=noise)
    x = sample(flow.velocity, eps, FlowMatchSchedule.shifted(steps, shift), None, guidance=guidance, generator=g,
               progress=False, resample=resample, eta=eta).x
    cond_mean, cond_cov = flow.conditional(mask, target[mask])
    xu = x[~mask]
    return ((x[mask] - target[mask][:, None]).abs().max().item(), (xu.mean(1) - cond_mean).abs().max().item(),
            (torch.cov(xu) - cond_cov).abs().max().item())


def test_exact_velocity_samples_the_prior():
    flow, _, _ = example_gaussian()
    g = torch.Generator().manual_seed(0)
    x = sample(flow.velocity, torch.randn(4, N_SAMPLES, generator=g, dtype=torch.float64),
               FlowMatchSchedule.shifted(100, 3.0), None, progress=False).x
    assert (x.mean(1) - flow.mean).abs().max() < 0.06  # sampling error of the mean ≈ 0.016
    assert (torch.cov(x) - flow.cov).abs().max() < 0.06


def test_conditional_closed_form():
    flow = GaussianFlow(torch.zeros(2, dtype=torch.float64), torch.tensor([[1.0, 0.8], [0.8, 1.0]]).double())
    mean, cov = flow.conditional(torch.tensor([True, False]), torch.tensor([1.0]).double())
    assert torch.allclose(mean, torch.tensor([0.8]).double()) and torch.allclose(cov, torch.tensor([[0.36]]).double())


@pytest.mark.parametrize("variant", ["x0", "replace"])
def test_full_strength_lands_masked_coords_on_target(variant):
    masked_err, _, _ = run(variant, 1.0)
    assert masked_err < 1e-5


def test_paper_masked_error_shrinks_like_one_over_lambda():
    errs = [run("paper", lam)[0] for lam in (1.0, 5.0, 18.0)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.2 and errs[0] > 1.0  # λ=1 barely pulls; λ=18 (λ·max|dt| ≈ 1.9, near the stability edge)


def test_replace_with_resampling_follows_exact_conditional():
    masked_err, mean_err, cov_err = run("replace", 1.0, steps=100, shift=1.0, noise="fresh", resample=20, eta=1.0)
    assert masked_err < 1e-5
    assert mean_err < 0.05 and cov_err < 0.08


def test_deterministic_replace_is_biased():
    # the power of the test above: without resampling the unmasked mean is far from the exact conditional
    _, mean_err, _ = run("replace", 1.0)
    _, mean_err_unguided, _ = run(None, 0.0)
    assert 0.2 < mean_err < mean_err_unguided
