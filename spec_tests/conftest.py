"""Fixtures shared by the conformance suite: every poller, every family."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import FAMILIES, POLLERS, listen_address

import evio

# The wire profiles' options and markers (docs/spec/wire-targets.md).
pytest_plugins = ["wire"]


@pytest.fixture(params=POLLERS)
def poller(request: pytest.FixtureRequest) -> str:
    """Each poller backend this machine has."""
    return str(request.param)


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    """tcp on 127.0.0.1, tcp on ::1, and a unix socket."""
    return str(request.param)


@pytest.fixture
def addr(family: str, tmp_path: Path) -> str:
    """An ephemeral listen address of the family under test."""
    return listen_address(family, tmp_path)


def pytest_report_header() -> str:
    return f"evio pollers under test: {', '.join(evio.available_pollers())}"
