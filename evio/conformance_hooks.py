"""The conformance hooks of this implementation: what a test must observe
inside the loop that the public API does not show.

Owns: the mapping from the conformance suite's hook names to the internals
that answer them.

Theory of operation
-------------------
The conformance suite (``spec_tests/``) reaches the implementation under
test only through its public names and, for the few things a test must see
from inside a loop, through this module's attributes (the hook names are
listed in ``spec_tests/features.py``). Another implementation may offer any
subset of them in its own ``conformance_hooks`` module; a hook it lacks
makes the tests that need it *not applicable*, never failed. Nothing here is
part of evio's API for applications.

This module owns nothing but the mapping from hook names to the internals
that answer them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from . import _dial as dial
from . import _lifecycle as lifecycle
from ._addresses import SUN_PATH_MAX
from ._pollers import _BACKENDS as _POLLER_CLASSES
from ._pollers import Poller, make_poller

__all__ = ["lifecycle", "make_poller", "poller_classes", "resolver", "sun_path_max"]

poller_classes: dict[str, Callable[[], Poller]] = dict(_POLLER_CLASSES)
"""Backend name -> its Poller class (a callable that makes one; ``select``'s
class has ``FD_SETSIZE``)."""

resolver: ModuleType = dial
"""The object whose ``resolve`` attribute dial calls to resolve host names."""

sun_path_max: int = SUN_PATH_MAX
"""The longest unix socket path this platform accepts, in bytes."""
