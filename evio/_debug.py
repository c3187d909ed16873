"""Debug mode: name the callback that held the loop up.

Owns: debug mode: what it times, what it checks, and what it reports.

Theory of operation
-------------------
One loop serves every connection from one thread, so a callback that
blocks -- a synchronous HTTP call, a slow query, ``time.sleep`` -- stalls
every other connection for as long as it runs.  Nothing in the loop can
prevent that; it can only *say so*, as asyncio's debug mode does for
callbacks slower than 100 ms.

`instrument` returns a copy of the `evio.Events` record in which each
callback is wrapped: the wrapper reads the clock before and after the
call and, when the call took longer than the threshold, logs a warning on
the ``evio`` logger that names the callback (module and qualified name),
the connection id it was called for, and how long everything else waited
(rule EV-25).  The translator's ``should`` and ``factory`` are timed too.

Debug mode also checks the preconditions of the loop's hot-path
shortcuts, which the normal run takes on trust for speed (rule EV-26):
`check_shortcuts` puts a check in front of each stream connection's
readiness handler that a connection marked for the inline read path
(`evio._streams.Streams.ready`) really is open, plain and interested in
reading alone.  A broken precondition is an evio bug: it is logged as an
error naming the connection, and that connection takes the general path.

Off -- the default -- costs nothing: `evio.serve` then uses the record it
was given, so no wrapper exists and the hot path is unchanged.  It is
switched on by ``serve(..., slow_callback=seconds)`` or, without touching
the code, by the environment variable ``EVIO_DEBUG`` (``1`` for 0.1 s, or
a number of seconds).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ._events import Events
from ._lifecycle import Conn, State
from ._pollers import READ

__all__ = ["DEFAULT_THRESHOLD", "check_shortcuts", "instrument", "slow_threshold"]

log = logging.getLogger("evio")

DEFAULT_THRESHOLD = 0.1
"""Seconds: what ``EVIO_DEBUG=1`` means (asyncio's ``slow_callback_duration``)."""

_WITH_ID = ("opened", "closed", "detached", "data", "prewrite", "postwrite", "eof", "drained")
_WITHOUT_ID = ("serving", "tick")
# Any: a wrapper passes on whatever a user's callback takes and returns.
F = TypeVar("F", bound=Callable[..., Any])


def slow_threshold(option: float | None) -> float | None:
    """The threshold in force: ``option`` if given, else ``EVIO_DEBUG``'s.

    Raises:
        ValueError: ``option`` or ``EVIO_DEBUG`` is not a positive finite
            number of seconds (``EVIO_DEBUG`` may also be ``1``/``true``,
            meaning `DEFAULT_THRESHOLD`, or ``0``/``false``/empty: off).
    """
    if option is None:
        text = os.environ.get("EVIO_DEBUG", "").strip().lower()
        if text in ("", "0", "false", "no", "off"):
            return None
        if text in ("1", "true", "yes", "on"):
            return DEFAULT_THRESHOLD
        try:
            value: object = float(text)
        except ValueError:
            raise ValueError(f"EVIO_DEBUG must be 1 or a number of seconds, not {text!r}") from None
        where = "EVIO_DEBUG"
    else:
        value, where = option, "slow_callback"
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value < float("inf")):
        raise ValueError(f"{where} must be a positive number of seconds, not {value!r}")
    return float(value)


def instrument(events: Events, threshold: float) -> Events:
    """A copy of ``events`` whose callbacks report calls slower than ``threshold`` s."""
    changes: dict[str, Any] = {}
    for name in _WITH_ID + _WITHOUT_ID:
        fn = getattr(events, name)
        if fn is not None:
            changes[name] = _timed(fn, name, threshold, name in _WITH_ID)
    if events.translation is not None:
        should, factory, timeout = events.translation
        changes["translation"] = (_timed(should, "translate's should", threshold, True),
                                  _timed(factory, "translate's factory", threshold, True),
                                  timeout)
    return dataclasses.replace(events, **changes)


def _timed(fn: F, role: str, threshold: float, with_id: bool) -> F:
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    clock = time.perf_counter

    @functools.wraps(fn)
    def timed(*args: Any) -> Any:
        start = clock()
        try:
            return fn(*args)
        finally:
            took = clock() - start
            if took > threshold:
                whom = f" for connection {args[0]}" if with_id and args else ""
                log.warning("slow callback: %s (%s)%s took %.3f s; every other connection "
                            "waited (threshold %.3f s)", name, role, whom, took, threshold)

    return timed  # type: ignore[return-value]


# EV-26
def check_shortcuts(ready: Callable[[Conn, int], None]) -> Callable[[Conn, int], None]:
    """``ready`` behind a check of the inline read path's precondition."""

    def checked(c: Conn, mask: int) -> None:
        if c.fast and not (c.state is State.OPEN and c.interest == READ and c.plain):
            log.error("evio bug: connection %d was marked for the inline read path while "
                      "%s, interest %d, plain %s; it takes the general path",
                      c.id, c.state.value, c.interest, c.plain)
            c.fast = False
        ready(c, mask)

    return checked
