"""The loop: one thread, one poller, every listener and connection.

Theory of operation
-------------------
An event loop is a ``while`` around one blocking call.  Everything else is
bookkeeping that decides *how long* that call may block and *what to do*
with what it returns.  ``serve()`` reads in the order the spec page *The
loop* tells it:

1. **start** -- parse every address, bind every listener, call ``serving``,
   fire the first ``tick``.
2. **timeout** -- the poll may block until the earliest thing that is due
   (the next tick, a paused listener's retry); with nothing due it blocks
   without a limit.  A loop with no ticker and no traffic never wakes.
3. **poll** -- one call into the backend (`pollers`).
4. **dispatch** -- for each ready descriptor: accept on a listener; on a
   connection write pending output, then read once and hand the bytes to
   ``data``.  Interest is then *derived* from the connection's state (reading
   while open, writing while output is pending) and the poller is told only
   if it changed.
5. **wakes** -- if the wake descriptor rang, drain it, run the jobs other
   threads posted (dials) and call ``data(id, None)`` for each woken id.
6. **timers** -- call ``tick`` if it is due (the next one is due a fixed
   delay after this one *was due*, so ticks do not drift), fail dials whose
   timeout passed, re-enable paused listeners.
7. **shutdown** -- when a callback returned ``SHUTDOWN`` (or one raised out
   of the loop), every connection gets a last non-blocking write and is
   closed, listeners are closed, unix socket files removed, the poller
   released.  This runs in a ``finally``: it happens however the loop ends.

The traps, and what we chose:

* ``send`` may take part of a buffer.  We always try to write at once (most
  replies fit) and buffer only the rest; write interest is held only while
  something is pending, because a writable socket is writable almost always
  and asking about it otherwise is a busy loop.
* Output is only ever *appended*.  If bytes are pending, new output queues
  behind them; it never replaces them and never jumps the queue.
* ``accept`` can fail with ``EMFILE``/``ENFILE`` when descriptors run out.
  Level-triggered pollers report the listener ready again at once, so a
  naive loop spins at 100% CPU.  We stop watching that listener for
  `ACCEPT_RETRY_DELAY` seconds and keep serving the connections we
  have.
* A callback can raise.  A connection callback's exception closes that
  connection (the error becomes ``closed``'s ``err``) and the loop goes on;
  a ``serving`` or ``tick`` exception ends ``serve()`` after a clean
  shutdown.  See the spec page *Events and actions* for the table.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from .addresses import Listener, bind_all, parse_address
from .detach import DetachedConn
from .dial import Dial, Dialing, dial_address
from .events import (
    Action,
    Events,
    Info,
    Options,
    split_action,
    split_opened,
    split_reply,
    split_tick,
)
from .lifecycle import LIFECYCLE, LIVE, Conn, State
from .pollers import PORTABLE_FALLBACK, READ, WRITE, Poller, make_poller
from .translate import Translator, as_bytes
from .udp import UdpSide, is_udp
from .wake import Waker

__all__ = ["ACCEPT_BATCH", "ACCEPT_RETRY_DELAY", "LIFECYCLE", "READ_SIZE", "Server", "serve"]

log = logging.getLogger("evio")

READ_SIZE = 65536
"""Bytes asked for in one read; message boundaries are not kept."""
ACCEPT_BATCH = 128
"""At most this many connections are accepted per readiness report, so a
flood of new connections cannot starve the ones already open."""
ACCEPT_RETRY_DELAY = 0.25
"""Seconds a listener is left unwatched after ``EMFILE``/``ENFILE``."""
MAX_POLL_WAIT = 86400.0
"""The longest one poll waits when something is due: backends overflow
somewhere past 24 days, and waking once a day to find nothing due is free."""

# accept() errors that mean "that one connection went away before we took
# it": skip it and keep accepting.
_ACCEPT_SKIP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
# accept() errors that mean "out of descriptors or memory": back off.
_ACCEPT_BACKOFF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Server:
    """The running server, as ``serving`` receives it.

    ``wake`` and ``dial`` are the only methods that are safe to call from
    other threads; everything else belongs to the loop's thread.

    Attributes:
        addrs: The real bound address of each listener, in the order given
            to `serve()` (so a port of 0 shows the port chosen): a
            ``(host, port)`` tuple for IPv4, ``(host, port, flowinfo,
            scope_id)`` for IPv6, a path for unix sockets.
        poller: The name of the poller backend in use.
    """

    __slots__ = ("_loop", "addrs", "poller")

    def __init__(self, addrs: tuple[Any, ...], poller: str, loop: _Loop) -> None:
        self.addrs = addrs
        self.poller = poller
        self._loop = loop

    def wake(self, id: int) -> bool:
        """Ask the loop to call ``data(id, None)`` soon. Safe from any thread.

        Several wakes before the loop gets to them may be folded into one
        call; none is lost. A wake for a dial still connecting is kept until
        it opens.

        Returns:
            True if ``id`` is an open stream connection or a dial in
            progress; False for an unknown, closed, detached or UDP id, and
            once the server has stopped.
        """
        loop = self._loop
        if id in loop.by_id or id in loop.dials:
            return loop.waker.wake(id)
        return False

    def dial(self, addr: str, timeout: float | None = None) -> int:
        """Open an outbound connection on the loop. Safe from any thread.

        Returns at once; never blocks the loop (names are resolved on a
        worker thread). The connection then behaves like an accepted one,
        with ``info.addr_index == -1``. If it fails, ``opened`` is called
        with ``info.closing`` true and then ``closed(id, err)``.

        Args:
            addr: ``tcp``, ``tcp4``, ``tcp6`` or ``unix`` address to connect to.
            timeout: Seconds to connect (resolution included), or ``None``.

        Returns:
            The new connection's id.

        Raises:
            ValueError: ``addr`` is malformed, is a UDP address, or has no
                host or port; or ``timeout`` is not positive.
            RuntimeError: the server has shut down.
        """
        a = dial_address(addr)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < float("inf")
        ):
            raise ValueError(
                f"dial timeout must be a positive, finite number of seconds, not {timeout!r}"
            )
        loop = self._loop
        cid = next(loop.ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        d = Dial(cid, a, deadline)
        if not loop.waker.post(partial(loop.start_dial, d),
                               before=partial(loop.dials.__setitem__, cid, d)):
            raise RuntimeError(f"cannot dial {addr!r}: the server has shut down")
        return cid

    def pending(self, id: int) -> int:
        """Bytes of output queued for stream connection ``id`` and not yet sent.

        For the loop's thread only. 0 for an unknown or closed id.
        """
        c = self._loop.by_id.get(id)
        return len(c.out) if c is not None else 0

    def paused(self, id: int) -> bool:
        """Whether reading from ``id`` is paused by flow control.

        For the loop's thread only. False for an unknown or closed id.
        """
        c = self._loop.by_id.get(id)
        return c is not None and c.paused

    def __repr__(self) -> str:
        return f"<evio.Server poller={self.poller} addrs={list(self.addrs)!r}>"


def serve(events: Events, *addrs: str, poller: str | Poller | None = None) -> None:
    """Bind every address and run the loop until a callback says ``SHUTDOWN``.

    Args:
        events: The callbacks.
        *addrs: One or more addresses, e.g. ``"tcp://127.0.0.1:5000"``,
            ``"tcp6://[::1]:0"``, ``"unix:///tmp/evio.sock"``.
        poller: A backend name (``"epoll"``, ``"kqueue"``, ``"poll"``,
            ``"select"``), a `Poller` instance, or
            ``None`` for the best available (``"select"`` if any address
            uses a ``-net`` scheme). A ``Poller`` instance passed in is
            closed when ``serve()`` returns.

    Raises:
        ValueError: an address or the poller name is not valid, or a host
            name cannot be resolved; nothing has been bound.
        OSError: a bind failed; nothing stays bound.
        Exception: whatever ``serving`` or ``tick`` raised, after every
            connection has been closed and every descriptor released.
    """
    if not isinstance(events, Events):
        raise TypeError(f"serve() needs an evio.Events, not {type(events).__name__}")
    if not addrs:
        raise ValueError("serve() needs at least one address")
    parsed = [parse_address(a) for a in addrs]
    if any(a.portable for a in parsed):
        name = poller.name if isinstance(poller, Poller) else poller
        if name is not None and name != PORTABLE_FALLBACK:
            raise ValueError(
                f"a -net address asks for the {PORTABLE_FALLBACK!r} poller, "
                f"but poller={poller!r} was given"
            )
        poller = poller if isinstance(poller, Poller) else PORTABLE_FALLBACK
    backend = poller if isinstance(poller, Poller) else make_poller(poller)
    try:
        listeners = bind_all(parsed)
    except BaseException:
        backend.close()
        raise
    _Loop(events, listeners, backend).run()


class _Loop(Dialing):
    """One run of `serve()`. Not reusable."""

    def __init__(self, events: Events, listeners: list[Listener], poller: Poller) -> None:
        self.ev = events
        self.listeners = listeners
        self.by_lfd = {lst.sock.fileno(): (i, lst) for i, lst in enumerate(listeners)}
        self.poller = poller
        self.udp_lfds = {lst.sock.fileno() for lst in listeners if is_udp(lst)}
        self.conns: dict[int, Conn] = {}  # by descriptor
        self.by_id: dict[int, Conn] = {}
        self.ids = itertools.count(1)  # next() is atomic: dial() draws ids from any thread
        self.waker = Waker()
        self.dials: dict[int, Dial] = {}  # by id, until opened or failed
        self.connecting: dict[int, Dial] = {}  # by descriptor, while connecting
        self.timers: list[tuple[float, int, Dial]] = []  # dial deadlines (a heap)
        self.idle_timers: list[tuple[float, int]] = []  # (deadline, id) (a heap)
        self.resolver: ThreadPoolExecutor | None = None
        self.udp = UdpSide(self)
        self.stopping = False
        self.next_tick: float | None = None
        self.accept_retry_at: float | None = None
        self.paused: list[int] = []  # listener descriptors backed off after EMFILE
        self.rbuf = bytearray(READ_SIZE)
        self.rview = memoryview(self.rbuf)

    def new_id(self) -> int:
        return next(self.ids)

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        ev = self.ev
        try:
            # start
            for lfd in self.by_lfd:
                self.poller.register(lfd, READ)
            wfd = self.waker.fileno()
            self.poller.register(wfd, READ)
            server = Server(tuple(lst.bound for lst in self.listeners), self.poller.name, self)
            if ev.serving is not None:
                self._act_server(split_action(ev.serving(server), "serving"))
            if ev.tick is not None and not self.stopping:
                self.next_tick = time.monotonic()
                self._tick()
            poll = self.poller.poll
            while not self.stopping:
                # timeout
                timeout = self._timeout()
                # poll
                ready = poll(timeout)
                # dispatch
                rang = False
                for fd, mask in ready:
                    c = self.conns.get(fd)
                    if c is not None:
                        self._on_ready(c, mask)
                    elif fd == wfd:
                        rang = True
                    elif fd in self.connecting:
                        self._connected(self.connecting.pop(fd))
                    elif fd in self.udp_lfds:
                        self.udp.readable(*self.by_lfd[fd])
                    elif fd in self.by_lfd:
                        self._accept(fd)
                    if self.stopping:
                        break
                # wakes
                if rang and not self.stopping:
                    self._wakes()
                # timers
                if (self.next_tick is not None or self.accept_retry_at or self.timers
                        or self.idle_timers):
                    self._timers()
        finally:
            # shutdown
            self._shutdown()

    # -------------------------------------------------------------- timeout

    def _timeout(self) -> float | None:
        timers = self.timers
        while timers and timers[0][2].done:
            heapq.heappop(timers)  # that dial connected or failed: nothing is due
        due = [t for t in (self.next_tick, self.accept_retry_at) if t is not None]
        if timers:
            due.append(timers[0][0])
        idle = self.idle_timers
        while idle and idle[0][1] not in self.by_id:
            heapq.heappop(idle)  # that connection is gone
        if idle:
            due.append(idle[0][0])
        if not due:
            return None
        return min(MAX_POLL_WAIT, max(0.0, min(due) - time.monotonic()))

    # ------------------------------------------------------------- dispatch

    def _on_ready(self, c: Conn, mask: int) -> None:
        if mask & WRITE and c.out:
            self._flush(c)
        if mask & READ and c.state is State.OPEN and not c.paused:
            self._read(c)
        # The common case -- open, reading, nothing pending -- needs no
        # change of interest; skip the call.
        if (c.out or c.paused or c.mask != READ or c.state is not State.OPEN) and (
            c.state in LIVE
        ):
            self._sync(c)

    def _sync(self, c: Conn) -> None:
        """Derive the wanted interest from state; tell the poller if it changed.

        Reading pauses while more than ``high`` bytes are pending and
        resumes once no more than ``low`` are (flow control).
        """
        pending = len(c.out)
        if c.paused:
            if pending <= c.low:
                c.paused = False
        elif pending > c.high:
            c.paused = True
        want = (READ if c.state is State.OPEN and not c.paused else 0) | (WRITE if pending else 0)
        if want != c.mask:
            self.poller.modify(c.fd, want)
            c.mask = want

    def _accept(self, lfd: int) -> None:
        index, lst = self.by_lfd[lfd]
        for _ in range(ACCEPT_BATCH):
            try:
                sock, remote = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left
            except OSError as e:
                if e.errno in _ACCEPT_SKIP:
                    continue  # that peer gave up before we took it
                if e.errno in _ACCEPT_BACKOFF:
                    log.warning(
                        "accept on %s failed (%s); not accepting for %.2fs",
                        lst.address.text, e, ACCEPT_RETRY_DELAY,
                    )
                else:
                    log.error("accept on %s failed: %r; backing off", lst.address.text, e)
                self.poller.unregister(lfd)
                self.paused.append(lfd)
                self.accept_retry_at = time.monotonic() + ACCEPT_RETRY_DELAY
                return
            self._open(sock, remote, index)
            if self.stopping:
                return

    def _open(self, sock: socket.socket, remote: Any, index: int,
              dial: Dial | None = None) -> None:
        """Adopt a connected socket (accepted, or dialed) and call ``opened``."""
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = sock.fileno()
        if dial is None:
            try:
                self.poller.register(fd, READ)
            except (ValueError, OSError) as e:
                # select() cannot watch descriptors >= FD_SETSIZE: refuse this one.
                log.warning("cannot watch accepted connection (fd %d): %s; closing it", fd, e)
                sock.close()
                return
            cid = next(self.ids)
        else:
            self.poller.modify(fd, READ)  # it was registered for the connect
            cid = dial.id
        c = Conn(cid, sock, fd, index)
        self.conns[fd] = c
        self.by_id[cid] = c
        if dial is not None:
            dial.done = True
            del self.dials[cid]  # after by_id has it: wake() always finds the id
        opened = self.ev.opened
        translation = self.ev.translation
        info = None
        if translation is not None or opened is not None:
            try:
                local = sock.getsockname()
            except OSError:  # already reset: opened still fires, then closed
                local = None
            info = Info(False, index, local, remote)
        if translation is not None:
            assert info is not None
            try:
                if translation[0](cid, info):
                    c.tr = translation[1](cid, info)
                    # Queued, not sent: a send could fail and close the
                    # connection before opened has been called.
                    c.out += c.tr.start()
            except Exception as e:
                self._fail(c, e, "translate")
                return
        if opened is not None:
            assert info is not None
            try:
                out, options, action = split_opened(opened(c.id, info))
            except Exception as e:
                self._fail(c, e, "opened")
                return
            if options is not None:
                self._apply_options(c, options)
            if out:
                self._write(c, out)
            if action is not Action.NONE:
                self._act(c, action)
        if dial is not None and dial.woken and c.state is State.OPEN:
            self._deliver(c, None)  # the wake that arrived while dialing
        if c.state in LIVE:
            self._sync(c)

    def _apply_options(self, c: Conn, options: Options) -> None:
        c.reuse = options.reuse_input_buffer
        c.high, c.low = options.high_water, options.low_water
        if options.idle_timeout is not None:
            c.idle = options.idle_timeout
            c.last = time.monotonic()
            heapq.heappush(self.idle_timers, (c.last + c.idle, c.id))
        ka = options.tcp_keepalive
        if ka is not None and c.sock.family != socket.AF_UNIX:
            s = c.sock
            secs = max(1, round(ka))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, secs)
            elif sys.platform == "darwin":  # pragma: no cover - macOS spelling
                s.setsockopt(socket.IPPROTO_TCP, 0x10, secs)  # TCP_KEEPALIVE
            if hasattr(socket, "TCP_KEEPINTVL"):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, secs)

    def _read(self, c: Conn) -> None:
        view = None
        try:
            if c.reuse:
                n = c.sock.recv_into(self.rbuf)
                view = self.rview[:n]
                data: Any = view if n else b""
            else:
                data = c.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return  # a spurious wake-up: nothing to read after all
        except OSError as e:
            self._close(c, e)  # reset: the peer is gone, pending output with it
            return
        if not data:
            # The peer's end of stream: no more data; send what is pending.
            # A translator may call it an error (a TLS handshake cut short).
            err = None
            if c.tr is not None:
                try:
                    err = c.tr.eof()
                except Exception as e:
                    err = e
            self._finish(c, err)
            return
        if c.idle is not None:
            c.last = time.monotonic()
        try:
            if c.tr is None:
                self._deliver(c, data)
            else:
                self._receive(c, c.tr, data)
        finally:
            if view is not None:
                view.release()  # the view is valid only during the call

    def _receive(self, c: Conn, tr: Translator, wire: Any) -> None:
        """Pump a translator: wire bytes in; its reply out; plaintext to ``data``."""
        try:
            plain, reply = tr.receive(as_bytes(wire))
        except Exception as e:
            self._translation_failed(c, tr, e)
            return
        if reply:
            self._write(c, reply, raw=True)
        if plain and c.state is State.OPEN:
            self._deliver(c, plain)
        if tr.ended and c.state is State.OPEN:
            c.goodbye = True
            self._finish(c, None)  # the peer ended the protocol stream

    def _translation_failed(self, c: Conn, tr: Translator, e: Exception) -> None:
        """The peer broke the translated protocol: send the alert, close with ``e``."""
        log.debug("translator for connection %d failed: %r", c.id, e)
        c.tr = None  # nothing more goes through it, close_notify included
        alert = getattr(tr, "alert", b"")
        if alert and c.state in LIVE:
            self._write(c, alert, raw=True)
        if c.state is State.OPEN:
            self._finish(c, e)
        elif c.err is None:
            c.err = e

    def _deliver(self, c: Conn, data: Any) -> None:
        """Call ``data(id, data)`` (``data`` is None for a wake) and act on the reply."""
        try:
            r = self.ev.data(c.id, data) if self.ev.data is not None else None
            if r is None:
                return
            out: Any
            if type(r) is bytes:
                out, action = r, Action.NONE
            else:
                out, action = split_reply(r)
        except Exception as e:
            self._fail(c, e, "data")
            return
        if out:
            self._write(c, out)  # copies what it cannot send at once
        if action is not Action.NONE:
            self._act(c, action)

    # --------------------------------------------------------------- writes

    def _write(self, c: Conn, out: Any, raw: bool = False) -> None:
        """Queue ``out`` behind anything pending, trying to send it at once.

        Output of a translated connection goes through its translator first,
        unless ``raw`` (bytes the translator itself produced).
        """
        if c.tr is not None and not raw:
            tr = c.tr
            try:
                out = tr.send(as_bytes(out))
            except Exception as e:
                self._translation_failed(c, tr, e)
                return
            if not out:
                return  # held back (a handshake in progress)
        if c.out:
            if c.state in LIVE:
                c.out += out  # append, never replace
            return
        if c.state not in LIVE:
            return
        ev = self.ev
        if ev.prewrite is not None and not self._around(c, ev.prewrite, (c.id, len(out))):
            return
        try:
            n = c.sock.send(out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._close(c, e)
            return
        if n and c.idle is not None:
            c.last = time.monotonic()
        if n < len(out):
            c.out += memoryview(out)[n:]
        if ev.postwrite is not None:
            self._around(c, ev.postwrite, (c.id, n, len(c.out)))

    def _flush(self, c: Conn) -> None:
        """The socket is writable: send as much pending output as it takes."""
        ev = self.ev
        if ev.prewrite is not None and not self._around(c, ev.prewrite, (c.id, len(c.out))):
            return
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._close(c, e)
            return
        del c.out[:n]
        if n and c.idle is not None:
            c.last = time.monotonic()
        if ev.postwrite is not None and not self._around(
            c, ev.postwrite, (c.id, n, len(c.out))
        ):
            return
        if not c.out and c.state is State.FLUSHING:
            self._close(c, c.err)

    def _around(self, c: Conn, cb: Any, args: tuple[int, ...]) -> bool:
        """Call prewrite/postwrite; False if the connection did not survive it."""
        try:
            action = split_action(cb(*args), cb.__name__ if hasattr(cb, "__name__") else "")
        except Exception as e:
            log.exception("%s raised for connection %d; closing it", "prewrite/postwrite", c.id)
            c.out.clear()  # the write path itself failed: nothing more is sent
            self._close(c, e)
            return False
        if action is not Action.NONE:
            self._act(c, action)
        return c.state in LIVE

    # -------------------------------------------------------------- actions

    def _act(self, c: Conn, action: Action) -> None:
        if action is Action.CLOSE:
            self._finish(c, None)
        elif action is Action.SHUTDOWN:
            self.stopping = True
        elif action is Action.DETACH:
            self._detach(c)

    def _act_server(self, action: Action) -> None:
        if action is Action.SHUTDOWN:
            self.stopping = True
        elif action is not Action.NONE:
            raise TypeError(f"{action} names a connection; it cannot be returned here")

    def _finish(self, c: Conn, err: BaseException | None) -> None:
        """Stop reading; close once pending output has been sent."""
        if c.state is not State.OPEN:
            return
        if c.tr is not None:
            tr, c.tr = c.tr, None
            try:
                goodbye = tr.close()
            except Exception:
                goodbye = b""  # a goodbye is a courtesy; the close goes on
            if goodbye:
                self._write(c, goodbye, raw=True)
                if c.state is not State.OPEN:
                    return  # the write failed and closed it
        c.state = State.FLUSHING
        c.err = err
        if c.out:
            self._sync(c)
        else:
            self._close(c, err)

    def _fail(self, c: Conn, e: Exception, where: str) -> None:
        """A connection callback raised: log it, finish the connection with it."""
        log.error("%s raised for connection %d; closing it", where, c.id, exc_info=e)
        if c.state is State.OPEN:
            self._finish(c, e)
        elif c.err is None:
            c.err = e

    def _detach(self, c: Conn) -> None:
        """Hand the socket, and the output still pending, to ``detached``."""
        if c.state not in LIVE:
            return
        detached = self.ev.detached
        if detached is None:
            self._fail(c, TypeError("Action.DETACH needs a detached callback"), "DETACH")
            return
        if c.tr is not None:
            self._fail(c, TypeError("a translated connection cannot be detached"), "DETACH")
            return
        c.state = State.DETACHED
        self.poller.unregister(c.fd)
        del self.conns[c.fd]
        del self.by_id[c.id]
        conn = DetachedConn(c.sock, bytes(c.out))
        c.out.clear()
        try:
            action = split_action(detached(c.id, conn), "detached")
        except Exception:
            log.exception("detached raised for connection %d; the socket is its own now", c.id)
            return
        if action is Action.SHUTDOWN:
            self.stopping = True

    def _close(self, c: Conn, err: BaseException | None) -> None:
        if c.state not in LIVE:
            return
        if c.goodbye and isinstance(err, BrokenPipeError | ConnectionResetError):
            err = None  # the peer said goodbye in its protocol and left: orderly
        c.state = State.CLOSED
        self.poller.unregister(c.fd)
        del self.conns[c.fd]
        del self.by_id[c.id]
        c.sock.close()
        closed = self.ev.closed
        if closed is None:
            return
        try:
            action = split_action(closed(c.id, err), "closed")
        except Exception:
            log.exception("closed raised for connection %d; ignored", c.id)
            return
        if action is Action.SHUTDOWN:
            self.stopping = True

    # ---------------------------------------------------------------- wakes

    def _wakes(self) -> None:
        ids, jobs = self.waker.take()
        for job in jobs:
            job()
        for cid in sorted(ids):
            c = self.by_id.get(cid)
            if c is not None:
                if c.state is State.OPEN:
                    self._deliver(c, None)
                    if c.state in LIVE:
                        self._sync(c)
            elif cid in self.dials:
                self.dials[cid].woken = True  # delivered once it opens
            if self.stopping:
                return

    # --------------------------------------------------------------- timers

    def _timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, d = heapq.heappop(self.timers)
            if not d.done:
                self._dial_failed(d, TimeoutError(f"dial {d.address.text!r} timed out"))
        idle = self.idle_timers
        while idle and idle[0][0] <= now:
            _, cid = heapq.heappop(idle)
            c = self.by_id.get(cid)
            if c is None or c.idle is None:
                continue
            due = c.last + c.idle
            if due > now:
                heapq.heappush(idle, (due, cid))  # it was active since: look again then
                continue
            c.out.clear()  # nobody is reading it: an idle peer gets nothing more
            self._close(c, TimeoutError(f"connection {cid} idle for {c.idle}s"))
        if self.accept_retry_at is not None and now >= self.accept_retry_at:
            self.accept_retry_at = None
            for lfd in self.paused:
                self.poller.register(lfd, READ)
            self.paused.clear()
        if self.next_tick is not None and now >= self.next_tick and not self.stopping:
            self._tick()

    def _tick(self) -> None:
        assert self.ev.tick is not None and self.next_tick is not None
        due = self.next_tick
        delay, action = split_tick(self.ev.tick())
        if delay is None:
            self.next_tick = None
        else:
            # Measured from when this tick was due, not from now: no drift.
            # A tick that ran later than its successor's due time is not
            # made up; the successor fires at once.
            self.next_tick = max(due + delay, time.monotonic()) if delay else time.monotonic()
        self._act_server(action)

    # ------------------------------------------------------------- shutdown

    def _shutdown(self) -> None:
        self.stopping = True
        try:
            self.poller.unregister(self.waker.fileno())
            self.waker.close()  # from here on wake() is False and dial() raises
            if self.resolver is not None:
                self.resolver.shutdown(wait=False, cancel_futures=True)
            ids = set(self.by_id) | set(self.udp.peers) | set(self.dials)
            for cid in sorted(ids):
                c = self.by_id.get(cid)
                if c is not None:
                    if c.tr is not None and c.state is State.OPEN:
                        with contextlib.suppress(Exception):
                            c.out += c.tr.close()  # close_notify, best effort
                    if c.out:
                        with contextlib.suppress(OSError):
                            c.sock.send(c.out)  # one last try; never blocks
                    self._close(c, c.err)
                elif cid in self.udp.peers:
                    self.udp.forget(cid, None)
                elif cid in self.dials:
                    self._dial_failed(
                        self.dials[cid], ConnectionAbortedError("the server shut down")
                    )
        finally:
            for lst in self.listeners:
                self.poller.unregister(lst.sock.fileno())
                lst.close()
            self.poller.close()
