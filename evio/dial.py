"""Dial: outbound connections on the loop, without ever blocking it.

Theory of operation
-------------------
``server.dial(addr)`` returns an id at once, from any thread, and the
connection then lives on the loop like an accepted one.  Three steps could
block, and each is moved off the loop's critical path:

1. **Name resolution.**  ``getaddrinfo`` is a blocking library call (it may
   wait seconds for DNS).  A host that is not already a numeric address is
   resolved on a small pool of worker threads; the answer comes back to the
   loop through the wake doorbell (`evio.wake`).  Numeric addresses and
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
import heapq
import ipaddress
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .addresses import Address, parse_address
from .events import Action, Events, Info, split_action
from .pollers import WRITE, Poller
from .wake import Waker

__all__ = ["Dial", "Dialing", "dial_address", "needs_resolving", "resolve", "targets_now"]

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
        done: Opened or failed; late events for it are ignored.
    """

    id: int
    address: Address
    deadline: float | None
    targets: list[tuple[int, Any]] = field(default_factory=list)
    sock: socket.socket | None = None
    woken: bool = False
    error: BaseException | None = None
    done: bool = False

    @property
    def remote(self) -> Any:
        """What to report as ``remote_addr`` before a connection exists."""
        a = self.address
        return a.path if a.network == "unix" else (a.host, a.port)


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


def targets_now(a: Address) -> list[tuple[int, Any]]:
    """Targets for an address that needs no resolving."""
    if a.network == "unix":
        path = a.path
        return [(socket.AF_UNIX, "\0" + path[1:] if path.startswith("@") else path)]
    ip = _literal(a.host)
    assert ip is not None
    if ip.version == 4:
        return [(socket.AF_INET, (a.host, a.port))]
    return [(socket.AF_INET6, (a.host, a.port, 0, 0))]


def resolve(a: Address) -> list[tuple[int, Any]]:
    """Resolve a host name (blocking: call it off the loop).

    Raises:
        socket.gaierror: the name does not resolve.
    """
    infos = socket.getaddrinfo(a.host, a.port, _FAMILY[a.network], socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


class Dialing:
    """The loop's side of dialing, mixed into the loop.

    Everything here runs on the loop's thread, except `_resolve`, which
    runs on a resolver thread and only posts its answer back.
    """

    ev: Events
    poller: Poller
    waker: Waker
    stopping: bool
    dials: dict[int, Dial]  # by id, until opened or failed
    connecting: dict[int, Dial]  # by descriptor, while connecting
    timers: list[tuple[float, int, Dial]]  # dial deadlines (a heap)
    resolver: ThreadPoolExecutor | None

    def _open(self, sock: socket.socket, remote: Any, index: int,
              dial: Dial | None = None) -> None:
        raise NotImplementedError  # the loop's: adopt a connected socket

    def start_dial(self, d: Dial) -> None:
        """A dial request reached the loop: resolve off the loop, or connect now."""
        if d.done:
            return
        if d.deadline is not None:
            heapq.heappush(self.timers, (d.deadline, d.id, d))
        if not needs_resolving(d.address):
            d.targets = targets_now(d.address)
            self._dial_next(d)
            return
        if self.resolver is None:
            self.resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="evio-resolve")
        self.resolver.submit(self._resolve, d)

    def _resolve(self, d: Dial) -> None:
        """On a resolver thread: look the name up, post the answer to the loop."""
        try:
            targets: list[tuple[int, Any]] | BaseException = resolve(d.address)
        except Exception as e:
            targets = e
        self.waker.post(partial(self._resolved, d, targets))

    def _resolved(self, d: Dial, targets: list[tuple[int, Any]] | BaseException) -> None:
        if d.done:
            return  # timed out meanwhile
        if isinstance(targets, BaseException):
            self._dial_failed(d, targets)
            return
        d.targets = targets
        self._dial_next(d)

    def _dial_next(self, d: Dial) -> None:
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
                self._open(sock, remote, -1, d)
            else:
                d.sock = sock
                self.connecting[sock.fileno()] = d
            return
        self._dial_failed(d, d.error or OSError(errno.EHOSTUNREACH, "no address to dial"))

    def _connected(self, d: Dial) -> None:
        """The socket of a dial in progress became writable: did it connect?"""
        sock = d.sock
        assert sock is not None
        d.sock = None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            try:
                remote = sock.getpeername()
            except OSError as e:  # reset between connect and now
                err = e.errno or errno.ECONNRESET
            else:
                self._open(sock, remote, -1, d)
                return
        self.poller.unregister(sock.fileno())
        sock.close()
        d.error = OSError(err, os.strerror(err))
        self._dial_next(d)

    def _dial_failed(self, d: Dial, err: BaseException) -> None:
        """Report a dial that will not connect: opened (closing), then closed."""
        if d.done:
            return
        d.done = True
        if d.sock is not None:
            fd = d.sock.fileno()
            self.connecting.pop(fd, None)
            self.poller.unregister(fd)
            d.sock.close()
            d.sock = None
        self.dials.pop(d.id, None)
        ev = self.ev
        if ev.opened is not None:
            try:
                ev.opened(d.id, Info(True, -1, None, d.remote))
            except Exception:
                log.exception("opened raised for failed dial %d; ignored", d.id)
        if ev.closed is not None:
            try:
                action = split_action(ev.closed(d.id, err), "closed")
            except Exception:
                log.exception("closed raised for dial %d; ignored", d.id)
                return
            if action is Action.SHUTDOWN:
                self.stopping = True
