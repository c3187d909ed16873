"""Dial: outbound connections on the loop, without ever blocking it.

Owns: an outbound connection from the request (any thread) to ``opened`` or
its failure: resolving, connecting, the dial timeout.

Theory of operation
-------------------
``server.dial(addr)`` returns an id at once, from any thread, and the
connection then lives on the loop like an accepted one.  Three steps could
block, and each is moved off the loop's critical path:

1. **Name resolution.**  ``getaddrinfo`` is a blocking library call (it may
   wait seconds for DNS).  A host that is not already a numeric address is
   resolved on a small pool of worker threads; the answer comes back to the
   loop through the wake doorbell (`evio._wake`).  Numeric addresses and
   unix paths skip the pool.
2. **Connecting.**  A non-blocking ``connect`` returns ``EINPROGRESS`` at
   once; the socket becomes *writable* when the handshake ends, either way,
   and ``SO_ERROR`` then tells success (0) from failure (``ECONNREFUSED``
   ...).  Until then the descriptor is registered for writing only.
3. **Timing out.**  An optional timeout covers both steps, measured from the
   ``dial`` call.  It is a timer on the loop, not a thread.

A name that resolves to several addresses is tried in the order the
resolver gives, one at a time, until one connects; the error reported on
failure is the last one.

Every dial the server accepted ends in exactly one ``opened`` and one
``closed``: on success like any connection; on failure ``opened`` with
``info.closing`` true and then ``closed`` with the error
(``ConnectionRefusedError``, ``socket.gaierror``, ``TimeoutError``).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from ._addresses import Address, SockAddr, Target, parse_address
from ._events import Info
from ._lifecycle import Conn, On, State, move
from ._pollers import WRITE
from ._timers import Timer
from ._wiring import Parts

__all__ = ["Dial", "Dialer", "dial_address", "needs_resolving", "resolve", "targets_now"]

log = logging.getLogger("evio")

_FAMILY = {"tcp": socket.AF_UNSPEC, "tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}


@dataclass(slots=True, eq=False)
class Dial:
    """One outbound connection on its way.

    Attributes:
        id: The id ``dial`` returned.
        address: What was asked for.
        deadline: ``time.monotonic()`` by which it must connect, or ``None``.
        targets: ``(family, sockaddr)`` pairs still to try.
        sock: The socket of the attempt in progress.
        woken: A wake arrived while dialing; deliver it once open.
        error: The last failure, reported if no target connects.
        state: ``DIALING``, then ``OPENING`` (connected) or ``CLOSED``
            (failed); late events for a dial no longer dialing are ignored.
        timer: Its timeout in the loop's timer queue.
    """

    id: int
    address: Address
    deadline: float | None
    targets: list[Target] = field(default_factory=list)
    sock: socket.socket | None = None
    woken: bool = False
    error: BaseException | None = None
    state: State = State.DIALING
    timer: Timer | None = None

    @property
    def done(self) -> bool:
        """Connected or failed."""
        return self.state is not State.DIALING

    @property
    def remote(self) -> SockAddr:
        """What to report as ``remote_addr`` before a connection exists."""
        a = self.address
        return a.path if a.network == "unix" else (a.host, a.port)


# DIAL-2, UDP-7: stream schemes only
def dial_address(text: str) -> Address:
    """Parse a dial address: any stream address with a host and port.

    Raises:
        ValueError: the address is malformed, is UDP, or has no host.
    """
    a = parse_address(text)
    if a.is_udp:
        raise ValueError(f'cannot dial "{text}": dial is for tcp, tcp4, tcp6 and unix')
    if a.network != "unix" and not a.host:
        raise ValueError(f'cannot dial "{text}": a dial address needs a host')
    if a.network != "unix" and a.port == 0:
        raise ValueError(f'cannot dial "{text}": port 0 cannot be dialed')
    return a


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def needs_resolving(a: Address) -> bool:
    """Whether the host is a name (not a numeric address or a unix path)."""
    return a.network != "unix" and _literal(a.host) is None


def targets_now(a: Address) -> list[Target]:
    """Targets for an address that needs no resolving."""
    if a.network == "unix":
        path = a.path
        return [(socket.AF_UNIX, "\0" + path[1:] if path.startswith("@") else path)]
    ip = _literal(a.host)
    assert ip is not None
    if ip.version == 4:
        return [(socket.AF_INET, (a.host, a.port))]
    return [(socket.AF_INET6, (a.host, a.port, 0, 0))]


def resolve(a: Address) -> list[Target]:
    """Resolve a host name (blocking: call it off the loop).

    Raises:
        socket.gaierror: the name does not resolve.
    """
    infos = socket.getaddrinfo(a.host, a.port, _FAMILY[a.network], socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


class _Streams(Protocol):
    """What the dialer asks of `evio._streams.Streams` once a dial connects."""

    def adopt(self, sock: socket.socket, index: int, cid: int | None = None) -> Conn | None: ...

    def begin(self, c: Conn, remote: SockAddr | None, woken: bool = False) -> None: ...


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < float("inf")
    ):
        raise ValueError(
            f"dial timeout must be a positive, finite number of seconds, not {timeout!r}"
        )


class Dialer:
    """The loop's outbound connections, from request to ``opened``.

    `request` runs on any thread; everything else on the loop's thread,
    except `_resolve`, which runs on a resolver thread and only posts its
    answer back.

    Args:
        parts: The loop's parts (dial timeouts go on its deadline queue;
            requests and resolver answers arrive at its doorbell; sockets
            still connecting are in its dispatch table).
        streams: Takes a connected socket into the loop.
    """

    def __init__(self, parts: Parts, streams: _Streams) -> None:
        self.poller = parts.poller
        self.timers = parts.timers
        self.waker = parts.waker
        self.policy = parts.policy
        self.handlers = parts.handlers
        self.ids = parts.ids
        self.streams = streams
        self.dials: dict[int, Dial] = {}  # by id, until opened or failed
        self.resolver: ThreadPoolExecutor | None = None

    def request(self, addr: str, timeout: float | None) -> int:
        """`evio.Server.dial`: validate, draw an id, post the dial to the loop."""
        a = dial_address(addr)
        _check_timeout(timeout)
        cid = next(self.ids)  # next() is atomic: any thread may draw an id
        deadline = None if timeout is None else time.monotonic() + timeout
        d = Dial(cid, a, deadline)
        if not self.waker.post(partial(self._start, d),
                               before=partial(self.dials.__setitem__, cid, d)):
            raise RuntimeError(f"cannot dial {addr!r}: the server has shut down")
        return cid

    # WAKE-5
    def woken(self, cid: int) -> bool:
        """A wake for a dial in progress is kept until it opens."""
        d = self.dials.get(cid)
        if d is None:
            return False
        d.woken = True
        return True

    def _start(self, d: Dial) -> None:
        """A dial request reached the loop: resolve off the loop, or connect now."""
        if d.done:
            return
        if d.deadline is not None:
            d.timer = self.timers.at(d.deadline, partial(self._timed_out, d))
        if not needs_resolving(d.address):
            d.targets = targets_now(d.address)
            self._next(d)
            return
        if self.resolver is None:
            self.resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="evio-resolve")
        self.resolver.submit(self._resolve, d)

    def _resolve(self, d: Dial) -> None:
        """On a resolver thread: look the name up, post the answer to the loop."""
        try:
            targets: list[Target] | BaseException = resolve(d.address)
        except Exception as e:
            targets = e
        self.waker.post(partial(self._resolved, d, targets))

    def _resolved(self, d: Dial, targets: list[Target] | BaseException) -> None:
        """The resolver's answer, on the loop's thread: connect, or fail the dial."""
        if d.done:
            return  # timed out meanwhile
        if isinstance(targets, BaseException):
            self.failed(d, On.DIAL_FAILED, targets)
            return
        d.targets = targets
        self._next(d)

    def _timed_out(self, d: Dial) -> None:
        """The dial's timer fired before it connected."""
        d.timer = None
        self.failed(d, On.DIAL_FAILED, TimeoutError(f"dial {d.address.text!r} timed out"))

    # DIAL-6: addresses tried in order
    def _next(self, d: Dial) -> None:
        """Start connecting to the next target, or fail with the last error."""
        while d.targets:
            family, target = d.targets.pop(0)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as e:  # out of descriptors, family not supported
                d.error = e
                continue
            sock.setblocking(False)
            try:
                err = sock.connect_ex(target)
            except OSError as e:  # a unix path too long, and the like
                sock.close()
                d.error = e
                continue
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                d.error = OSError(err, os.strerror(err))
                continue
            try:
                self.poller.register(sock.fileno(), WRITE)
            except (ValueError, OSError) as e:  # select's FD_SETSIZE
                sock.close()
                d.error = e
                continue
            if err == 0:  # connected at once (unix sockets usually are)
                try:
                    remote = sock.getpeername()
                except OSError:
                    remote = d.remote
                self._open(d, sock, remote)
            else:
                d.sock = sock
                self.handlers[sock.fileno()] = (self.connected, d)
            return
        self.failed(d, On.DIAL_FAILED, d.error or OSError(errno.EHOSTUNREACH,
                                                          "no address to dial"))

    # DIAL-3: opened once connected
    def connected(self, d: Dial, mask: int) -> None:
        """The socket of a dial in progress became writable: did it connect?"""
        sock = d.sock
        if sock is None or d.done:
            return
        d.sock = None
        fd = sock.fileno()
        self.handlers.pop(fd, None)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            try:
                remote = sock.getpeername()
            except OSError as e:  # reset between connect and now
                err = e.errno or errno.ECONNRESET
            else:
                self._open(d, sock, remote)
                return
        self.poller.unregister(fd)
        sock.close()
        d.error = OSError(err, os.strerror(err))
        self._next(d)

    def _open(self, d: Dial, sock: socket.socket, remote: SockAddr) -> None:
        """Connected: the socket becomes a stream connection with the dial's id."""
        move(d, On.CONNECTED)
        self.timers.cancel(d.timer)
        c = self.streams.adopt(sock, -1, d.id)
        del self.dials[d.id]  # after adopt: wake() always finds the id
        assert c is not None
        self.streams.begin(c, remote, d.woken)

    # DIAL-4, DIAL-5: one opened and one closed per id
    def failed(self, d: Dial, on: On, err: BaseException) -> None:
        """Report a dial that will not connect: opened (closing), then closed."""
        if d.done:
            return
        move(d, on)
        self.timers.cancel(d.timer)
        if d.sock is not None:
            fd = d.sock.fileno()
            self.handlers.pop(fd, None)
            self.poller.unregister(fd)
            d.sock.close()
            d.sock = None
        self.dials.pop(d.id, None)
        self.policy.unopened(d.id, Info(True, -1, None, d.remote), err)

    def shut(self, cid: int) -> None:
        """Shutdown: fail a dial in progress with ``ConnectionAbortedError``."""
        self.failed(self.dials[cid], On.SHUTDOWN, ConnectionAbortedError("the server shut down"))

    # DIAL-7: unconnected dials closed on shutdown
    def close(self) -> None:
        """Stop the resolver threads (answers still coming are dropped)."""
        if self.resolver is not None:
            self.resolver.shutdown(wait=False, cancel_futures=True)
