"""Callbacks: the one place that calls user code and acts on its answer.

Owns: every call into user code: all callbacks are called here, and what
each answer means is decided here.

Theory of operation
-------------------
A user callback can do three things the loop must handle: return output,
return an `Action`, or raise.  Handled in each place that calls one --
reads, wakes, dials, UDP datagrams, write hooks -- the same decisions end
up written several times and drift apart (was ``closed`` called?  was the
shutdown noticed?).  So every call into user code goes through a `Policy`,
which

1. calls the callback and unpacks its answer (`evio._events.split_reply`
   and friends; a wrong shape is a ``TypeError``, handled like a raise);
2. on a raise, logs it and hands the exception to the connection's *side*
   (`Side.raised`): a stream connection finishes with it as ``closed``'s
   ``err``, a UDP remote is forgotten with it;
3. applies the answer: output goes to ``Side.send``, ``CLOSE`` to
   ``Side.end``, ``ABORT`` to ``Side.abort``, ``DETACH`` to ``Side.detach``,
   ``SHUTDOWN`` to the loop's one stop request.

What each callback may answer, and what each action does there, is the
table on the spec page *Events and actions* (rules EV-16 to EV-22):
``serving``, ``tick``, ``closed`` and ``detached`` have no connection left
to act on, so only ``SHUTDOWN`` has an effect there; ``CLOSE``,
``ABORT`` and ``DETACH`` are accepted and do nothing.  ``serving`` and ``tick`` raising
ends `evio.serve` (they are the server's, not a connection's); ``closed``
and ``detached`` raising is logged and the loop goes on.

``data`` runs once per read, so `Policy.data` keeps the common answer --
plain ``bytes`` -- to one type check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from ._detach import DetachedConn
from ._events import (
    Action,
    Buffer,
    Events,
    Info,
    Options,
    Out,
    split_action,
    split_opened,
    split_reply,
    split_tick,
)

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Policy", "Side"]

log = logging.getLogger("evio")

C = TypeVar("C", contravariant=True)


class Record(Protocol):
    """A connection record as the policy sees it: all it reads is the id."""

    @property
    def id(self) -> int:
        """The connection's id."""


R = TypeVar("R", bound=Record)
"""The kind of record a side keeps (`evio._lifecycle.Conn`, `evio._udp.Peer`)."""

_NONE = Action.NONE
_CLOSE = Action.CLOSE
_DETACH = Action.DETACH
_SHUTDOWN = Action.SHUTDOWN
_ABORT = Action.ABORT


class Side(Protocol[C]):
    """What the policy asks of the code that owns a kind of connection."""

    def send(self, c: C, out: Out) -> None:
        """Queue or send output a callback returned."""

    def end(self, c: C) -> None:
        """``Action.CLOSE``: close once pending output is sent."""

    def detach(self, c: C, where: str) -> None:
        """``Action.DETACH``, returned by the callback ``where``."""

    def abort(self, c: C, err: BaseException | None = None) -> None:
        """``Action.ABORT``: close at once, dropping pending output."""

    def raised(self, c: C, where: str, e: Exception) -> None:
        """A callback for ``c`` raised ``e`` (already logged)."""

    def configure(self, c: C, options: Options) -> None:
        """Apply the `Options` that ``opened`` returned."""

    def live(self, c: C) -> bool:
        """Whether ``c`` can still take output."""


# EV-1: every callback optional
class Policy:
    """Calls the user's callbacks; see the module docstring.

    Args:
        events: The callbacks.
        stop: Asks the loop to shut down (``Action.SHUTDOWN``).
        stopping: Whether the loop has been asked to.
    """

    __slots__ = ("_data", "ev", "stop", "stopping")

    def __init__(self, events: Events, stop: Callable[[], None],
                 stopping: Callable[[], bool]) -> None:
        self.ev = events
        self.stop = stop
        self.stopping = stopping
        self._data = events.data

    # ------------------------------------------------- connection callbacks

    # EV-7: the action applies after its output
    def act(self, side: Side[R], c: R, action: Action, where: str = "data") -> None:
        """Apply an action the connection callback ``where`` returned."""
        if action is _CLOSE:
            side.end(c)
        elif action is _DETACH:
            side.detach(c, where)
        elif action is _SHUTDOWN:
            self.stop()
        elif action is _ABORT:
            side.abort(c)

    # LOOP-12
    def data(self, side: Side[R], c: R, payload: Buffer | None) -> None:
        """``data(id, payload)`` (``payload`` None for a wake); act on the answer."""
        fn = self._data
        if fn is None:
            return
        try:
            r = fn(c.id, payload)
        except Exception as e:
            self.failed(side, c, "data", e)
            return
        if r is None:
            return
        if type(r) is bytes:
            if r:
                side.send(c, r)
            return
        self.answer(side, c, r)

    def answer(self, side: Side[R], c: R, r: object) -> None:
        """Act on what ``data`` returned when it is not plain ``bytes``."""
        try:
            out, action = split_reply(r)
        except Exception as e:  # a TypeError: not an answer ``data`` may give
            self.failed(side, c, "data", e)
            return
        if out and action is not _ABORT:  # ABORT drops output, this one too
            side.send(c, out)
        if action is not _NONE:
            self.act(side, c, action)

    def call(self, side: Side[R], c: R, where: str) -> None:
        """``eof(id)`` or ``drained(id)``: answered as ``data`` is."""
        fn = getattr(self.ev, where)
        if fn is None:
            return
        try:
            out, action = split_reply(fn(c.id))
        except Exception as e:
            self.failed(side, c, where, e)
            return
        if out and action is not _ABORT:  # ABORT drops output, this one too
            side.send(c, out)
        if action is not _NONE:
            self.act(side, c, action, where)

    # LOOP-4: opened once per connection
    def opened(self, side: Side[R], c: R, info: Info) -> None:
        """``opened(id, info)``: options first, then output, then the action."""
        fn = self.ev.opened
        if fn is None:
            return
        try:
            out, options, action = split_opened(fn(c.id, info))
        except Exception as e:
            self.failed(side, c, "opened", e)
            return
        if options is not None:
            try:
                side.configure(c, options)
            except Exception as e:  # the kernel refused an option: this connection only
                self.failed(side, c, "opened", e)
                return
        if out and action is not _ABORT:  # ABORT drops output, this one too
            side.send(c, out)
        if action is not _NONE:
            self.act(side, c, action, "opened")

    # EV-10, EV-20, LOOP-21: prewrite/postwrite
    def around(self, side: Side[R], c: R, where: str, args: tuple[int, ...]) -> bool:
        """``prewrite`` or ``postwrite``; False if ``c`` did not survive it."""
        cb = self.ev.prewrite if where == "prewrite" else self.ev.postwrite
        assert cb is not None
        try:
            action = split_action(cb(*args), where)
        except Exception as e:
            self.failed(side, c, where, e)
            return side.live(c)
        if action is not _NONE:
            self.act(side, c, action, where)
        return side.live(c)

    # EV-9, EV-13: log, close this connection only
    def failed(self, side: Side[R], c: R, where: str, e: Exception) -> None:
        """A connection callback raised: log it, let the side end the connection."""
        log.error("%s raised for connection %d; closing it", where, c.id, exc_info=e)
        side.raised(c, where, e)

    # ------------------------------------------- callbacks with no connection

    # EV-11, EV-18, EV-21, LOOP-15: closed once per opened
    def closed(self, cid: int, err: BaseException | None) -> None:
        """``closed(id, err)``: a raise is logged; only ``SHUTDOWN`` has an effect."""
        fn = self.ev.closed
        if fn is None:
            return
        try:
            action = split_action(fn(cid, err), "closed")
        except Exception:
            log.exception("closed raised for connection %d; ignored", cid)
            return
        self.server_action(action)

    def unopened(self, cid: int, info: Info, err: BaseException) -> None:
        """A dialed id that never opened: ``opened`` with ``info.closing``
        (a raise is logged; its answer is ignored), then ``closed(id, err)``."""
        if self.ev.opened is not None:
            try:
                self.ev.opened(cid, info)
            except Exception:
                log.exception("opened raised for failed dial %d; ignored", cid)
        self.closed(cid, err)

    # EV-19
    def detached(self, cid: int, conn: DetachedConn) -> bool:
        """``detached(id, conn)``; False if it raised (the caller closes ``conn``)."""
        fn = self.ev.detached
        assert fn is not None
        try:
            action = split_action(fn(cid, conn), "detached")
        except Exception:
            log.exception("detached raised for connection %d; closing its socket", cid)
            return False
        self.server_action(action)
        return True

    # EV-12: serving raising ends the loop
    def serving(self, server: Server) -> None:
        """``serving(server)``; a raise propagates and ends `evio.serve`."""
        if self.ev.serving is not None:
            self.server_action(split_action(self.ev.serving(server), "serving"))

    # EV-12, EV-17, TICK-1
    def tick(self) -> float | None:
        """``tick()``: the delay to the next one, or None to stop ticking.

        A raise propagates and ends `evio.serve`.
        """
        assert self.ev.tick is not None
        delay, action = split_tick(self.ev.tick())
        self.server_action(action)
        return delay

    # LOOP-17: SHUTDOWN from any callback
    def server_action(self, action: Action) -> None:
        """An action from a callback that has no connection to act on."""
        if action is _SHUTDOWN:
            self.stop()
        # NONE, CLOSE, ABORT and DETACH: nothing to act on (rule EV-16).
