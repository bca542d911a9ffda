"""Sigma sequences vs the diffusers fixture (bit-exact), SDEdit start index, and the fixture's Euler step."""

import json

import pytest
import torch

from consistent3dgen.sampling.sampler import euler_step
from consistent3dgen.sampling.schedule import FlowMatchSchedule, flow_match_sigmas


@pytest.fixture(scope="module")
def fixture(fixture_file) -> dict:
    return json.loads(fixture_file("direct3d_s2", "scheduler_flowmatch.json").read_text())


@pytest.mark.parametrize("case", ["dense_50", "sparse512_30", "sparse1024_15"])
def test_sigmas_bit_exact(fixture, case):
    c = fixture["cases"][case]
    sched = FlowMatchSchedule.shifted(c["num_inference_steps"], c["shift"])
    assert sched.sigmas.dtype == torch.float32
    assert torch.equal(sched.sigmas, torch.tensor(c["sigmas"], dtype=torch.float32))
    assert torch.equal(sched.timesteps, torch.tensor(c["timesteps"], dtype=torch.float32))
    fp16 = torch.tensor([float(t) for t in sched.timesteps], dtype=torch.float16).float()
    assert torch.equal(fp16, torch.tensor(c["timesteps_as_fp16_model_input"]))


def test_direct3d_s2_presets(fixture):
    for stage, case in [("dense", "dense_50"), ("sparse512", "sparse512_30"), ("sparse1024", "sparse1024_15")]:
        assert torch.equal(FlowMatchSchedule.direct3d_s2(stage).sigmas, torch.tensor(fixture["cases"][case]["sigmas"]))
    with pytest.raises(ValueError):
        FlowMatchSchedule.direct3d_s2("sparse2048")


def test_euler_step_example(fixture):
    ex = fixture["euler_step_example"]
    s = FlowMatchSchedule.shifted(50, 6.0).sigmas
    out = euler_step(torch.tensor(ex["sample"]), torch.tensor(ex["model_output"]), s[0], s[1])
    assert torch.equal(out, torch.tensor(ex["prev_sample"]))


def test_closed_form_and_monotone():
    for n, shift in [(1, 1.0), (7, 3.0), (50, 6.0)]:
        s = flow_match_sigmas(n, shift).double()
        assert len(s) == n + 1 and s[0] == 1.0 and s[-1] == 0.0
        assert torch.all(s[1:] < s[:-1])
        s_min = shift * 0.001 / (1 + (shift - 1) * 0.001)
        u = torch.linspace(1, s_min, n, dtype=torch.float64) if n > 1 else torch.ones(1, dtype=torch.float64)
        assert torch.allclose(s[:-1], shift * u / (1 + (shift - 1) * u), atol=1e-6)
    with pytest.raises(ValueError):
        flow_match_sigmas(0)


def test_start_index():
    sched = FlowMatchSchedule.shifted(50, 6.0)
    assert sched.start_index(1.0) == 0
    assert sched.start_index(0.0) == len(sched)
    i = sched.start_index(0.5)
    assert sched.sigmas[i] <= 0.5 < sched.sigmas[i - 1]
    with pytest.raises(ValueError):
        sched.start_index(1.5)


def test_matches_diffusers_if_installed():
    diffusers = pytest.importorskip("diffusers")
    for n, shift in [(50, 6.0), (30, 6.0), (15, 8.0), (4, 3.0)]:
        ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        ref.set_timesteps(n, device="cpu")
        ours = FlowMatchSchedule.shifted(n, shift)
        assert torch.equal(ours.sigmas, ref.sigmas) and torch.equal(ours.timesteps, ref.timesteps)
        x, v = torch.randn(2, 8, generator=torch.Generator().manual_seed(n)), torch.randn(2, 8)
        for i in range(n):
            expected = ref.step(v, ref.timesteps[i], x).prev_sample
            assert torch.equal(euler_step(x, v, ours.sigmas[i], ours.sigmas[i + 1]), expected)
            x = expected
