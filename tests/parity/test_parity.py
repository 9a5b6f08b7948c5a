"""Every recipe with public official code trains as that code does: one test per ``case_*.py`` (see harness.py)."""
from __future__ import annotations

import pytest

from .harness import DataUnavailable, assert_parity, load_cases

# each case trains a shrunk recipe twice (robustrain and the official loop): ~90 s for all of them on 2 cores
pytestmark = pytest.mark.slow

CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_parity(case):
    try:
        result = case.run()
    except DataUnavailable as e:
        pytest.skip(str(e))
    assert_parity(result)
