"""Samplers, separate from the models: shifted flow-matching schedules, Euler + CFG, front-partial guidance."""

from .guidance import GUIDANCE_VARIANTS, FrontGuidance, register_guidance
from .sampler import SampleResult, StepInfo, initial_noise, sample
from .schedule import DIRECT3D_S2_SCHEDULES, FlowMatchSchedule, flow_match_sigmas

__all__ = [
    "DIRECT3D_S2_SCHEDULES",
    "GUIDANCE_VARIANTS",
    "FlowMatchSchedule",
    "FrontGuidance",
    "SampleResult",
    "StepInfo",
    "flow_match_sigmas",
    "initial_noise",
    "register_guidance",
    "sample",
]
