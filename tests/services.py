"""Tests that need a service outside Python (PostgreSQL, Chromium): skipped where it is missing, unless CI
requires it (``PRUNESCOPE_REQUIRE_SERVICES=1``, set by ``.ci/run``), where a missing service fails the test."""

from __future__ import annotations

import os

import pytest

REQUIRED = os.environ.get("PRUNESCOPE_REQUIRE_SERVICES") == "1"


def missing(reason: str) -> None:
    """Skip the running test for ``reason``, or fail it where services are required."""
    if REQUIRED:
        pytest.fail(f"{reason} (PRUNESCOPE_REQUIRE_SERVICES=1: CI must install it)", pytrace=False)
    pytest.skip(reason)
