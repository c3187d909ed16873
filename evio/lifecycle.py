"""Connection records and the connection lifecycle, as data.

Theory of operation
-------------------
A connection's life is a handful of states -- open, flushing before close,
closed, detached -- and the events that move it between them.  Writing the
transitions down as a table (`LIFECYCLE`) rather than leaving them implied
by flags scattered through the loop gives three things: the spec page's
table and diagram are drawn from it (``tools/lifecycle_doc.py``, checked by
the conformance suite), the loop's code can be read against it, and a new
transition has exactly one place to be declared.

The per-connection record, `Conn`, is a slotted dataclass: small, fast to
reach from the hot path, and explicit about every field the loop keeps.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from enum import Enum

from .pollers import READ
from .translate import Translator

__all__ = ["LIFECYCLE", "LIVE", "Conn", "State", "Transition"]


class State(Enum):
    """Where a connection is in its life (see `LIFECYCLE`)."""

    OPEN = "open"
    FLUSHING = "flushing"
    CLOSED = "closed"
    DETACHED = "detached"


LIVE = (State.OPEN, State.FLUSHING)


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the connection lifecycle table."""

    source: str
    event: str
    target: str
    effect: str


LIFECYCLE: tuple[Transition, ...] = (
    Transition("accepted", "opened returns", "open", "opened's output is written first"),
    Transition("dialing", "connected", "open", "opened(id, info) with addr_index -1"),
    Transition("dialing", "refused, unresolvable or timed out", "closed",
               "opened with info.closing, then closed(id, err)"),
    Transition("dialing", "SHUTDOWN", "closed",
               "opened with info.closing, then closed(id, ConnectionAbortedError)"),
    Transition("open", "bytes read", "open", "data(id, bytes); its output is appended"),
    Transition("open", "output above the high-water mark", "open", "reading pauses"),
    Transition("open", "output at or below the low-water mark", "open", "reading resumes"),
    Transition("open", "idle timeout", "closed", "pending output is dropped; err is TimeoutError"),
    Transition("open", "CLOSE returned", "flushing", "reading stops"),
    Transition("open", "peer's end of stream", "flushing", "reading stops"),
    Transition("open", "callback raised", "flushing", "reading stops; err is kept"),
    Transition("open", "read or write error", "closed", "pending output is dropped"),
    Transition("open", "prewrite or postwrite raised", "closed", "pending output is dropped"),
    Transition("flushing", "output drained", "closed", "closed(id, err)"),
    Transition("flushing", "write error", "closed", "closed(id, err)"),
    Transition("open", "DETACH returned", "detached",
               "detached(id, conn); pending output goes with conn"),
    Transition("flushing", "DETACH returned", "detached",
               "detached(id, conn); pending output goes with conn"),
    Transition("open", "SHUTDOWN", "closed", "one last non-blocking write"),
    Transition("flushing", "SHUTDOWN", "closed", "one last non-blocking write"),
)
"""The connection lifecycle as data: the spec page's table and diagram are
checked against it."""


@dataclass(slots=True, eq=False)
class Conn:
    """Per-connection state. ``mask`` is what the poller was last told."""

    id: int
    sock: socket.socket
    fd: int
    addr_index: int
    out: bytearray = field(default_factory=bytearray)
    state: State = State.OPEN
    mask: int = READ
    reuse: bool = False
    err: BaseException | None = None
    tr: Translator | None = None  # see evio.translate
    goodbye: bool = False  # the peer ended the translated protocol stream
    paused: bool = False  # reading paused: output above the high-water mark
    high: int = 65536
    low: int = 16384
    idle: float | None = None  # idle timeout, seconds
    last: float = 0.0  # time.monotonic() of the last byte read or written
