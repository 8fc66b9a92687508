"""Fixtures of the `mmpt data build` tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from build_helpers import FIXTURES


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures/formats (the test fails loudly if it is missing)."""
    if not FIXTURES.is_dir():
        pytest.fail(f"fixture directory {FIXTURES} is missing")
    return FIXTURES
