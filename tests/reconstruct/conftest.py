"""Run these small-tensor tests single-threaded: on a shared 2-core machine, 2 intra-op threads contending with
other processes made tiny convolutions ~50x slower. Results differ from 2 threads by < 1e-6 (fixture README)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
