"""Every recipe with public official code trains as that code does: one test per ``case_*.py`` (see harness.py)."""
from __future__ import annotations

import pytest

from .harness import DataUnavailable, assert_parity, load_cases

CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_parity(case):
    try:
        result = case.run()
    except DataUnavailable as e:
        pytest.skip(str(e))
    assert_parity(result)
