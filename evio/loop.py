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
5. **ticker** -- call ``tick`` if it is due; the next one is due a fixed
   delay after this one *was due*, so ticks do not drift.
6. **shutdown** -- when a callback returned ``SHUTDOWN`` (or one raised out
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
import logging
import socket
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .addresses import Listener, bind_all, parse_address
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
from .pollers import PORTABLE_FALLBACK, READ, WRITE, Poller, make_poller

__all__ = ["ACCEPT_BATCH", "ACCEPT_RETRY_DELAY", "LIFECYCLE", "READ_SIZE", "Server", "serve"]

log = logging.getLogger("evio")

READ_SIZE = 65536
"""Bytes asked for in one read; message boundaries are not kept."""
ACCEPT_BATCH = 128
"""At most this many connections are accepted per readiness report, so a
flood of new connections cannot starve the ones already open."""
ACCEPT_RETRY_DELAY = 0.25
"""Seconds a listener is left unwatched after ``EMFILE``/``ENFILE``."""

# accept() errors that mean "that one connection went away before we took
# it": skip it and keep accepting.
_ACCEPT_SKIP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
# accept() errors that mean "out of descriptors or memory": back off.
_ACCEPT_BACKOFF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class State(Enum):
    """Where a connection is in its life (see `LIFECYCLE`)."""

    OPEN = "open"
    FLUSHING = "flushing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the connection lifecycle table."""

    source: str
    event: str
    target: str
    effect: str


LIFECYCLE: tuple[Transition, ...] = (
    Transition("accepted", "opened returns", "open", "opened's output is written first"),
    Transition("open", "bytes read", "open", "data(id, bytes); its output is appended"),
    Transition("open", "CLOSE returned", "flushing", "reading stops"),
    Transition("open", "peer's end of stream", "flushing", "reading stops"),
    Transition("open", "callback raised", "flushing", "reading stops; err is kept"),
    Transition("open", "read or write error", "closed", "pending output is dropped"),
    Transition("open", "prewrite or postwrite raised", "closed", "pending output is dropped"),
    Transition("flushing", "output drained", "closed", "closed(id, err)"),
    Transition("flushing", "write error", "closed", "closed(id, err)"),
    Transition("open", "SHUTDOWN", "closed", "one last non-blocking write"),
    Transition("flushing", "SHUTDOWN", "closed", "one last non-blocking write"),
)
"""The connection lifecycle as data: the spec page's table and diagram are
checked against it."""


@dataclass(slots=True, eq=False)
class _Conn:
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


class Server:
    """The running server, as ``serving`` receives it.

    Attributes:
        addrs: The real bound address of each listener, in the order given
            to `serve()` (so a port of 0 shows the port chosen): a
            ``(host, port)`` tuple for IPv4, ``(host, port, flowinfo,
            scope_id)`` for IPv6, a path for unix sockets.
        poller: The name of the poller backend in use.
    """

    __slots__ = ("addrs", "poller")

    def __init__(self, addrs: tuple[Any, ...], poller: str) -> None:
        self.addrs = addrs
        self.poller = poller

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
        NotImplementedError: a UDP address (UDP listeners are not served yet).
        OSError: a bind failed; nothing stays bound.
        Exception: whatever ``serving`` or ``tick`` raised, after every
            connection has been closed and every descriptor released.
    """
    if not isinstance(events, Events):
        raise TypeError(f"serve() needs an evio.Events, not {type(events).__name__}")
    if not addrs:
        raise ValueError("serve() needs at least one address")
    parsed = [parse_address(a) for a in addrs]
    udp = [a.text for a in parsed if a.is_udp]
    if udp:
        raise NotImplementedError(f"UDP listeners are not served yet: {udp}")
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


class _Loop:
    """One run of `serve()`. Not reusable."""

    def __init__(self, events: Events, listeners: list[Listener], poller: Poller) -> None:
        self.ev = events
        self.listeners = listeners
        self.by_lfd = {lst.sock.fileno(): (i, lst) for i, lst in enumerate(listeners)}
        self.poller = poller
        self.conns: dict[int, _Conn] = {}  # by descriptor
        self.by_id: dict[int, _Conn] = {}
        self.next_id = 1
        self.stopping = False
        self.next_tick: float | None = None
        self.accept_retry_at: float | None = None
        self.paused: list[int] = []  # listener descriptors backed off after EMFILE
        self.rbuf = bytearray(READ_SIZE)
        self.rview = memoryview(self.rbuf)

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        ev = self.ev
        try:
            # start
            for lfd in self.by_lfd:
                self.poller.register(lfd, READ)
            server = Server(tuple(lst.bound for lst in self.listeners), self.poller.name)
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
                for fd, mask in ready:
                    c = self.conns.get(fd)
                    if c is not None:
                        self._on_ready(c, mask)
                    elif fd in self.by_lfd:
                        self._accept(fd)
                    if self.stopping:
                        break
                # ticker (and the accept back-off timer)
                if self.next_tick is not None or self.accept_retry_at is not None:
                    self._timers()
        finally:
            # shutdown
            self._shutdown()

    # -------------------------------------------------------------- timeout

    def _timeout(self) -> float | None:
        due = [t for t in (self.next_tick, self.accept_retry_at) if t is not None]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    # ------------------------------------------------------------- dispatch

    def _on_ready(self, c: _Conn, mask: int) -> None:
        if mask & WRITE and c.out:
            self._flush(c)
        if mask & READ and c.state is State.OPEN:
            self._read(c)
        if c.state is not State.CLOSED:
            self._sync(c)

    def _sync(self, c: _Conn) -> None:
        """Derive the wanted interest from state; tell the poller if it changed."""
        want = (READ if c.state is State.OPEN else 0) | (WRITE if c.out else 0)
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

    def _open(self, sock: socket.socket, remote: Any, index: int) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = sock.fileno()
        try:
            self.poller.register(fd, READ)
        except (ValueError, OSError) as e:
            # select() cannot watch descriptors >= FD_SETSIZE: refuse this one.
            log.warning("cannot watch accepted connection (fd %d): %s; closing it", fd, e)
            sock.close()
            return
        c = _Conn(self.next_id, sock, fd, index)
        self.next_id += 1
        self.conns[fd] = c
        self.by_id[c.id] = c
        opened = self.ev.opened
        if opened is None:
            return
        try:
            info = Info(False, index, sock.getsockname(), remote)
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
        if c.state is not State.CLOSED:
            self._sync(c)

    def _apply_options(self, c: _Conn, options: Options) -> None:
        c.reuse = options.reuse_input_buffer
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

    def _read(self, c: _Conn) -> None:
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
            self._finish(c, None)
            return
        try:
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
        finally:
            if view is not None:
                view.release()  # the view is valid only during the call

    # --------------------------------------------------------------- writes

    def _write(self, c: _Conn, out: Any) -> None:
        """Queue ``out`` behind anything pending, trying to send it at once."""
        if c.out or c.state is State.CLOSED:
            if c.state is not State.CLOSED:
                c.out += out  # append, never replace
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
        if n < len(out):
            c.out += memoryview(out)[n:]
        if ev.postwrite is not None:
            self._around(c, ev.postwrite, (c.id, n, len(c.out)))

    def _flush(self, c: _Conn) -> None:
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
        if ev.postwrite is not None and not self._around(
            c, ev.postwrite, (c.id, n, len(c.out))
        ):
            return
        if not c.out and c.state is State.FLUSHING:
            self._close(c, c.err)

    def _around(self, c: _Conn, cb: Any, args: tuple[int, ...]) -> bool:
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
        return c.state is not State.CLOSED

    # -------------------------------------------------------------- actions

    def _act(self, c: _Conn, action: Action) -> None:
        if action is Action.CLOSE:
            self._finish(c, None)
        elif action is Action.SHUTDOWN:
            self.stopping = True
        elif action is Action.DETACH:
            self._fail(c, NotImplementedError("DETACH is not supported yet"), "action")

    def _act_server(self, action: Action) -> None:
        if action is Action.SHUTDOWN:
            self.stopping = True
        elif action is not Action.NONE:
            raise TypeError(f"{action} names a connection; it cannot be returned here")

    def _finish(self, c: _Conn, err: BaseException | None) -> None:
        """Stop reading; close once pending output has been sent."""
        if c.state is not State.OPEN:
            return
        c.state = State.FLUSHING
        c.err = err
        if c.out:
            self._sync(c)
        else:
            self._close(c, err)

    def _fail(self, c: _Conn, e: Exception, where: str) -> None:
        """A connection callback raised: log it, finish the connection with it."""
        log.error("%s raised for connection %d; closing it", where, c.id, exc_info=e)
        if c.state is State.OPEN:
            self._finish(c, e)
        elif c.err is None:
            c.err = e

    def _close(self, c: _Conn, err: BaseException | None) -> None:
        if c.state is State.CLOSED:
            return
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

    # --------------------------------------------------------------- ticker

    def _timers(self) -> None:
        now = time.monotonic()
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
            for cid in sorted(self.by_id):
                c = self.by_id.get(cid)
                if c is None:
                    continue
                if c.out:
                    with contextlib.suppress(OSError):
                        c.sock.send(c.out)  # one last try; never blocks
                self._close(c, c.err)
        finally:
            for lst in self.listeners:
                self.poller.unregister(lst.sock.fileno())
                lst.close()
            self.poller.close()
