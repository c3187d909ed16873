"""The implementation under test, and the optional hooks it provides.

Theory of operation
-------------------
Tests never ``import evio``: they take the implementation under test from
here, ``from implementation import evio``, and use only its public names.
Which package that is comes from the ``EVIO_IMPL`` environment variable,
which the conformance plugin (``conftest.py``: ``--evio-impl`` /
``--evio-target``) sets before any test module is imported; without it the
reference implementation, this project's ``evio``, is under test. Child
processes inherit the variable, and ``conformance/childpath/sitecustomize.py``
makes their ``import evio`` load the same package.

A few things a test must observe *inside* a loop are no part of the public
API (the connection state machine, a way to make a bare poller backend, the
resolver dial uses). An implementation may offer them as attributes of a
module ``PACKAGE.conformance_hooks`` (the reference's is
``evio/conformance_hooks.py``; the names are listed in
``spec_tests/features.py``). `hook` returns one or marks the test *not
applicable* -- never failed -- when the implementation does not provide it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

REFERENCE_NAME = "evio"
NAME = os.environ.get("EVIO_IMPL") or REFERENCE_NAME
"""The import name of the package under test."""

IS_REFERENCE = NAME == REFERENCE_NAME
"""True when this project's own evio is under test."""

NOT_APPLICABLE = "not applicable: "
"""The prefix of a skip reason the results writer counts as not applicable."""

# The package under test. mypy checks the tests against the reference's
# public API (what any implementation must offer); at run time it is
# whichever implementation was chosen.
if TYPE_CHECKING:
    import evio as evio
else:
    evio = importlib.import_module(NAME)


def _load_hooks() -> ModuleType | None:
    try:
        return importlib.import_module(f"{NAME}.conformance_hooks")
    except ModuleNotFoundError as e:
        if e.name in (f"{NAME}.conformance_hooks", NAME):
            return None
        raise


hooks = _load_hooks()


def has_hook(name: str) -> bool:
    """Whether the implementation provides the hook ``name``."""
    return hooks is not None and hasattr(hooks, name)


def optional_hook(name: str) -> Any:
    """The hook ``name``, or None when the implementation lacks it."""
    return getattr(hooks, name, None) if hooks is not None else None


def hook(name: str) -> Any:
    """The hook ``name``; the calling test is not applicable without it.

    Raises:
        pytest.skip.Exception: the implementation lacks the hook.
    """
    found = optional_hook(name)
    if found is None:
        pytest.skip(f"{NOT_APPLICABLE}hook:{name}")
    return found


def not_applicable(feature: str) -> None:
    """Mark the calling test not applicable for want of ``feature``."""
    pytest.skip(f"{NOT_APPLICABLE}{feature}")
