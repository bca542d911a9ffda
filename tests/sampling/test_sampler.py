"""Euler sampler: λ = 0 equals the unguided sampler step by step, seeding, CFG, SDEdit start, hooks."""

import pytest
import torch

from consistent3dgen.sampling import FlowMatchSchedule, FrontGuidance, StepInfo, initial_noise, sample
from consistent3dgen.sampling.guidance import GUIDANCE_VARIANTS


def toy_velocity(x, t, cond):
    """A nonlinear stand-in velocity that depends on x, t and cond (zeros = unconditional)."""
    c = 0.0 if cond is None else cond.mean()
    return torch.tanh(x * 0.7 + t.float() / 1000.0) - 0.3 * x + c


def _trajectory(guidance, noise, sched, **kw):
    steps = []
    out = sample(toy_velocity, noise, sched, torch.ones(3), guidance=guidance, progress=False,
                 callback=lambda s: steps.append(s.x_next.clone()), **kw)
    return out.x, steps


@pytest.mark.parametrize("variant", sorted(GUIDANCE_VARIANTS))
@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_zero_strength_equals_unguided_step_by_step(variant, layout):
    g = torch.Generator().manual_seed(1)
    shape = (64, 8) if layout == "sparse" else (1, 8, 4, 4, 4)
    noise = initial_noise(shape, g)
    mask = (torch.rand(64, generator=g) > 0.5).float() if layout == "sparse" else torch.ones(1, 1, 4, 4, 4)
    guidance = FrontGuidance(torch.randn(shape, generator=g), mask, 0.0, variant, noise="fresh")
    sched = FlowMatchSchedule.shifted(12, 6.0)
    ref, ref_steps = _trajectory(None, noise, sched)
    out, steps = _trajectory(guidance, noise, sched, generator=torch.Generator().manual_seed(5))
    assert len(steps) == len(ref_steps) == 12
    for a, b in zip(steps, ref_steps, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(out, ref)


def test_guidance_changes_only_masked_rows_first_step_and_same_seed_same_output():
    g = torch.Generator().manual_seed(2)
    noise, target = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    mask = torch.zeros(50)
    mask[:20] = 1
    sched = FlowMatchSchedule.shifted(1, 6.0)
    ref = sample(toy_velocity, noise, sched, None, progress=False).x
    out = sample(toy_velocity, noise, sched, None, guidance=FrontGuidance(target, mask, 3.0), progress=False).x
    assert torch.equal(out[20:], ref[20:]) and not torch.allclose(out[:20], ref[:20])
    for variant, lam in [("paper", 4.0), ("noised", 4.0), ("x0", 0.7), ("replace", 0.7)]:
        runs = [
            sample(toy_velocity, noise, FlowMatchSchedule.shifted(8, 6.0), torch.ones(2),
                   guidance=FrontGuidance(target, mask, lam, variant, noise="fresh"),
                   generator=torch.Generator().manual_seed(9), progress=False, resample=1, eta=0.5).x
            for _ in range(2)
        ]
        assert torch.equal(runs[0], runs[1])
    other = sample(toy_velocity, noise, FlowMatchSchedule.shifted(8, 6.0), None, eta=0.5,
                   generator=torch.Generator().manual_seed(10), progress=False).x
    again = sample(toy_velocity, noise, FlowMatchSchedule.shifted(8, 6.0), None, eta=0.5,
                   generator=torch.Generator().manual_seed(9), progress=False).x
    assert not torch.equal(other, again)


def test_row_mask_and_full_mask_agree():
    g = torch.Generator().manual_seed(3)
    noise, target = torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g)
    rows = (torch.rand(30, generator=g) > 0.4).float() * 0.8
    sched = FlowMatchSchedule.shifted(6, 6.0)
    for variant, lam in [("paper", 5.0), ("noised", 5.0), ("x0", 0.9), ("replace", 0.9)]:
        a = sample(toy_velocity, noise, sched, None, guidance=FrontGuidance(target, rows, lam, variant), progress=False)
        full = rows[:, None].expand(30, 4)
        b = sample(toy_velocity, noise, sched, None, guidance=FrontGuidance(target, full, lam, variant), progress=False)
        assert torch.allclose(a.x, b.x, atol=1e-6)


def test_cfg_only_with_a_negative_branch():
    calls = []

    def vel(x, t, cond):
        calls.append(cond.clone())
        return x * 0 + cond.sum()

    noise = torch.zeros(3, 2)
    sched = FlowMatchSchedule.shifted(1, 1.0)
    out = sample(vel, noise, sched, torch.full((2,), 0.5), uncond=torch.zeros(2), cfg_scale=7.0, progress=False).x
    # v = uncond + 7·(cond − uncond) = 0 + 7·1; x = 0 + (0 − 1)·7
    assert torch.allclose(out, torch.full((3, 2), -7.0))
    assert len(calls) == 2 and torch.equal(calls[0], torch.full((2,), 0.5)) and torch.equal(calls[1], torch.zeros(2))
    # no negative (an unconditional prior), or a scale of 1 (the result is cond's): one call per step
    for kwargs in ({"cfg_scale": 7.0}, {"uncond": torch.zeros(2), "cfg_scale": 1.0}):
        calls.clear()
        out = sample(vel, noise, sched, torch.full((2,), 0.5), progress=False, **kwargs).x
        assert len(calls) == 1 and torch.allclose(out, torch.full((3, 2), -1.0))


def test_sdedit_start_and_hooks():
    sched = FlowMatchSchedule.shifted(20, 6.0)
    start = sched.start_index(0.5)
    x0, noise = torch.full((5, 3), 2.0), torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    seen: list[StepInfo] = []
    out = sample(lambda x, t, c: torch.zeros_like(x), noise, sched, None, x_start=x0, start_index=start,
                 progress=False, callback=seen.append, return_trajectory=True)
    s0 = sched.sigmas[start]
    assert torch.allclose(out.trajectory[0], (1 - s0) * x0 + s0 * noise)
    assert len(seen) == len(sched) - start == len(out.x0_predictions) == len(out.trajectory) - 1
    assert seen[0].sigma == pytest.approx(float(s0)) and seen[-1].sigma_next == 0.0
    # an exact velocity (v = ε − x0 of this very path) brings the SDEdit start back to x0
    exact = sample(lambda x, t, c: noise - x0, noise, sched, None, x_start=x0, start_index=start, progress=False)
    assert torch.allclose(exact.x, x0, atol=1e-5)
    assert torch.allclose(out.x0_predictions[0], out.trajectory[0])


def test_bad_settings():
    t = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="unknown guidance variant"):
        FrontGuidance(t, torch.ones(4), 1.0, "nope")
    with pytest.raises(ValueError, match="fraction"):
        FrontGuidance(t, torch.ones(4), 2.0, "replace")
    with pytest.raises(ValueError, match="shape"):
        FrontGuidance(torch.zeros(3, 2), torch.ones(3), 1.0).prepare(t)
    with pytest.raises(ValueError, match="rows"):
        FrontGuidance(t, torch.ones(3), 1.0).prepare(t)
