"""Flow: what the application may do to a stream's flow -- options, pause,
resume, half-close, output limits, idle timeouts.

Theory of operation
-------------------
`evio.streams` moves bytes; this module holds the decisions an application
takes *about* a connection's flow, mixed into `evio.streams.Streams` as
`Flow`.  None of it is on the hot path (read -> ``data`` -> write): each
piece runs when the application asks, when output is queued behind output
already pending, or when the peer ends its stream.

The traps, and what we chose:

* **A callback answers only its own connection; a proxy's bytes go to the
  other one.**  So flow control across connections cannot be "pause while
  *my* output is pending" alone (rule REL-1): `Flow.pause` and
  `Flow.resume` stop and restart reading from *any* connection, on top of
  its water marks, as asyncio's ``pause_reading``/``resume_reading`` do;
  ``drained(id)`` tells the application when a connection that went over
  its high-water mark is back at its low-water mark, the moment to resume
  the other side.
* **A paused socket with nothing pending has no interest at all, but a
  hang-up is reported anyway** (epoll and poll always report ``HUP`` and
  ``ERR``).  Ignoring the report would spin the loop, so `Flow.hung_up`
  reads the socket's pending error and closes with it.
* **The end of the peer's stream is not the end of ours.**  ``nc -N``,
  ``shutdown(SHUT_WR)`` and HTTP/1.0 clients send FIN and still wait for
  the answer.  By default the connection finishes as before (LOOP-13);
  with an ``eof`` callback it becomes *writing only* (asyncio's
  ``eof_received``), and `Flow.shutdown_write` sends our FIN after
  everything pending (asyncio's ``write_eof``).  The FIN waits for the end
  of the loop turn in which it was asked for -- a timer of delay 0 -- so
  output returned by the callback that asked goes first.
* **TLS 1.2 has no half-close**, so a translated connection ignores
  ``eof`` (the peer's end finishes it, as before) and ``shutdown_write``
  finishes it: pending output, the translator's goodbye (``close_notify``),
  then the socket closes.
* **Small reads are the common case** (a request, a command), and a 64 KiB
  read buffer is not free: CPython allocates it with ``malloc`` and shrinks
  it to what arrived, every read.  After a read of at most `SMALL_READ`
  bytes the next one asks for only that much, which the small-object
  allocator serves; a read that fills it asks for `READ_SIZE` again, so
  a burst is read in full-size pieces from the next turn on (rule LOOP-28).
* **A shutdown should not cut replies short, nor wait for ever.**  When
  the server stops, `Flow.drain` sends what is pending for at most
  ``stop_timeout`` seconds on a poller of its own that watches only the
  connections with output pending, for writability only: nothing is read,
  accepted or called back, and a peer that never reads costs the bound,
  no more (rule LOOP-18).  A second stop signal ends it at once.
* **A hard output limit** (``Options.max_pending``) is checked only where
  output is queued behind output already pending; past it, the connection
  is closed at once with `evio.OutputLimitError`, its output dropped.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import time
from functools import partial
from typing import Any

from . import idle
from .callbacks import Policy
from .events import FOREVER, Events, Options, OutputLimitError
from .lifecycle import LIVE, READ_SIZE, READABLE, SMALL_READ, Conn, On, State, move
from .linger import settled
from .pollers import READ, WRITE, Poller, make_poller
from .signals import SignalWatch
from .timers import Timers
from .translate import Pump

__all__ = ["READ_SIZE", "SMALL_READ", "Flow", "next_read_size"]  # the sizes: lifecycle's


def next_read_size(n: int, size: int) -> int:
    """What to ask for after a read of ``n`` bytes that asked for ``size``."""
    if n == size:
        return READ_SIZE  # filled: more may be waiting, ask for all of it
    return SMALL_READ if n <= SMALL_READ else size


_OPEN = State.OPEN
_WRITE_ONLY = State.WRITE_ONLY
_WRITING = (State.OPEN, State.WRITE_ONLY)
UNWATCHED = -1
"""``Conn.interest`` of a connection taken off the poller after a hang-up."""
_RESET = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, 0 seconds: ``close`` resets the connection at once."""
KEEPALIVE_MAX = 32767
"""The most seconds Linux takes for ``TCP_KEEPIDLE`` and ``TCP_KEEPINTVL``."""



class Flow:
    """The flow-control half of `evio.streams.Streams` (a mixin)."""

    ev: Events
    poller: Poller
    timers: Timers
    policy: Policy
    by_id: dict[int, Conn]

    pump: Pump | None

    # Provided by Streams.
    def read(self, c: Conn) -> None: ...

    def close(self, c: Conn, on: On, err: BaseException | None) -> None: ...

    def finish(self, c: Conn, on: On, err: BaseException | None) -> None: ...

    # ------------------------------------------------------------- interest

    def sync(self, c: Conn) -> None:  # LOOP-9, REL-9: interest follows pending output
        """Derive the wanted interest from state; tell the poller if it changed."""
        pending = len(c.pending)
        state = c.state
        if state is _OPEN or state is _WRITE_ONLY:
            if c.reading_paused:
                if pending <= c.low_water:
                    c.reading_paused = False
                    if state is _OPEN:
                        move(c, On.AT_LOW)
                    if self.ev.drained is not None:
                        self.drained(c)
                        if c.state in LIVE:
                            self.sync(c)
                        return
            elif pending > c.high_water:  # REL-2: stop reading above the high-water mark
                c.reading_paused = True
                if state is _OPEN:
                    move(c, On.ABOVE_HIGH)
            if c.fin_wanted and not pending:
                self.send_fin(c)
                if c.state not in LIVE:
                    return
                state = c.state
        want = (READ if state in READABLE and not (c.reading_paused or c.held or c.ending)
                else 0) | (
            WRITE if pending else 0)
        if want != c.interest and (want or c.interest != UNWATCHED):
            if c.interest == UNWATCHED:  # off the poller since a hang-up (`hung_up`)
                self.poller.register(c.fd, want)
            else:
                self.poller.modify(c.fd, want)
            c.interest = want
        c.fast = want == READ and c.plain and state is _OPEN

    # -------------------------------------------------------------- options

    # LOOP-6: opened's options
    def configure(self, c: Conn, options: Options) -> None:
        """Apply the `Options` ``opened`` returned."""
        c.reuse_input = options.reuse_input_buffer
        c.high_water, c.low_water = options.high_water, options.low_water
        c.max_pending = options.max_pending
        c.linger_timeout = float(min(options.linger_timeout, FOREVER))
        c.linger_bytes = options.linger_bytes
        if options.idle_timeout is not None:
            c.idle_timeout = float(min(options.idle_timeout, FOREVER))
            c.last_active = time.monotonic()
            self.timers.cancel(c.idle_timer)
            c.idle_timer = self.timers.at(c.last_active + c.idle_timeout,
                                          partial(idle.check, self.timers, self.close, c))
        ka = options.tcp_keepalive
        if ka is not None and c.sock.family != socket.AF_UNIX:
            s = c.sock
            secs = min(max(1, round(ka)), KEEPALIVE_MAX)  # the kernel refuses more
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, secs)
            elif sys.platform == "darwin":  # pragma: no cover - macOS spelling
                s.setsockopt(socket.IPPROTO_TCP, 0x10, secs)  # TCP_KEEPALIVE
            if hasattr(socket, "TCP_KEEPINTVL"):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, secs)

    def drop_timers(self, c: Conn) -> None:
        """``c`` is leaving the loop: its idle check, and every timer tied to it, go."""
        self.timers.cancel(c.idle_timer)
        c.idle_timer = None
        if c.user_timers is not None:  # tied to it: they end with it (TIMER-2)
            for t in c.user_timers:
                self.timers.cancel(t)
            c.user_timers = None

    # -------------------------------------------------------- pause, resume

    # REL-7
    def pause(self, cid: int) -> bool:
        """`evio.Server.pause`: stop reading ``cid`` until `resume`."""
        c = self.by_id.get(cid)
        if c is None or c.state not in READABLE:
            return False
        if not c.held:
            c.held = True
            move(c, On.PAUSED)
            self.sync(c)
        return True

    def resume(self, cid: int) -> bool:
        """`evio.Server.resume`: read ``cid`` again (unless over its high-water mark)."""
        c = self.by_id.get(cid)
        if c is None or c.state not in READABLE:
            return False
        if c.held:
            c.held = False
            move(c, On.RESUMED)
            self.sync(c)
        return True

    def hung_up(self, c: Conn, mask: int) -> None:
        """A report for a connection with no interest: a hang-up, an error
        (``READ | WRITE``, POLL-2), or a report from before this turn paused it."""
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            c.pending.clear()
            self.close(c, On.IO_ERROR, OSError(err, os.strerror(err)))
            return
        if c.state in READABLE:
            try:
                peek = c.sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return  # nothing there: a stale report
            except OSError as e:
                self.close(c, On.IO_ERROR, e)
                return
            if not peek:
                self.read(c)  # the peer's end of stream, though paused: finish
                return
        if mask == READ | WRITE:
            # A hang-up we cannot act on yet (reading paused with bytes still
            # to read, or not reading at all): epoll and poll would report it
            # on every poll, a busy loop. Off the poller until `sync` wants it.
            self.poller.unregister(c.fd)
            c.interest = UNWATCHED

    # ------------------------------------------- closing from outside

    def end_later(self, cid: int, abort: bool) -> bool:
        """`evio.Server.close` / ``abort``: stop reading now, act at the end of the turn."""
        c = self.by_id.get(cid)
        if c is None or c.state not in LIVE:
            return False
        if abort or not c.ending:
            # At the end of this turn (TIMER-3): never inside the callback that
            # asked, whose own connection's output is still on its way.
            self.timers.at(time.monotonic(), partial(self._end_due, c, abort))
        if not c.ending:
            c.ending = True
            self.sync(c)
        return True

    def _end_due(self, c: Conn, abort: bool) -> None:
        if c.state not in LIVE:
            return
        if abort:
            self.abort(c, None)
        elif c.state is not State.FLUSHING:
            self.finish(c, On.CLOSE, None)

    def abort(self, c: Conn, err: BaseException | None = None) -> None:
        """Close ``c`` at once, dropping its pending output; the peer sees a
        reset (``SO_LINGER`` 0), so the kernel drops what it holds too (TIMER-4)."""
        if c.state not in LIVE:
            return
        c.pending.clear()
        if c.sock.family != socket.AF_UNIX:
            with contextlib.suppress(OSError):
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self.close(c, On.ABORT, err)

    # ---------------------------------------------------------- half-close

    def ended(self, c: Conn) -> None:
        """The peer's end of stream: no more data; send what is pending.

        A translator may call it an error (a TLS handshake cut short); with
        an ``eof`` callback, an untranslated connection stays writable.
        """
        if c.translator is None and c.state is _OPEN and self.ev.eof is not None:  # TR-10
            self.peer_ended(c)  # half-close: go on writing
            return
        err = None
        if c.translator is not None and self.pump:
            err = self.pump.eof(c)
            c.peer_said_goodbye = True  # gone: a goodbye it cannot take is no new error
        self.finish(c, On.PEER_EOF, err)

    # REL-11
    def peer_ended(self, c: Conn) -> None:
        """The peer ended its stream on an open connection with ``eof`` set."""
        move(c, On.HALF_CLOSE)
        side: Any = self  # a Streams
        self.policy.call(side, c, "eof")

    # REL-12
    def shutdown_write(self, cid: int) -> bool:
        """`evio.Server.shutdown_write`: FIN once nothing is pending."""
        c = self.by_id.get(cid)
        if c is None or c.state not in _WRITING:
            return False
        if not c.fin_wanted:
            c.fin_wanted = True
            # At the end of this turn: output returned by the callback that
            # asked (and by any other this turn) is queued before the FIN.
            self.timers.at(time.monotonic(), partial(self._fin_due, c))
        return True

    def _fin_due(self, c: Conn) -> None:
        if c.state not in _WRITING:
            return
        if c.translator is not None:
            self.finish(c, On.CLOSE, None)  # goodbye (close_notify), then close
        else:
            self.sync(c)  # sends the FIN now if nothing is pending

    def send_fin(self, c: Conn) -> None:
        """Nothing is pending and a FIN is wanted: shut our write side."""
        c.fin_wanted = False
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.close(c, On.IO_ERROR, e)
            return
        if c.state is _WRITE_ONLY:
            self.close(c, On.FIN_SENT, c.err)  # both ends are done
        else:
            move(c, On.FIN_SENT)

    # --------------------------------------------------------- output limit

    # REL-10: over max_pending closes the connection
    def keep(self, c: Conn, out: Any, n: int) -> bool:
        """The socket took ``n`` bytes of ``out``: keep the rest pending.

        Returns:
            False if that put ``c`` over its output limit (it is closed).
        """
        c.pending += memoryview(out)[n:]
        if c.idle_timeout is not None:
            idle.note_write(c, 0)  # the caller noted the n bytes sent (REL-4)
        if c.max_pending is not None and len(c.pending) > c.max_pending:
            self.over_limit(c)
            return False
        return True

    def _write_failed(self, c: Conn, unsent: int, e: OSError) -> None:
        """A send failed (the peer reset): ``postwrite`` still hears of the
        attempt -- nothing written, ``unsent`` bytes left -- then ``c`` closes."""
        side: Any = self  # a Streams
        if self.ev.postwrite is not None and not self.policy.around(
                side, c, "postwrite", (c.id, 0, unsent)):
            return
        self.close(c, On.IO_ERROR, e)

    # REL-10
    def over_limit(self, c: Conn) -> None:
        """More than ``max_pending`` bytes are pending: close ``c`` now."""
        n, limit = len(c.pending), c.max_pending
        c.pending.clear()
        self.close(c, On.OVER_LIMIT, OutputLimitError(
            f"connection {c.id}: {n} bytes of output pending, over its limit of {limit} "
            f"(Options.max_pending)"))

    # REL-8
    def drained(self, c: Conn) -> None:
        """Output fell to the low-water mark after the high-water mark: ``drained``."""
        side: Any = self  # a Streams
        self.policy.call(side, c, "drained")

    # ------------------------------------------------------ shutdown's flush

    def drain(self, timeout: float, signals: SignalWatch) -> None:  # noqa: C901 -- shutdown's one bounded flush, every case in view
        """Shutdown's flush (LOOP-18): send pending output for at most ``timeout`` s.

        A translated connection still open queues its goodbye first. Only
        writability is watched, on a poller of this call's own; no callback
        runs. A TCP connection whose output is all handed over lingers
        (`evio.linger`) until the kernel holds none of it unacknowledged.
        It ends when nothing is left to wait for, at the deadline, or when
        a second stop signal arrives.
        """
        waiting: dict[int, Conn] = {}
        lingering: list[Conn] = []
        for c in self.by_id.values():
            if c.state not in LIVE:
                continue
            if c.translator is not None and c.state is _OPEN:
                with contextlib.suppress(Exception):
                    c.pending += c.translator.close()  # close_notify, best effort
            if c.pending and self._drain_send(c):
                waiting[c.fd] = c
            elif self._lingers(c):
                lingering.append(c)
        if not (waiting or lingering) or timeout <= 0:
            return
        try:
            watch = make_poller(self.poller.name)
        except ValueError:  # a Poller of the user's own, under a name of its own
            watch = make_poller(None)
        try:
            for fd in waiting:
                watch.register(fd, WRITE)
            bell = signals.fileno()
            if bell is not None:
                watch.register(bell, READ)
            seen = signals.count
            deadline = time.monotonic() + timeout
            while (waiting or lingering) and signals.count == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for fd, _ in watch.poll(min(left, 0.01) if lingering else left):
                    w = waiting.get(fd)
                    if w is None:
                        signals.drain(None, READ)
                    elif not self._drain_send(w):
                        del waiting[fd]
                        watch.unregister(fd)
                        if self._lingers(w):
                            lingering.append(w)
                lingering = [c for c in lingering if not settled(c)]
        finally:
            watch.close()

    def _lingers(self, c: Conn) -> bool:
        """Shut ``c``'s write side; True if the kernel still holds its output."""
        if c.sock.family == socket.AF_UNIX or c.linger_timeout <= 0:
            return False
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return not settled(c)

    def _drain_send(self, c: Conn) -> bool:
        """One non-blocking send of ``c``'s pending output; True if some is left."""
        try:
            n = c.sock.send(c.pending)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            c.pending.clear()  # the peer is gone: nobody to send it to
            return False
        del c.pending[:n]
        return bool(c.pending)
