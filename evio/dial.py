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

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from .addresses import Address, parse_address

__all__ = ["Dial", "dial_address", "needs_resolving", "resolve", "targets_now"]

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
