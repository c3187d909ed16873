"""Inherited sockets: ``fd://N``, socket objects, systemd socket activation.

Owns: sockets the server did not bind itself: ``fd://N``, socket objects,
systemd socket activation.

Theory of operation
-------------------
A server does not always bind its own sockets.  systemd binds port 80 as
root and starts the server unprivileged with the socket already open
(*socket activation*); a supervisor hands a listening socket to the new
process of a zero-downtime upgrade; a test fixture binds port 0 first to
know the port.  In each case the server receives a descriptor that is
already bound -- and maybe listening -- and must take it as it is.

`evio.serve` therefore takes, beside address strings, a bound
``socket.socket`` or the string ``fd://N`` for an inherited descriptor.
What the socket *is* -- TCP or UDP, IPv4, IPv6 or unix -- is read off the
descriptor (``SO_DOMAIN``/``SO_TYPE``, as ``socket.socket(fileno=...)``
does), never guessed, and checked before anything is touched: a
descriptor that is not open, not a socket, or not bound is a
``ValueError`` naming it (rule ADDR-12).  Then evio owns it: a stream
socket not yet listening is put into listening, every one is made
non-blocking and non-inheritable, and it is closed when `evio.serve`
returns.  A unix socket file evio did not create is never removed.

systemd's protocol (``sd_listen_fds(3)``) is three environment variables:
``LISTEN_PID`` (the process they are meant for -- a child that inherits
the environment must not take them), ``LISTEN_FDS`` (how many, starting
at descriptor 3) and ``LISTEN_FDNAMES`` (colon-separated names, from
``FileDescriptorName=``).  `listen_fds` reads them and returns ``fd://N``
addresses to pass to `evio.serve`.

With ``loops`` > 1 an inherited socket is shared by every loop (the kernel
balances accepts on one socket), like a unix socket.
"""

from __future__ import annotations

import os
import socket

__all__ = ["LISTEN_FDS_START", "adopt", "describe", "listen_fds"]

LISTEN_FDS_START = 3
"""The first descriptor systemd passes (``SD_LISTEN_FDS_START``)."""


def describe(fd: int, text: str) -> tuple[str, str, int, str]:
    """What inherited descriptor ``fd`` is: ``(network, host, port, path)``.

    The descriptor is looked at through a duplicate; it is not changed.

    Raises:
        ValueError: ``fd`` is not an open descriptor, not a socket, not a
            stream or datagram socket of a family evio serves, or not bound.
    """
    def bad(why: str) -> ValueError:
        return ValueError(f'bad address "{text}": {why}')

    try:
        dup = os.dup(fd)
    except OSError:
        raise bad(f"descriptor {fd} is not open") from None
    try:
        probe = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        raise bad(f"descriptor {fd} is not a socket") from None
    with probe:
        family, kind = probe.family, probe.type
        if kind not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            raise bad(f"descriptor {fd} is neither a stream nor a datagram socket")
        name = probe.getsockname()
    if family == socket.AF_UNIX:
        if kind != socket.SOCK_STREAM:
            raise bad(f"descriptor {fd} is a unix datagram socket; evio serves unix streams")
        path = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
        if not path:
            raise bad(f"descriptor {fd} is a unix socket that is not bound")
        if path.startswith("\0"):
            path = "@" + path[1:]
        return "unix", "", 0, path
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise bad(f"descriptor {fd} is a socket of family {family!r}, not IP or unix")
    if name[1] == 0:
        raise bad(f"descriptor {fd} is not bound (bind it, or let evio bind an address)")
    version = "4" if family == socket.AF_INET else "6"
    network = ("tcp" if kind == socket.SOCK_STREAM else "udp") + version
    return network, name[0], name[1], ""


def adopt(fd: int, backlog: int) -> socket.socket:
    """Take inherited descriptor ``fd`` (already `describe`\\ d) into a socket:
    listening if it is a stream, non-blocking, not inherited by children.

    Raises:
        OSError: ``listen`` failed.
    """
    sock = socket.socket(fileno=fd)
    try:
        os.set_inheritable(fd, False)
        if sock.type == socket.SOCK_STREAM and not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_fds(name: str | None = None, *, unset_environment: bool = False) -> list[str]:
    """The sockets systemd passed this process, as addresses for `evio.serve`.

    Reads ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` (systemd's
    socket activation, ``sd_listen_fds(3)``). Example::

        evio.serve(events, *evio.listen_fds())

    Args:
        name: Only the sockets whose ``FileDescriptorName=`` is this.
        unset_environment: Remove the three variables afterwards, so that
            child processes do not see them (the descriptors themselves are
            not inherited once `evio.serve` has them).

    Returns:
        ``["fd://3", "fd://4", ...]`` in the order systemd passed them;
        empty when the process was not socket-activated (``LISTEN_PID`` is
        unset or names another process).

    Raises:
        ValueError: ``LISTEN_FDS`` or ``LISTEN_PID`` is not a number.
    """
    env = os.environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    names = env.get("LISTEN_FDNAMES", "").split(":")
    if unset_environment:
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(var, None)
    if pid is None or count is None:
        return []
    try:
        mine, n = int(pid) == os.getpid(), int(count)
    except ValueError:
        raise ValueError(f"LISTEN_PID={pid!r} and LISTEN_FDS={count!r} must be numbers") from None
    if not mine:
        return []
    out = []
    for i in range(max(n, 0)):
        if name is not None and (i >= len(names) or names[i] != name):
            continue
        out.append(f"fd://{LISTEN_FDS_START + i}")
    return out
