"""Connection records and the connection lifecycle, as data that drives the code.

Owns: a connection's states and the table of their transitions; `move` is
the only way a state changes.

Theory of operation
-------------------
A connection's life is a handful of states -- dialing, opening, open,
writing only (the peer ended its stream and the application chose to go on
writing), reading only (our end of stream is sent), flushing before close,
closed, detached -- and the events that move it between them.  Writing the
transitions down as a table (`LIFECYCLE`) rather than leaving them implied
by flags scattered through the loop gives
three things:

* the spec page's table and diagram are drawn from it
  (``tools/lifecycle_doc.py``, checked by the conformance suite);
* every change of state goes through `move`, which looks the change up in
  the table and refuses one that is not there -- so the table cannot drift
  from the code, and a new transition has exactly one place to be declared;
* `observe` lets the conformance suite watch every transition the loop
  makes and check that together they cover the table.

A row whose source and target are the same (reading pauses, reading
resumes) is a change of behaviour, not of state; the loop calls `move` for
it too, except for "bytes read", which happens on every read and is shown
by the ``data`` call itself.

The per-connection record, `Conn`, is a slotted dataclass: small, fast to
reach from the hot path, and explicit about every field the loop keeps.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, cast

from ._pollers import READ
from ._timers import Timer
from ._translate import Translator

__all__ = ["ABORT_ROWS", "FLOW_ROWS", "LIFECYCLE", "LIVE", "READABLE", "READ_SIZE", "SMALL_READ",
           "TALKING", "WRITABLE", "Conn", "LifecycleError", "On", "State", "Transition", "move",
           "observe"]


class State(Enum):
    """Where a connection is in its life (see `LIFECYCLE`)."""

    DIALING = "dialing"
    OPENING = "opening"
    OPEN = "open"
    WRITE_ONLY = "writing only"
    READ_ONLY = "reading only"
    FLUSHING = "flushing"
    CLOSED = "closed"
    DETACHED = "detached"


class On(Enum):
    """What happened to a connection: the events of `LIFECYCLE`."""

    CONNECTED = "connected"
    DIAL_FAILED = "refused, unresolvable or timed out"
    OPENED = "opened called"
    SETUP_FAILED = "translator set-up failed"
    BYTES_READ = "bytes read"
    ABOVE_HIGH = "output above the high-water mark"
    AT_LOW = "output at or below the low-water mark"
    IDLE = "idle timeout"
    CLOSE = "CLOSE returned"
    PEER_EOF = "peer's end of stream"
    RAISED = "callback raised"
    TRANSLATOR_RAISED = "translator raised"
    IO_ERROR = "read or write error"
    HOOK_RAISED = "prewrite or postwrite raised"
    DRAINED = "output drained"
    DETACH = "DETACH returned"
    SHUTDOWN = "SHUTDOWN"
    PAUSED = "pause() called"
    RESUMED = "resume() called"
    HALF_CLOSE = "peer's end of stream, eof set"
    FIN_SENT = "our end of stream sent"
    OVER_LIMIT = "output over max_pending"
    ABORT = "aborted"


READ_SIZE = 65536
"""Most bytes asked for in one read; message boundaries are not kept."""
SMALL_READ = 448
"""What a connection asks for after a read of no more than this: a
size CPython's small-object allocator serves (a 64 KiB buffer costs a
``malloc`` and a ``realloc`` per read).  Filling it asks for `READ_SIZE`."""


_OPEN = State.OPEN
LIVE = (State.OPEN, State.FLUSHING, State.WRITE_ONLY, State.READ_ONLY)
"""The states in which a connection holds a registered socket."""
TALKING = (State.OPEN, State.WRITE_ONLY, State.READ_ONLY)
"""The states in which callbacks (a wake's ``data``, ``eof``) are still called."""
READABLE = (State.OPEN, State.READ_ONLY)
"""The states in which the loop reads (unless paused)."""
WRITABLE = (State.OPEN, State.WRITE_ONLY, State.FLUSHING)
"""The states in which output is taken (``reading only``: our FIN is sent)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the connection lifecycle table."""

    source: State
    event: On
    target: State
    effect: str


_S, _O = State, On
LIFECYCLE: tuple[Transition, ...] = (
    Transition(_S.DIALING, _O.CONNECTED, _S.OPENING, "from here on like an accepted connection"),
    Transition(_S.DIALING, _O.DIAL_FAILED, _S.CLOSED,
               "opened with info.closing, then closed(id, err)"),
    Transition(_S.DIALING, _O.SHUTDOWN, _S.CLOSED,
               "opened with info.closing, then closed(id, ConnectionAbortedError)"),
    Transition(_S.OPENING, _O.OPENED, _S.OPEN, "opened's output is written first"),
    Transition(_S.OPENING, _O.SETUP_FAILED, _S.CLOSED,
               "accepted: no opened, no closed; dialed: as a failed dial"),
    Transition(_S.OPENING, _O.SHUTDOWN, _S.CLOSED, "no opened, no closed"),
    Transition(_S.OPEN, _O.BYTES_READ, _S.OPEN, "data(id, bytes); its output is appended"),
    Transition(_S.OPEN, _O.ABOVE_HIGH, _S.OPEN, "reading pauses"),
    Transition(_S.OPEN, _O.AT_LOW, _S.OPEN, "reading resumes"),
    Transition(_S.OPEN, _O.CLOSE, _S.FLUSHING, "reading stops"),
    Transition(_S.OPEN, _O.PEER_EOF, _S.FLUSHING, "reading stops"),
    Transition(_S.OPEN, _O.RAISED, _S.FLUSHING, "reading stops; err is kept"),
    Transition(_S.OPEN, _O.TRANSLATOR_RAISED, _S.FLUSHING,
               "its alert is sent; reading stops; err is kept"),
    Transition(_S.OPEN, _O.IDLE, _S.CLOSED, "pending output is dropped; err is TimeoutError"),
    Transition(_S.OPEN, _O.IO_ERROR, _S.CLOSED, "pending output is dropped"),
    Transition(_S.OPEN, _O.HOOK_RAISED, _S.CLOSED, "pending output is dropped"),
    Transition(_S.FLUSHING, _O.DRAINED, _S.CLOSED, "closed(id, err)"),
    Transition(_S.FLUSHING, _O.IDLE, _S.CLOSED, "pending output is dropped; err is TimeoutError"),
    Transition(_S.FLUSHING, _O.IO_ERROR, _S.CLOSED, "pending output is dropped"),
    Transition(_S.FLUSHING, _O.HOOK_RAISED, _S.CLOSED, "pending output is dropped"),
    Transition(_S.OPEN, _O.DETACH, _S.DETACHED,
               "detached(id, conn); pending output goes with conn"),
    Transition(_S.FLUSHING, _O.DETACH, _S.DETACHED,
               "detached(id, conn); pending output goes with conn"),
    Transition(_S.OPEN, _O.SHUTDOWN, _S.CLOSED, "pending output sent for up to stop_timeout"),
    Transition(_S.FLUSHING, _O.SHUTDOWN, _S.CLOSED, "pending output sent for up to stop_timeout"),
    # Flow control across connections, and half-close (docs/spec/reliability.md)
    Transition(_S.OPEN, _O.PAUSED, _S.OPEN, "reading stops until resume()"),
    Transition(_S.OPEN, _O.RESUMED, _S.OPEN, "reading goes on unless over the high-water mark"),
    Transition(_S.OPEN, _O.OVER_LIMIT, _S.CLOSED,
               "pending output is dropped; err is OutputLimitError"),
    Transition(_S.OPEN, _O.HALF_CLOSE, _S.WRITE_ONLY, "eof(id); output is still sent"),
    Transition(_S.OPEN, _O.FIN_SENT, _S.READ_ONLY, "after shutdown_write(): data goes on"),
    Transition(_S.WRITE_ONLY, _O.FIN_SENT, _S.CLOSED, "closed(id, None)"),
    Transition(_S.WRITE_ONLY, _O.CLOSE, _S.FLUSHING, "as from open"),
    Transition(_S.WRITE_ONLY, _O.RAISED, _S.FLUSHING, "err is kept"),
    Transition(_S.WRITE_ONLY, _O.OVER_LIMIT, _S.CLOSED,
               "pending output is dropped; err is OutputLimitError"),
    Transition(_S.WRITE_ONLY, _O.IDLE, _S.CLOSED, "pending output is dropped; err is TimeoutError"),
    Transition(_S.WRITE_ONLY, _O.IO_ERROR, _S.CLOSED, "pending output is dropped"),
    Transition(_S.WRITE_ONLY, _O.HOOK_RAISED, _S.CLOSED, "pending output is dropped"),
    Transition(_S.WRITE_ONLY, _O.DETACH, _S.DETACHED, "as from open"),
    Transition(_S.WRITE_ONLY, _O.SHUTDOWN, _S.CLOSED, "pending output sent for up to stop_timeout"),
    Transition(_S.READ_ONLY, _O.PAUSED, _S.READ_ONLY, "reading stops until resume()"),
    Transition(_S.READ_ONLY, _O.RESUMED, _S.READ_ONLY, "reading goes on"),
    Transition(_S.READ_ONLY, _O.PEER_EOF, _S.FLUSHING, "both ends are done: closed(id, None)"),
    Transition(_S.READ_ONLY, _O.CLOSE, _S.FLUSHING, "as from open"),
    Transition(_S.READ_ONLY, _O.RAISED, _S.FLUSHING, "err is kept"),
    Transition(_S.READ_ONLY, _O.IDLE, _S.CLOSED, "err is TimeoutError"),
    Transition(_S.READ_ONLY, _O.IO_ERROR, _S.CLOSED, "closed(id, err)"),
    Transition(_S.READ_ONLY, _O.DETACH, _S.DETACHED, "as from open; its write side is shut"),
    Transition(_S.READ_ONLY, _O.SHUTDOWN, _S.CLOSED, "closed(id, err)"),
    # Closing from outside: Server.abort, Action.ABORT, a handshake timeout (TIMER-4, TIMER-5)
    Transition(_S.OPEN, _O.ABORT, _S.CLOSED, "pending output is dropped; the peer sees a reset"),
    Transition(_S.FLUSHING, _O.ABORT, _S.CLOSED,
               "pending output is dropped; the peer sees a reset"),
    Transition(_S.WRITE_ONLY, _O.ABORT, _S.CLOSED,
               "pending output is dropped; the peer sees a reset"),
    Transition(_S.READ_ONLY, _O.ABORT, _S.CLOSED,
               "pending output is dropped; the peer sees a reset"),
)
"""The connection lifecycle as data: `move` allows exactly these changes,
and the spec page's table and diagram are checked against it."""

FLOW_ROWS = frozenset((t.source, t.event, t.target) for t in LIFECYCLE
                      if t.event is not On.ABORT and (
                          State.WRITE_ONLY in (t.source, t.target)
                          or State.READ_ONLY in (t.source, t.target)
                          or t.event in (On.PAUSED, On.RESUMED, On.OVER_LIMIT)))
"""The rows of flow control and half-close (driven by their own conformance test)."""

ABORT_ROWS = frozenset((t.source, t.event, t.target) for t in LIFECYCLE if t.event is On.ABORT)
"""The rows of an abort (driven by their own conformance test)."""

_NEXT: dict[tuple[State, On], State] = {(t.source, t.event): t.target for t in LIFECYCLE}
assert len(_NEXT) == len(LIFECYCLE), "two rows share a source and an event"

Observer = Callable[[int, State, On, State], None]
_observers: list[Observer] = []


class LifecycleError(RuntimeError):
    """A change of state that `LIFECYCLE` does not allow: a bug in evio."""


class _Record(Protocol):
    id: int
    state: State


# LOOP-20
def move(rec: _Record, event: On) -> State:
    """Apply ``event`` to a connection (or dial) record, as the table says.

    Returns:
        The new state.

    Raises:
        LifecycleError: the table has no row for the record's state and
            ``event``.
    """
    source = rec.state
    target = _NEXT.get((source, event))
    if target is None:
        raise LifecycleError(f"connection {rec.id}: no transition from {source.value} "
                             f"on {event.value!r}")
    rec.state = target
    if source is _OPEN and target is not _OPEN:
        # Only a connection is ever open; its inline read path is over.
        cast(Conn, rec).fast = False
    if _observers:
        for fn in tuple(_observers):
            fn(rec.id, source, event, target)
    return target


def observe(fn: Observer) -> Callable[[], None]:
    """Call ``fn(id, source, event, target)`` after every `move`, in any loop.

    A debugging and testing aid: the conformance suite uses it to check that
    the loop's transitions are exactly the table's.

    Returns:
        A function that stops the observing.
    """
    _observers.append(fn)
    return lambda: _observers.remove(fn)


@dataclass(slots=True, eq=False)
class Conn:
    """One stream connection's state.

    Attributes:
        id: The id callbacks receive.
        sock: The non-blocking socket.
        fd: Its descriptor (kept: it is the key in the loop's tables).
        addr_index: Index of the listener that accepted it, -1 if dialed.
        state: Where it is in `LIFECYCLE`.
        dialed: It came from `evio.Server.dial`.
        pending: Output not yet taken by the socket, oldest first.
        interest: The mask the poller was last told (`evio.READ`,
            ``WRITE``).
        reuse_input: ``data`` gets a view into the loop's read buffer.
        err: The error ``closed`` will report.
        translator: Its `evio.Translator`, if translated.
        peer_said_goodbye: The peer ended a translated connection (a TLS
            ``close_notify``, or its end of stream): a write that fails
            because it has gone reports ``err``, not a new error.
        reading_paused: More than ``high_water`` bytes were pending and no
            more than ``low_water`` have been since: reading is paused, and
            ``drained`` is due when output falls to the low-water mark.
        held: The application paused reading (`evio.Server.pause`).
        max_pending: Close when more output than this is pending.
        fin_wanted: `evio.Server.shutdown_write` was called: FIN goes out
            once nothing is pending.
        high_water: Pause reading above this many pending bytes ...
        low_water: ... and resume at or below this many.
        idle_timeout: Seconds of silence before it is closed, or ``None``.
        last_active: ``time.monotonic()`` of the last byte read or written.
        idle_timer: The pending idle check in the loop's timer queue.
        unsent_mark: With output pending, the bytes the kernel held unsent
            when the loop last left output pending (-1: unknown); a smaller
            count later means the peer read some (REL-4).
        plain: No translator, no write hooks, no reused read buffer: its
            reads take the inline path of `evio._streams.Streams.ready`.
        fast: Plain, open, and its interest is ``READ`` alone: a readable
            report takes the inline path.  `evio._streams.Streams.sync` sets it
            with the interest, and `move` clears it when the connection
            leaves *open*.
        read_size: What its next read asks for (a plain connection's
            shrinks after small reads: `SMALL_READ`).
        linger_timeout: Most seconds a lingering close waits (`evio._linger`).
        linger_bytes: Most bytes it discards before closing anyway (counts
            down while it lingers).
        linger_until: When its lingering close gives up.
        ending: `evio.Server.close` or ``abort`` was called: reading
            stopped, the close is due at the end of the turn.
        user_timers: Timers tied to it (`evio.Server.call_later` with
            ``id``), cancelled when it closes.
    """

    id: int
    sock: socket.socket
    fd: int
    addr_index: int
    state: State = State.OPENING
    dialed: bool = False
    pending: bytearray = field(default_factory=bytearray)
    interest: int = READ
    reuse_input: bool = False
    err: BaseException | None = None
    translator: Translator | None = None
    peer_said_goodbye: bool = False
    reading_paused: bool = False
    held: bool = False
    max_pending: int | None = None
    fin_wanted: bool = False
    high_water: int = 65536
    low_water: int = 16384
    idle_timeout: float | None = None
    last_active: float = 0.0
    idle_timer: Timer | None = None
    unsent_mark: int = -1
    plain: bool = False
    fast: bool = False
    read_size: int = READ_SIZE
    linger_timeout: float = 2.0
    linger_bytes: int = 1048576  # 1 MiB
    linger_until: float = 0.0
    ending: bool = False
    user_timers: list[Timer] | None = None
