"""Streams: a stream connection from the hand-over after ``accept`` to its
close -- reads, writes and the output queue, interest, translation, what
the application asks for, endings, detach -- in the order a byte travels.

Owns: everything that happens to a TCP or unix-socket connection between
``accept`` (or a dial's connect) and ``close``; every decision about a
connection's poller interest lives here (`Streams.sync`).

Theory of operation
-------------------
The loop (`evio._loop`) only tells this module which descriptor is ready,
and `evio._accept` (or `evio._dial`) hands it each new socket.  Each
connection is a `evio._lifecycle.Conn` record, and every change of its
state goes through `evio._lifecycle.move`.  The sections below follow a
byte: the hand-over, the inline path most reads take, the general read,
the translator (for a translated connection), the write and the output
queue, the interest that follows from them, what the application may ask
for, and the ways a connection ends.

The traps, and what we chose:

* ``send`` may take part of a buffer.  We always try to write at once (most
  replies fit) and keep only the rest; write interest is held only while
  something is pending, because a writable socket is writable almost always
  and asking about it otherwise is a busy loop.
* Output is only ever *appended*.  If bytes are pending, new output queues
  behind them; it never replaces them and never jumps the queue.
* Interest is *derived*, not toggled: `Streams.sync` computes the mask
  from the record (open? reading paused? output pending?) and tells the
  poller only when it changed.  Reading pauses while more than
  ``high_water`` bytes are pending and resumes at ``low_water`` (flow
  control), so a peer that never reads cannot make us buffer without bound.
* **A callback answers only its own connection; a proxy's bytes go to the
  other one.**  So flow control across connections cannot be "pause while
  *my* output is pending" alone (rule REL-1): `Streams.pause` and
  `Streams.resume` stop and restart reading from *any* connection, on top
  of its water marks, as asyncio's ``pause_reading``/``resume_reading`` do;
  ``drained(id)`` tells the application when a connection that went over
  its high-water mark is back at its low-water mark, the moment to resume
  the other side.
* **A paused socket with nothing pending has no interest at all, but a
  hang-up is reported anyway** (epoll and poll always report ``HUP`` and
  ``ERR``).  Ignoring the report would spin the loop, so `Streams.hung_up`
  reads the socket's pending error and closes with it.
* **The end of the peer's stream is not the end of ours.**  ``nc -N``,
  ``shutdown(SHUT_WR)`` and HTTP/1.0 clients send FIN and still wait for
  the answer.  By default the connection finishes as before (LOOP-13);
  with an ``eof`` callback it becomes *writing only* (asyncio's
  ``eof_received``), and `Streams.shutdown_write` sends our FIN after
  everything pending (asyncio's ``write_eof``).  The FIN waits for the end
  of the loop turn in which it was asked for -- a timer of delay 0 -- so
  output returned by the callback that asked goes first.
* **TLS 1.2 has no half-close**, so a translated connection ignores
  ``eof`` (the peer's end finishes it, as before) and ``shutdown_write``
  finishes it: pending output, the translator's goodbye (``close_notify``),
  then the socket closes.
* **A translator raises on the peer's behalf** (a failed handshake,
  corrupt input): that connection closes with the error after the
  translator's ``alert``, and it is not logged as a callback error.
* **Small reads are the common case** (a request, a command), and a 64 KiB
  read buffer is not free: CPython allocates it with ``malloc`` and shrinks
  it to what arrived, every read.  After a read of at most `SMALL_READ`
  bytes the next one asks for only that much, which the small-object
  allocator serves; a read that fills it asks for `READ_SIZE` again, so
  a burst is read in full-size pieces from the next turn on (rule LOOP-28).
* **A hard output limit** (``Options.max_pending``) is checked only where
  output is queued behind output already pending; past it, the connection
  is closed at once with `evio.OutputLimitError`, its output dropped.
* A connection callback's exception finishes that connection (the error
  becomes ``closed``'s ``err``) and the loop goes on: see `evio._callbacks`.
* A close must not be half done.  The socket is closed and ``closed`` is
  called in a ``finally``, so an exception that cuts a close short (a
  ``KeyboardInterrupt`` from a user's signal handler) cannot leak the
  socket or lose the call.
* **A shutdown should not cut replies short, nor wait for ever.**  When
  the server stops, `Streams.drain` sends what is pending for at most
  ``stop_timeout`` seconds on a poller of its own that watches only the
  connections with output pending, for writability only: nothing is read,
  accepted or called back, and a peer that never reads costs the bound,
  no more (rule LOOP-18).  A second stop signal ends it at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import sys
import time
from functools import partial
from typing import Any

from . import _idle as idle
from ._addresses import SockAddr
from ._debug import check_shortcuts
from ._detach import DetachedConn
from ._events import FOREVER, Buffer, Info, Options, OutputLimitError
from ._lifecycle import (
    LIVE,
    READ_SIZE,
    READABLE,
    SMALL_READ,
    TALKING,
    WRITABLE,
    Conn,
    On,
    State,
    move,
)
from ._linger import Linger, settled
from ._pollers import READ, WRITE, make_poller
from ._signals import SignalWatch
from ._translate import Translator
from ._wiring import Parts

__all__ = ["Streams", "next_read_size"]

log = logging.getLogger("evio")

_OPEN = State.OPEN
_WRITE_ONLY = State.WRITE_ONLY
_FLUSHING = State.FLUSHING
_WRITING = (State.OPEN, State.WRITE_ONLY)
UNWATCHED = -1
"""``Conn.interest`` of a connection taken off the poller after a hang-up."""
_RESET = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, 0 seconds: ``close`` resets the connection at once."""
KEEPALIVE_MAX = 32767
"""The most seconds Linux takes for ``TCP_KEEPIDLE`` and ``TCP_KEEPINTVL``."""
# Discussion: the inline path reads and writes with ``os.read`` and
# ``os.write`` on the descriptor, not ``sock.recv`` and ``sock.send``: a
# plain C function call instead of a method of the socket object (which
# also checks its timeout on every call).  Measured with callgrind
# (bench/instructions.py, PING, 50 clients, pipeline 1): 14.3k -> 13.2k
# instructions per request for evio-min, 18.4k -> 17.3k for the Redis
# clone.  Precondition: the socket is non-blocking and not a TLS socket,
# which holds for every socket the loop owns (`Streams.adopt`).
os_read, os_write = os.read, os.write


# LOOP-28
def next_read_size(n: int, size: int) -> int:
    """What to ask for after a read of ``n`` bytes that asked for ``size``."""
    if n == size:
        return READ_SIZE  # filled: more may be waiting, ask for all of it
    return SMALL_READ if n <= SMALL_READ else size


def as_bytes(b: Buffer) -> bytes:
    """Translators take ``bytes``: copy views and bytearrays."""
    return b if type(b) is bytes else bytes(b)


class Streams:
    """Every stream connection of one loop (a `evio._callbacks.Side`).

    Args:
        parts: The loop's parts; connections are added to and removed from
            its dispatch table here, and draw their ids from its counter
            (shared with UDP and dial).
    """

    def __init__(self, parts: Parts) -> None:
        events = parts.events
        self.ev = events
        self.poller = parts.poller
        self.timers = parts.timers
        self.policy = parts.policy
        self.handlers = parts.handlers
        self.ids = parts.ids
        if parts.debug:
            # EV-26: the inline path's precondition checked before each report
            self.ready = check_shortcuts(self.ready)  # type: ignore[method-assign, assignment]
        self.by_fd: dict[int, Conn] = {}
        self.by_id: dict[int, Conn] = {}
        # Translation (`evio.translate`): ``(should, factory,
        # handshake_timeout)``, or None when no connection is translated.
        self.translation = events.translation
        # *Plain*: nothing between socket and ``data`` (no translator, no write
        # hooks, a fresh buffer per read); `ready` inlines its reads.
        # Any, as `Events.data` declares it (its payload's type is the user's).
        self.on_data: Any = events.data
        self.plain = events.data is not None and events.prewrite is None and (
            events.postwrite is None)
        self.linger = Linger(self.poller, self.timers,
                             lambda c: self.close(c, On.DRAINED, c.err))
        self.rbuf = bytearray(READ_SIZE)
        self.rview = memoryview(self.rbuf)

    # ------------------------- opening: the hand-over from accept and dial

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

    def begin(self, c: Conn, remote: SockAddr | None, woken: bool = False) -> None:
        """Set up translation, call ``opened``, deliver a wake that came early."""
        ev = self.ev
        info = None
        if self.translation is not None or ev.opened is not None:
            try:
                local = c.sock.getsockname()
            except OSError:  # already reset: opened still fires, then closed
                local = None
            info = Info(False, c.addr_index, local, remote)
        if self.translation is not None:
            assert info is not None
            err = self.setup_translation(c, info)
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

    def _setup_failed(self, c: Conn, remote: SockAddr | None, err: Exception) -> None:
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

    # ----------------------------------------------------- the inline path

    def ready(self, c: Conn, mask: int) -> None:  # noqa: C901 -- the hot path, inlined: a call per branch costs per read
        """The poller reported ``c``: write what is pending, then read once.

        The common case -- a plain connection, open, nothing pending (its
        interest is ``READ`` alone), readable -- is written out first:
        read, ``data``, send.  The general path handles every case.
        """
        # Discussion: the inline path.  Going through `read`, `Policy.data`,
        # `Policy.answer` and `write` costs a Python frame per step; written
        # out here, a plain echo or PING is one method.  Measured with
        # callgrind (bench/instructions.py, redis-benchmark PING, 50
        # clients, pipeline 1), instructions per request: evio-min 19.5k ->
        # 15.3k, the Redis clone 21.8k -> 17.3k (commit 58544c4).  Its
        # precondition is ``c.fast``: open, plain, interest ``READ`` alone,
        # kept by `sync` (which sets it with the interest) and by
        # `evio._lifecycle.move` (which clears it when the connection leaves
        # *open*); debug mode checks it before every report (EV-26), and
        # test_debug.py breaks it on purpose to see the check fire.
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
                # `next_read_size`, inlined, the common case first (LOOP-28).
                if size == SMALL_READ:
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

    # --------------------------------------------------------------- reads

    def read(self, c: Conn) -> None:  # LOOP-11: one bounded read per turn
        """Read once; hand the bytes to ``data`` (through the translator, if any)."""
        view = None
        try:
            if c.reuse_input:
                n = c.sock.recv_into(self.rbuf)
                view = self.rview[:n]
                data: Buffer = view if n else b""
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
                self.receive_translated(c, data)
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

    # ----------------- translated connections: the loop's side of the pump

    # TR-2, TR-3, TR-8
    def setup_translation(self, c: Conn, info: Info) -> Exception | None:
        """Ask ``should``; make and start the translator. The error, if any."""
        assert self.translation is not None
        should, factory, timeout = self.translation
        try:
            if should(c.id, info):
                c.translator = factory(c.id, info)
                # Queued, not sent: a send could fail and close the
                # connection before opened has been called.
                c.pending += c.translator.start()
                if timeout is not None and not c.translator.handshake_done:
                    t = self.timers.at(time.monotonic() + timeout,
                                       partial(self._handshake_due, c, timeout))
                    c.user_timers = [t]  # cancelled when the connection goes
        except Exception as e:
            return e
        return None

    def _handshake_due(self, c: Conn, timeout: float) -> None:
        """``handshake_timeout`` ran out: abort ``c`` if it is still handshaking (TIMER-5)."""
        tr = c.translator
        if c.state in LIVE and tr is not None and not tr.handshake_done:
            self.abort(c, TimeoutError(
                f"connection {c.id}: handshake not done in {timeout}s"))

    # TR-4
    def receive_translated(self, c: Conn, wire: Buffer) -> None:
        """Wire bytes in; its reply out; plaintext to ``data``."""
        tr = c.translator
        assert tr is not None
        try:
            plain, reply = tr.receive(as_bytes(wire))
        except Exception as e:
            self.translator_failed(c, tr, e)
            return
        if tr.ended:
            # The peer ended the protocol stream and may be gone already. Its
            # reply is queued, not sent, so that a failed send cannot close
            # the connection before ``data`` has the plaintext; the output of
            # ``data`` queues behind it, in order (TLS records must not be
            # reordered). Then a failed write is orderly (TR-6).
            c.peer_said_goodbye = True
            if reply and c.state in WRITABLE:  # as `write` would, without sending
                c.pending += reply
            if plain and c.state is State.OPEN:
                self.policy.data(self, c, plain)
            self.finish(c, On.PEER_EOF, None)
            return
        if reply:
            self.write(c, reply)
        if plain and c.state is State.OPEN:
            self.policy.data(self, c, plain)

    def encode(self, c: Conn, plain: Buffer) -> bytes:
        """Outbound plaintext to wire bytes (empty: held back, or it failed)."""
        tr = c.translator
        assert tr is not None
        try:
            return tr.send(as_bytes(plain))
        except Exception as e:
            self.translator_failed(c, tr, e)
            return b""

    # TR-5
    def goodbye(self, c: Conn) -> bytes:
        """Detach the translator and return its goodbye (a TLS ``close_notify``)."""
        tr, c.translator = c.translator, None
        assert tr is not None
        try:
            return tr.close()
        except Exception:
            return b""  # a goodbye is a courtesy; the close goes on

    def translated_eof(self, c: Conn) -> BaseException | None:
        """The peer ended its byte stream: the error for ``closed``, if any."""
        assert c.translator is not None
        try:
            return c.translator.eof()
        except Exception as e:
            return e

    # TR-7
    def translator_failed(self, c: Conn, tr: Translator, e: Exception) -> None:
        """The peer broke the translated protocol: send the alert, close with ``e``."""
        log.debug("translator for connection %d failed: %r", c.id, e)
        c.translator = None  # nothing more goes through it, close_notify included
        alert = tr.alert
        if alert and c.state in LIVE:
            self.write(c, alert)
        if c.state is State.OPEN:
            self.finish(c, On.TRANSLATOR_RAISED, e)
        elif c.err is None:
            c.err = e

    # ----------------------------------------- writes and the output queue

    def send(self, c: Conn, out: Buffer) -> None:
        """Output from a callback: through the translator, if any, then `write`."""
        if c.translator is not None:
            out = self.encode(c, out)
            if not out:
                return  # held back (a handshake in progress), or the translator failed
        self.write(c, out)

    def write(self, c: Conn, out: Buffer) -> None:  # LOOP-8: send at once if nothing is queued
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

    # REL-10: over max_pending closes the connection
    def keep(self, c: Conn, out: Buffer, n: int) -> bool:
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
        if self.ev.postwrite is not None and not self.policy.around(
                self, c, "postwrite", (c.id, 0, unsent)):
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

    # ------------------------------------------------------------ interest

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

    # REL-8
    def drained(self, c: Conn) -> None:
        """Output fell to the low-water mark after the high-water mark: ``drained``."""
        self.policy.call(self, c, "drained")

    # --------------------------------------- what the application asks for

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

    # ------------------------------------------------------------- endings

    def ended(self, c: Conn) -> None:
        """The peer's end of stream: no more data; send what is pending.

        A translator may call it an error (a TLS handshake cut short); with
        an ``eof`` callback, an untranslated connection stays writable.
        """
        if c.translator is None and c.state is _OPEN and self.ev.eof is not None:  # TR-10
            self.peer_ended(c)  # half-close: go on writing
            return
        err = None
        if c.translator is not None:
            err = self.translated_eof(c)
            c.peer_said_goodbye = True  # gone: a goodbye it cannot take is no new error
        self.finish(c, On.PEER_EOF, err)

    # REL-11
    def peer_ended(self, c: Conn) -> None:
        """The peer ended its stream on an open connection with ``eof`` set."""
        move(c, On.HALF_CLOSE)
        self.policy.call(self, c, "eof")

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
            goodbye = self.goodbye(c)
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

    def drop_timers(self, c: Conn) -> None:
        """``c`` is leaving the loop: its idle check, and every timer tied to it, go."""
        self.timers.cancel(c.idle_timer)
        c.idle_timer = None
        if c.user_timers is not None:  # tied to it: they end with it (TIMER-2)
            for t in c.user_timers:
                self.timers.cancel(t)
            c.user_timers = None

    # -------------------------------------------------------------- detach

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

    # ------------------------------------------------------------ shutdown

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
