"""Addresses: parse ``scheme://address?options`` and bind listeners.

Owns: turning an address string (or an inherited socket) into a bound
listener, and every error on the way there (`BindError`).

Theory of operation
-------------------
An evio address is a small URL.  The scheme names the network (``tcp``,
``tcp4``, ``tcp6``, ``unix``, ``udp``, ``udp4``, ``udp6``), the part after
``://`` is what ``bind`` takes, and the query string carries options.
Without ``://`` the whole string is a TCP address, so ``":5000"`` and
``"tcp://:5000"`` mean the same thing.

Two decisions shape this module:

1. **Parse everything before binding anything.**  ``serve()`` turns every
   address into an `Address` record first, so a typo in the third
   address is a ``ValueError`` that names it -- raised before the first one
   is bound.  Then it binds in order; if any bind fails, everything bound so
   far is closed (and its unix socket file removed) before the error
   propagates.  Nothing is left half-listening.
2. **Unix socket files are ours to clean, but only ours.**  A stale socket
   file left by a crashed server is removed before binding; a path that
   exists and is *not* a socket is refused rather than deleted.  The file
   we create is removed when the server stops.

3. **A failure names the address, and the fix where there is one.**  Every
   failure to bind, listen or prepare a unix path is one exception class,
   `BindError` (an ``OSError`` with the errno the system gave), whose
   message names the address as written and what it resolved to, and says
   what to do for the common causes: a port another process holds, a
   privileged port, an address no interface has, a missing directory, a
   live server on the unix path (rule ADDR-11).

Name resolution here is synchronous: it happens once, at start-up, before
the loop runs, so it cannot stall a connection.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import parse_qsl

from ._inherit import adopt, describe

__all__ = [
    "Address",
    "BindError",
    "Listener",
    "SockAddr",
    "Target",
    "bind_all",
    "inherited",
    "parse_address",
]

SockAddr: TypeAlias = tuple[str, int] | tuple[str, int, int, int] | str | bytes
"""A socket address as the ``socket`` module gives it: ``(host, port)`` for
IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6, a path for a unix
socket (``""`` for an unnamed one; ``bytes`` for a Linux abstract one)."""
Target: TypeAlias = tuple[int, SockAddr | tuple[int, bytes]]
"""A socket family and an address of it to bind or connect to, as
``getaddrinfo`` gives them."""

_STREAM = {"tcp": socket.AF_UNSPEC, "tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}
_DGRAM = {"udp": socket.AF_UNSPEC, "udp4": socket.AF_INET, "udp6": socket.AF_INET6}
DEFAULT_UNIX_MODE = 0o600
"""Unix socket files are owner-only unless the address says ``?mode=``."""
SUN_PATH_MAX = 108 if sys.platform.startswith("linux") else 104
"""The most bytes a unix socket path may have (``sun_path``'s size)."""
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


@dataclass(frozen=True, slots=True)
class Address:
    """One parsed listen address.

    Attributes:
        text: The address exactly as the user wrote it (used in errors).
        network: ``"tcp"``, ``"tcp4"``, ``"tcp6"``, ``"udp"``, ``"udp4"``,
            ``"udp6"`` or ``"unix"`` (without any ``-net`` suffix).
        host: Host part for IP networks (``""`` means every interface).
        port: Port for IP networks (``0`` asks the OS to choose).
        path: Filesystem path for ``unix`` (a leading ``@`` names a Linux
            abstract socket).
        reuseport: Whether ``SO_REUSEPORT`` is set.
        portable: Whether the scheme ended in ``-net``, asking for the
            portable fallback poller.
        mode: For ``unix``: the socket file's permissions (``?mode=0660``);
            owner-only (0600) unless given.
        fd: An inherited descriptor (``fd://N``, a socket object) that is
            taken as it is instead of bound; -1 for an address to bind.
            ``network``, ``host``, ``port`` and ``path`` then describe it.
    """

    text: str
    network: str
    host: str = ""
    port: int = 0
    path: str = ""
    reuseport: bool = False
    portable: bool = False
    mode: int = 0o600
    fd: int = -1

    @property
    def is_udp(self) -> bool:
        """True for ``udp``, ``udp4`` and ``udp6``."""
        return self.network in _DGRAM


def parse_address(text: str) -> Address:  # ADDR-1, ADDR-2, ADDR-4, ADDR-5, ADDR-6  # noqa: C901 -- one branch per case of the grammar
    """Parse one evio address.

    Args:
        text: ``scheme://address[?reuseport=true]``, a bare ``host:port``
            meaning TCP, or ``fd://N`` for an inherited, bound socket
            (rule ADDR-12).

    Returns:
        The parsed `Address`.

    Raises:
        ValueError: the scheme, host, port or an option is not valid; the
            message names the whole address.
    """
    if not isinstance(text, str):
        raise ValueError(f"address must be a string, not {type(text).__name__}: {text!r}")

    def bad(why: str) -> ValueError:
        return ValueError(f'bad address "{text}": {why}')

    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    scheme = scheme.lower()
    if scheme == "fd":
        if not (rest.isascii() and rest.isdigit() and len(rest) < 10):
            raise bad("fd:// needs a descriptor number, like fd://3")
        fd = int(rest)
        network, host, port, path = describe(fd, text)
        return Address(text, network, host=host, port=port, path=path, fd=fd)
    portable = scheme.endswith("-net")
    network = scheme[: -len("-net")] if portable else scheme
    if network not in _STREAM and network not in _DGRAM and network != "unix":
        raise bad(f"unknown scheme {scheme!r} "
                  f"(use tcp, tcp4, tcp6, udp, udp4, udp6, unix or fd)")

    rest, _, query = rest.partition("?")
    reuseport = False
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as e:
        raise bad(f"cannot parse options {query!r}") from e
    mode = DEFAULT_UNIX_MODE
    for key, value in pairs:
        if key == "mode" and network == "unix":
            if not (value.isascii() and value.isdigit() and set(value) <= set("01234567")):
                raise bad(f"mode must be octal permissions like 0600, not {value!r}")
            mode = int(value, 8)
            if mode > 0o777:
                raise bad(f"mode {value} is more than permission bits (0777)")
            continue
        if key != "reuseport":
            raise bad(
                f"unknown option {key!r} (options: reuseport; mode for unix addresses)"
            )
        v = value.lower()
        if v in _TRUE:
            reuseport = True
        elif v in _FALSE:
            reuseport = False
        else:
            raise bad(f"reuseport must be true/false, yes/no or 1/0, not {value!r}")

    if network == "unix":
        if not rest:
            raise bad("a unix address needs a path")
        if "\0" in rest:
            raise bad("a unix path cannot contain NUL")
        try:
            size = len(os.fsencode(rest))  # "@name" (abstract): the "@" becomes a NUL byte
        except UnicodeEncodeError as e:
            raise bad("the unix path cannot be encoded for the file system") from e
        if size > SUN_PATH_MAX:
            raise bad(f"a unix path is at most {SUN_PATH_MAX} bytes here, this one is {size}")
        return Address(
            text, network, path=rest, reuseport=reuseport, portable=portable, mode=mode
        )

    host, port = _split_host_port(rest, bad)
    if network.endswith("4") and ":" in host:
        raise bad(f"{host!r} is not an IPv4 host")
    if network.endswith("6") and _is_ipv4_literal(host):
        raise bad(f"{host!r} is not an IPv6 host")
    return Address(text, network, host=host, port=port, reuseport=reuseport, portable=portable)


def inherited(sock: socket.socket) -> Address:
    """The `Address` of a bound socket object given to `evio.serve` (ADDR-12).

    Raises:
        ValueError: the socket is closed, unbound, or of a kind evio does
            not serve.
    """
    fd = sock.fileno()
    if fd < 0:
        raise ValueError(f"cannot serve {sock!r}: the socket is closed")
    text = f"fd://{fd}"
    network, host, port, path = describe(fd, text)
    return Address(text, network, host=host, port=port, path=path, fd=fd)


def _is_ipv4_literal(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _split_host_port(rest: str, bad: Callable[[str], ValueError]) -> tuple[str, int]:  # ADDR-3
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0 or not rest[close + 1 :].startswith(":"):
            raise bad("an IPv6 host must be written [host]:port")
        host, port_text = rest[1:close], rest[close + 2 :]
        if not host:
            raise bad("empty IPv6 host")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise bad("missing :port")
        if ":" in host:
            raise bad("an IPv6 host must be written [host]:port")
    if not port_text.isdigit() or not port_text.isascii():
        raise bad(f"port {port_text!r} is not a number")
    digits = port_text.lstrip("0") or "0"
    if len(digits) > 5 or int(digits) > 65535:  # int() of thousands of digits would raise
        shown = digits if len(digits) <= 12 else digits[:12] + "..."
        raise bad(f"port {shown} is out of range (0-65535)")
    return host, int(digits)


class BindError(OSError):
    """A listen address could not be bound, listened on, or prepared (ADDR-11).

    An ``OSError``: ``errno`` is the system's (``EADDRINUSE``, ``EACCES``,
    ``ENOENT`` ...), and the message names the address and, for the common
    causes, the fix.

    Attributes:
        address: The address as it was written, e.g. ``"tcp://:80"``.
    """

    address: str

    def __init__(self, err: int, message: str, address: str) -> None:
        super().__init__(err, message)
        self.address = address

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.strerror}"

    def __reduce__(self) -> tuple[type[BindError], tuple[int | None, str | None, str]]:
        # Rebuilt in a supervisor from a loop's report.
        return (BindError, (self.errno, self.strerror, self.address))


def _failed(a: Address, e: OSError, where: object, doing: str = "bind") -> BindError:
    """The `BindError` for ``e``, raised while ``doing`` ``a`` (at ``where``)."""
    code = e.errno if e.errno is not None else errno.EINVAL
    shown = f'"{a.text}"' if str(where) in a.text else f'"{a.text}" ({_show(where)})'
    what = os.strerror(code)
    fix = ""
    if a.network == "unix":
        parent = os.path.dirname(os.path.abspath(a.path)) if not a.path.startswith("@") else ""
        if code == errno.ENOENT:
            fix = f"; the directory {parent!r} does not exist: create it first"
        elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = f"; this process may not create files in {parent!r}"
        elif code == errno.EADDRINUSE:
            fix = "; another server uses this path: stop it or choose another path"
    elif code == errno.EADDRINUSE:
        fix = ("; another socket is bound to it (find it with `ss -ltnup`): stop it, choose "
               "another port, or pass ?reuseport=1 to every server that shares it")
    elif code in (errno.EACCES, errno.EPERM) and 0 < a.port < 1024:
        fix = ("; ports below 1024 are privileged: run as root, grant the program "
               "CAP_NET_BIND_SERVICE, use a port of 1024 or more, or let a supervisor bind "
               "it and pass the socket in (evio.listen_fds(), fd://N)")
    elif code == errno.EADDRNOTAVAIL:
        fix = "; no network interface of this machine has that address"
    return BindError(code, f"cannot {doing} {shown}: {what}{fix}", a.text)


def _show(where: object) -> str:
    if isinstance(where, tuple) and len(where) >= 2:
        host = str(where[0])
        return f"[{host}]:{where[1]}" if ":" in host else f"{host}:{where[1]}"
    return str(where)


@dataclass(slots=True)
class Listener:
    """A bound listening (or, for UDP, receiving) socket.

    Attributes:
        address: What the user asked for.
        sock: The non-blocking socket.
        bound: The real local address (``getsockname()``), e.g. with the
            port the OS chose for port 0.
        unlink: For unix sockets, the file to remove when the server stops.
    """

    address: Address
    sock: socket.socket
    bound: SockAddr
    unlink: str | None = None

    def close(self) -> None:  # ADDR-10: remove the unix socket file we created
        """Close the socket and remove the unix socket file it created."""
        self.sock.close()
        if self.unlink is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unlink)
            self.unlink = None


def bind_all(addresses: list[Address], backlog: int = 1024) -> list[Listener]:  # ADDR-7, ADDR-8
    """Resolve every address, then bind every one, in order; all or nothing.

    Raises:
        ValueError: a host name cannot be resolved; nothing has been bound.
        BindError: a bind or listen failed (address in use, permission, a
            unix path that exists and is not a socket, a missing directory).
            Everything bound before it has been closed again.
    """
    plans = [_plan(a) for a in addresses]  # name resolution: may raise ValueError
    done: list[Listener] = []
    try:
        for a, plan in zip(addresses, plans, strict=True):
            done.append(_bind(a, plan, backlog))
    except BaseException:
        for listener in done:
            listener.close()
        raise
    return done


def _plan(a: Address) -> Target:
    """The socket family and bind address for ``a``, resolving its host name.

    A name that resolves to several addresses binds the first one
    ``getaddrinfo`` returns.
    """
    if a.network == "unix" or a.fd >= 0:
        return socket.AF_UNIX, a.path
    socktype = socket.SOCK_DGRAM if a.is_udp else socket.SOCK_STREAM
    want = _STREAM.get(a.network, _DGRAM.get(a.network, socket.AF_UNSPEC))
    if a.host == "":
        if want == socket.AF_INET or (want == socket.AF_UNSPEC and not socket.has_ipv6):
            return socket.AF_INET, ("0.0.0.0", a.port)
        return socket.AF_INET6, ("::", a.port)
    try:
        infos = socket.getaddrinfo(a.host, a.port, want, socktype, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f'bad address "{a.text}": cannot resolve {a.host!r}: {e}') from e
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _bind(a: Address, plan: Target, backlog: int) -> Listener:
    if a.fd >= 0:  # inherited: taken as it is (ADDR-12); its file is not ours
        try:
            sock = adopt(a.fd, backlog)
        except OSError as e:
            raise _failed(a, e, a.text, "listen on") from e
        return Listener(a, sock, a.path if a.network == "unix" else sock.getsockname())
    if a.network == "unix":
        return _bind_unix(a, backlog)
    family, sockaddr = plan
    socktype = socket.SOCK_DGRAM if a.is_udp else socket.SOCK_STREAM
    sock = socket.socket(family, socktype)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, not a.is_udp)  # LOOPS-3: not UDP
        if a.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # "tcp://:port" means every interface, IPv4 included; "tcp6"
            # means IPv6 only, whatever the system default says.
            v6only = 0 if a.network in ("tcp", "udp") else 1
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind(sockaddr)
        if socktype == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise _failed(a, e, sockaddr) from e
    except BaseException:
        sock.close()
        raise
    return Listener(a, sock, sock.getsockname())


def _bind_unix(a: Address, backlog: int) -> Listener:  # ADDR-9, REL-5: unix path, file mode 0600
    path = a.path
    abstract = path.startswith("@")
    target = "\0" + path[1:] if abstract else path
    if not abstract:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _failed(a, e, path) from e
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise BindError(errno.EEXIST, f'cannot bind "{a.text}": {path!r} exists and '
                                f'is not a socket: remove it or choose another path', a.text)
            if _socket_is_live(path):
                raise BindError(errno.EADDRINUSE, f'cannot bind "{a.text}": a server is '
                                f'listening there: stop it or choose another path', a.text)
            try:
                os.unlink(path)  # a stale socket file from an earlier server
            except OSError as e:
                raise _failed(a, e, path, "remove the stale socket file of") from e
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(target)
        if not abstract:
            # Before listen(): nobody can connect until the mode is right.
            os.chmod(path, a.mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise _failed(a, e, path) from e
    except BaseException:
        sock.close()
        raise
    return Listener(a, sock, path, unlink=None if abstract else path)


def _socket_is_live(path: str) -> bool:
    """Whether a server is listening on the unix socket ``path``.

    Only a refused connection means nobody is there. A connection that would
    block (a full backlog) or times out means a live but busy server.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # EAGAIN and the like: someone is there, just busy
    finally:
        probe.close()
    return True
