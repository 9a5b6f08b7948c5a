"""Parity cases run single-threaded: the models are tiny, and on a shared 2-core machine a second intra-op thread
made a case 10-20x slower (OpenMP contention), while adding nothing on an idle one."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
