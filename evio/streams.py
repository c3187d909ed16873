"""Streams: the loop's stream connections -- accept, read, write, close, detach.

Theory of operation
-------------------
Everything a TCP or unix-socket connection goes through between ``accept``
and ``close`` is here; the loop (`evio.loop`) only tells this module which
descriptor is ready, and `evio.accept` hands it each new socket.  Each
connection is a `evio.lifecycle.Conn` record,
and every change of its state goes through `evio.lifecycle.move`.

The traps, and what we chose:

* ``send`` may take part of a buffer.  We always try to write at once (most
  replies fit) and keep only the rest; write interest is held only while
  something is pending, because a writable socket is writable almost always
  and asking about it otherwise is a busy loop.
* Output is only ever *appended*.  If bytes are pending, new output queues
  behind them; it never replaces them and never jumps the queue.
* Interest is *derived*, not toggled: `Flow.sync` computes the mask
  from the record (open? reading paused? output pending?) and tells the
  poller only when it changed.  Reading pauses while more than
  ``high_water`` bytes are pending and resumes at ``low_water`` (flow
  control), so a peer that never reads cannot make us buffer without bound.
* A connection callback's exception finishes that connection (the error
  becomes ``closed``'s ``err``) and the loop goes on: see `evio.callbacks`.
* A close must not be half done.  The socket is closed and ``closed`` is
  called in a ``finally``, so an exception that cuts a close short (a
  ``KeyboardInterrupt`` from a user's signal handler) cannot leak the
  socket or lose the call.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from . import idle
from .callbacks import Policy
from .detach import DetachedConn
from .events import Events, Info
from .flow import READ_SIZE, SMALL_READ, Flow, next_read_size
from .lifecycle import LIVE, READABLE, TALKING, WRITABLE, Conn, On, State, move
from .linger import Linger
from .pollers import READ, WRITE, Poller
from .timers import Timers
from .translate import Pump

__all__ = ["Handlers", "Streams"]

log = logging.getLogger("evio")

Handlers = dict[int, tuple[Callable[[Any, int], None], Any]]
"""The loop's dispatch table: descriptor -> (handler, its argument);
the loop calls ``handler(argument, mask)`` for each ready descriptor."""

_OPEN = State.OPEN
_WRITE_ONLY = State.WRITE_ONLY
_FLUSHING = State.FLUSHING
os_read, os_write = os.read, os.write


class Streams(Flow):
    """Every stream connection of one loop (a `evio.callbacks.Side`).

    What the application may do to a connection's flow (pause, resume,
    half-close, limits, options) is in the `evio.flow.Flow` mixin.

    Args:
        events: The callbacks.
        poller: The loop's poller.
        timers: The loop's deadline queue.
        policy: Calls the callbacks.
        handlers: The loop's dispatch table; connections and listeners are
            added and removed here.
        ids: Where connection ids come from (shared with UDP and dial).
    """

    def __init__(self, events: Events, poller: Poller, timers: Timers, policy: Policy,
                 handlers: Handlers, ids: itertools.count[int]) -> None:
        self.ev = events
        self.poller = poller
        self.timers = timers
        self.policy = policy
        self.handlers = handlers
        self.ids = ids
        self.by_fd: dict[int, Conn] = {}
        self.by_id: dict[int, Conn] = {}
        self.pump = Pump(self, *events.translation) if events.translation else None
        if self.pump is None:
            self.send = self.write  # type: ignore[method-assign]  # nothing to translate
        # *Plain*: nothing between socket and ``data`` (no translator, no write
        # hooks, a fresh buffer per read); `ready` inlines its reads.
        self.on_data: Any = events.data
        self.plain = events.data is not None and events.prewrite is None and (
            events.postwrite is None)
        self.linger = Linger(poller, timers, lambda c: self.close(c, On.DRAINED, c.err))
        self.rbuf = bytearray(READ_SIZE)
        self.rview = memoryview(self.rbuf)

    # -------------------------------------------------------------- opening

    def adopt(self, sock: socket.socket, index: int, cid: int | None = None) -> Conn | None:
        """Take a connected socket into the loop, in state *opening*.

        Args:
            sock: The accepted or dialed socket.
            index: The listener's index, -1 for a dial.
            cid: The dial's id; ``None`` draws a new id (an accepted
                socket, which is registered here; a dialed one is already
                registered for its connect).

        Returns:
            The record, or ``None`` when the poller cannot watch the socket
            (``select`` above ``FD_SETSIZE``): it is closed, and no
            callback hears of it.
        """
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = sock.fileno()
        if cid is None:
            try:
                self.poller.register(fd, READ)
            except (ValueError, OSError) as e:
                log.warning("cannot watch accepted connection (fd %d): %s; closing it", fd, e)
                sock.close()
                return None
            c = Conn(next(self.ids), sock, fd, index)
        else:
            self.poller.modify(fd, READ)  # it was registered for the connect
            c = Conn(cid, sock, fd, index, dialed=True)
        self.by_fd[fd] = c
        self.by_id[c.id] = c
        self.handlers[fd] = (self.ready, c)
        return c

    def begin(self, c: Conn, remote: Any, woken: bool = False) -> None:
        """Set up translation, call ``opened``, deliver a wake that came early."""
        ev = self.ev
        info = None
        if self.pump is not None or ev.opened is not None:
            try:
                local = c.sock.getsockname()
            except OSError:  # already reset: opened still fires, then closed
                local = None
            info = Info(False, c.addr_index, local, remote)
        if self.pump is not None:
            assert info is not None
            err = self.pump.setup(c, info)
            if err is not None:
                self._setup_failed(c, remote, err)
                return
        move(c, On.OPENED)
        if info is not None:
            self.policy.opened(self, c, info)
        c.plain = self.plain and c.translator is None and not c.reuse_input
        if woken and c.state is _OPEN:
            self.policy.data(self, c, None)  # the wake that arrived while dialing
        if c.state in LIVE:
            self.sync(c)

    def _setup_failed(self, c: Conn, remote: Any, err: Exception) -> None:
        """The translation predicate, factory or ``start`` raised: ``opened``
        was never called, so ``closed`` is not either -- unless the user
        holds the id from `evio.Server.dial`, which then fails as a dial."""
        log.error("translator set-up for connection %d failed; closing it", c.id, exc_info=err)
        move(c, On.SETUP_FAILED)
        try:
            self.poller.unregister(c.fd)
        finally:
            self._forget(c)
            if c.dialed:
                self.policy.unopened(c.id, Info(True, -1, None, remote), err)

    # ------------------------------------------------------------- dispatch

    def ready(self, c: Conn, mask: int) -> None:  # noqa: C901 -- the hot path, inlined: a call per branch costs per read
        """The poller reported ``c``: write what is pending, then read once.

        The common case -- a plain connection, open, nothing pending (its
        interest is ``READ`` alone), readable -- is written out first:
        read, ``data``, send.  The general path handles every case.
        """
        if mask == READ and c.fast:
            size = c.read_size
            try:
                data = os_read(c.fd, size)  # ``recv`` without flags, cheaper to call
            except (BlockingIOError, InterruptedError):
                return  # a spurious wake-up: nothing to read after all
            except OSError as e:
                self.close(c, On.IO_ERROR, e)
                return
            if data:
                # `next_read_size`, inlined, the common case first.
                if size is SMALL_READ:
                    if len(data) == SMALL_READ:
                        c.read_size = READ_SIZE
                elif len(data) <= SMALL_READ:
                    c.read_size = SMALL_READ
                if c.idle_timeout is not None:
                    c.last_active = time.monotonic()
                on_data = self.on_data
                try:
                    r = on_data(c.id, data)
                except Exception as e:
                    self.policy.failed(self, c, "data", e)  # finishes it
                    r = None
                if type(r) is bytes:
                    # `write`, for this case: still open with nothing pending
                    # (no call a callback can make changes that for its own
                    # connection before the callback returns), no hooks;
                    # ``last_active`` was set by the read of this turn.
                    if not r:
                        return
                    try:
                        n = os_write(c.fd, r)
                    except (BlockingIOError, InterruptedError):
                        n = 0
                    except OSError as e:
                        self._write_failed(c, len(r), e)
                        return
                    if n == len(r) or not self.keep(c, r, n):
                        return  # all sent (the common case), or over the limit
                elif r is not None:
                    self.policy.answer(self, c, r)
            else:
                self.ended(c)
        else:
            if mask > READ | WRITE:  # a hang-up or error bit (`Poller.waiter`)
                mask = READ | WRITE
            if mask & WRITE and c.pending:
                self.flush(c)
            if mask & READ and c.interest & READ and c.state in READABLE:
                self.read(c)
            elif mask and not c.interest and c.state in LIVE:
                self.hung_up(c, mask)  # epoll and poll report a hang-up even so
        # Open, reading, nothing pending: no change of interest; skip the call.
        if (c.pending or c.reading_paused or c.interest != READ or c.state is not _OPEN) and (
            c.state in LIVE
        ):
            self.sync(c)

    def read(self, c: Conn) -> None:  # LOOP-11: one bounded read per turn
        """Read once; hand the bytes to ``data`` (through the translator, if any)."""
        view = None
        try:
            if c.reuse_input:
                n = c.sock.recv_into(self.rbuf)
                view = self.rview[:n]
                data: Any = view if n else b""
            else:
                data = c.sock.recv(c.read_size)
                c.read_size = next_read_size(len(data), c.read_size)
        except (BlockingIOError, InterruptedError):
            return  # a spurious wake-up: nothing to read after all
        except OSError as e:
            self.close(c, On.IO_ERROR, e)  # reset: the peer is gone, pending output with it
            return
        if not data:
            self.ended(c)
            return
        if c.idle_timeout is not None:
            c.last_active = time.monotonic()
        try:
            if c.translator is None:
                self.policy.data(self, c, data)
            else:
                assert self.pump is not None
                self.pump.receive(c, data)
        finally:
            if view is not None:
                view.release()  # the view is valid only during the call

    def woken(self, cid: int) -> bool:  # TR-9, WAKE-2, WAKE-3, WAKE-4
        """Deliver a wake as ``data(id, None)``; False if ``cid`` is not ours."""
        c = self.by_id.get(cid)
        if c is None:
            return False
        if c.state in TALKING:
            self.policy.data(self, c, None)
            if c.state in LIVE:
                self.sync(c)
        return True

    # --------------------------------------------------------------- writes

    def send(self, c: Conn, out: Any) -> None:
        """Output from a callback: through the translator, if any, then `write`."""
        if c.translator is not None:
            assert self.pump is not None
            out = self.pump.encode(c, out)
            if not out:
                return  # held back (a handshake in progress), or the translator failed
        self.write(c, out)

    def write(self, c: Conn, out: Any) -> None:  # LOOP-8: send at once if nothing is queued
        """Queue wire bytes behind anything pending, trying to send them at once."""
        if c.pending:
            if c.state in WRITABLE:
                c.pending += out  # append, never replace
                if c.max_pending is not None and len(c.pending) > c.max_pending and (
                        c.state is not _FLUSHING):
                    self.over_limit(c)
            return
        if c.state not in WRITABLE:
            return  # closed, or our end of stream is sent: nothing more goes out
        ev = self.ev
        if ev.prewrite is not None:
            # prewrite may detach the connection: the output must already be
            # pending then, so that it goes with the socket.
            c.pending += out
            self.flush(c)
            if c.max_pending is not None and len(c.pending) > c.max_pending and (
                    c.state in WRITABLE and c.state is not _FLUSHING):
                self.over_limit(c)
            return
        try:
            n = c.sock.send(out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._write_failed(c, len(out), e)
            return
        if n and c.idle_timeout is not None:
            c.last_active = time.monotonic()
        if n < len(out) and not self.keep(c, out, n):
            return
        if ev.postwrite is not None:
            self.policy.around(self, c, "postwrite", (c.id, n, len(c.pending)))

    def flush(self, c: Conn) -> None:  # LOOP-7, LOOP-10: write when writable, prewrite first
        """The socket is writable: send as much pending output as it takes."""
        ev = self.ev
        if ev.prewrite is not None and not self.policy.around(
                self, c, "prewrite", (c.id, len(c.pending))):
            return
        try:
            n = c.sock.send(c.pending)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._write_failed(c, len(c.pending), e)
            return
        del c.pending[:n]
        if c.idle_timeout is not None:
            idle.note_write(c, n)  # REL-4
        if ev.postwrite is not None and not self.policy.around(
                self, c, "postwrite", (c.id, n, len(c.pending))):
            return
        if not c.pending and c.state is _FLUSHING:
            self.linger.start(c)  # then closes: `evio.linger` (LOOP-14)

    # ------------------------------------------------------------- endings

    def end(self, c: Conn) -> None:
        """``Action.CLOSE``: finish ``c`` in order."""
        self.finish(c, On.CLOSE, None)

    def raised(self, c: Conn, where: str, e: Exception) -> None:
        """A callback for ``c`` raised: a write hook closes it at once,
        dropping pending output; any other finishes it with ``e``."""
        if where in ("prewrite", "postwrite"):
            c.pending.clear()  # the write path itself failed: nothing more is sent
            self.close(c, On.HOOK_RAISED, e)
        elif c.state in TALKING:
            self.finish(c, On.RAISED, e)
        elif c.err is None:
            c.err = e

    def live(self, c: Conn) -> bool:
        """Whether ``c`` still holds its socket."""
        return c.state in LIVE

    def finish(self, c: Conn, on: On, err: BaseException | None) -> None:
        """Stop reading; close once pending output has been sent."""
        if c.state not in TALKING:
            return
        c.err = err  # before the goodbye: the error to report if writing it fails
        if c.translator is not None:
            assert self.pump is not None
            goodbye = self.pump.goodbye(c)
            if goodbye:
                self.write(c, goodbye)
                if c.state is not _OPEN:
                    return  # the write failed and closed it
        move(c, on)
        if c.pending:
            self.sync(c)
        else:
            self.linger.start(c)  # then closes: `evio.linger` (LOOP-14)

    def close(self, c: Conn, on: On, err: BaseException | None) -> None:
        """Close ``c`` now and call ``closed(id, err)``."""
        if c.state not in LIVE:
            return
        if c.peer_said_goodbye and isinstance(err, BrokenPipeError | ConnectionResetError):
            err = c.err  # the peer ended and left: its leaving is not the error
        move(c, on)
        try:
            self.poller.unregister(c.fd)
        finally:
            self._forget(c)
            self.policy.closed(c.id, err)

    def _forget(self, c: Conn, keep_socket: bool = False) -> None:
        """Drop ``c`` from every table and close its socket (unless detached)."""
        self.by_fd.pop(c.fd, None)
        self.by_id.pop(c.id, None)
        self.handlers.pop(c.fd, None)
        self.drop_timers(c)
        if not keep_socket:
            c.sock.close()

    # DETACH-1
    def detach(self, c: Conn, where: str) -> None:
        """``Action.DETACH`` from ``where``: hand the socket, and the output
        still pending, to ``detached``; if ``detached`` raises, it is closed."""
        if c.state not in LIVE:
            return
        why = ("Action.DETACH needs a detached callback" if self.ev.detached is None else
               "a translated connection cannot be detached" if c.translator else None)
        if why:  # as if ``where`` raised it (EV-8): from a write hook, output is dropped
            self.policy.failed(self, c, where, TypeError(why))
            return
        move(c, On.DETACH)
        self.poller.unregister(c.fd)
        self._forget(c, keep_socket=True)
        conn = DetachedConn(c.sock, bytes(c.pending))
        c.pending.clear()
        if not self.policy.detached(c.id, conn):
            conn.abandon()

    def shut(self, cid: int) -> None:
        """Shutdown, after `drain`: one last non-blocking write, then close ``cid``."""
        c = self.by_id[cid]
        if c.state is State.OPENING:  # opened was never called: nobody to tell
            move(c, On.SHUTDOWN)
            self.poller.unregister(c.fd)
            self._forget(c)
            return
        if c.pending:  # what `drain` could not send (its goodbye included)
            with contextlib.suppress(OSError):
                c.sock.send(c.pending)  # one last try; never blocks
        self.close(c, On.SHUTDOWN, c.err)
