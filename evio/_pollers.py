"""Pollers: one small interface over epoll, kqueue, poll and select.

Owns: the one system interface the loop waits on, over epoll, kqueue, poll
and select.

Theory of operation
-------------------
Every readiness API answers the same question -- "which of these descriptors
can I read or write without blocking?" -- but each spells it differently:

* ``epoll`` (Linux) keeps the interest set in the kernel.  We register a
  descriptor once and change its mask with ``modify``; ``poll`` costs time in
  the number of *ready* descriptors, not registered ones.  `READ` and
  `WRITE` are its own ``EPOLLIN`` and ``EPOLLOUT``, so its reports need no
  translation unless a hang-up or error bit is set.
* ``kqueue`` (BSD, macOS) keeps one *filter* per direction.  Read and write
  interest are two separate kernel records, so changing a mask means adding
  or deleting the filter that changed.  A descriptor can come back twice in
  one batch (once per filter); we merge those.
* ``poll`` and ``select`` keep the interest set in user space and hand it to
  the kernel on every call.  They are the portable fallback: slower with many
  descriptors, and ``select`` cannot see descriptors numbered ``FD_SETSIZE``
  (1024) or more.

The trap they share: hang-up and error conditions are reported even when not
asked for, and they are reported *instead of* read or write readiness.  A
loop that only looks at "readable" misses a peer that reset while we were
waiting to write, and spins.  So every backend translates its native flags in
one place, and **hang-up or error wakes both directions**: the loop then
tries the read or the write, and the system call itself tells it what went
wrong.

The interface (``register``/``modify``/``unregister``/``poll``/``close``)
speaks only two bits, `READ` and `WRITE`.  The loop computes the
wanted mask from a connection's state and calls ``modify`` only when it
changed; backends never track state the loop could derive.
"""

from __future__ import annotations

import contextlib
import errno
import math
import operator
import os
import select
import sys
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

# kqueue exists only on BSD and macOS; typeshed hides it elsewhere, so the
# kqueue backend reaches it through an untyped alias.
_kq: Any = select

__all__ = [
    "READ",
    "WRITE",
    "EpollPoller",
    "KqueuePoller",
    "PollPoller",
    "Poller",
    "PollerName",
    "SelectPoller",
    "available_pollers",
    "default_poller_name",
    "make_poller",
]

PollerName: TypeAlias = Literal["epoll", "kqueue", "poll", "select"]
"""The poller names `evio.serve` takes (those of this machine: `available_pollers`)."""

READ = 1
"""Interest in (or readiness for) reading; also set on hang-up and error."""
WRITE = 4
"""Interest in (or readiness for) writing; also set on hang-up and error.

(The values are epoll's ``EPOLLIN`` and ``EPOLLOUT``, so the epoll backend
translates only the rare report that carries another bit.)"""

Ready = list[tuple[int, int]]


# POLL-4: never round a positive timeout to 0
def _timeout_ms(timeout: float | None) -> int:
    """Seconds (or ``None`` for "forever") as whole milliseconds, rounded up.

    Rounding up matters: a timer due in 0.4 ms must not become a 0 ms poll
    that returns at once and spins until the timer is due.
    """
    if timeout is None:
        return -1
    return max(0, math.ceil(timeout * 1000))


# POLL-1
class Poller:
    """The interface every backend implements.

    A poller watches descriptors for `READ` and `WRITE`
    readiness. It is used from one thread only (the loop's).

    Attributes:
        name: The backend's name, as accepted by `make_poller()`.
    """

    name = "abstract"

    def register(self, fd: int, mask: int) -> None:
        """Start watching ``fd`` for the directions in ``mask``.

        Raises:
            ValueError: if this backend cannot watch ``fd`` (``select``
                above ``FD_SETSIZE``).
        """
        raise NotImplementedError

    def modify(self, fd: int, mask: int) -> None:
        """Replace the directions watched for an already registered ``fd``."""
        raise NotImplementedError

    # POLL-3
    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``. Unknown or already-closed descriptors are ignored."""
        raise NotImplementedError

    def poll(self, timeout: float | None) -> Ready:
        """Wait up to ``timeout`` seconds (``None``: no limit; 0 or less: not
        at all) for readiness.

        Returns:
            A list of ``(fd, mask)`` pairs, each descriptor at most once.
            An interrupted wait (``EINTR``) returns an empty list.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend's own descriptor, if it has one."""

    # POLL-9
    def waiter(self) -> Callable[[float | None], Ready]:
        """What the loop calls once per turn instead of `poll`.

        It takes a timeout of 0 or more seconds, or ``None``, and answers as
        `poll` does, except that a mask may also carry the backend's own
        hang-up or error bits (any bit above ``READ | WRITE``), which the
        loop treats as ``READ | WRITE``.  The default is `poll` itself; the
        epoll backend returns epoll's own ``poll``, a call into C with no
        Python frame around it.
        """
        return self.poll


_flags = operator.itemgetter(1)
"""The flags of one ``(fd, flags)`` report."""


class _Translation(dict[int, int]):
    """Native readiness flags -> our mask, computed once per distinct value.

    Only a handful of flag combinations ever occur, so after the first few
    polls translating an event is one dictionary lookup.
    """

    def __init__(self, compute: Callable[[int], int]) -> None:
        super().__init__()
        self._compute = compute

    def __missing__(self, native: int) -> int:
        mask = self[native] = self._compute(native)
        return mask


class EpollPoller(Poller):
    """Linux ``epoll``: the kernel keeps the interest set."""

    name = "epoll"

    def __init__(self) -> None:
        self._ep = select.epoll()
        # Our masks are epoll's own flags (READ is EPOLLIN, WRITE EPOLLOUT),
        # and no other flag is asked for: the end of the peer's stream shows
        # as readable, and a read finds it.  Only a hang-up or an error,
        # which epoll always reports, adds a bit that needs translating.
        assert (READ, WRITE) == (select.EPOLLIN, select.EPOLLOUT)
        hup = select.EPOLLHUP | select.EPOLLERR
        self._ours = _Translation(
            lambda ev: READ | WRITE if ev & hup
            else (READ if ev & (select.EPOLLIN | select.EPOLLPRI) else 0)
            | (WRITE if ev & select.EPOLLOUT else 0)
        )

    def register(self, fd: int, mask: int) -> None:
        self._ep.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self._ep.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        # ENOENT / EBADF: already gone (closed elsewhere); nothing to undo.
        with contextlib.suppress(OSError, ValueError):
            self._ep.unregister(fd)

    def poll(self, timeout: float | None) -> Ready:
        try:
            native = self._ep.poll(-1 if timeout is None else max(0.0, timeout))
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            return []
        # Most reports are already ours: finding one that is not is a scan
        # in C, cheaper than building a new list every turn.
        if native and max(map(_flags, native)) > READ | WRITE:
            ours = self._ours
            return [(fd, ours[ev]) for fd, ev in native]
        return native

    def waiter(self) -> Callable[[float | None], Ready]:
        return self._ep.poll  # our masks are its flags; a hang-up or error adds a bit

    def close(self) -> None:
        self._ep.close()


class KqueuePoller(Poller):
    """BSD/macOS ``kqueue``: one kernel filter per direction."""

    name = "kqueue"

    def __init__(self) -> None:
        self._kq = _kq.kqueue()
        self._masks: dict[int, int] = {}

    def _change(self, fd: int, old: int, new: int) -> None:
        changes = []
        for bit, filt in ((READ, _kq.KQ_FILTER_READ), (WRITE, _kq.KQ_FILTER_WRITE)):
            if new & bit and not old & bit:
                changes.append(_kq.kevent(fd, filt, _kq.KQ_EV_ADD))
            elif old & bit and not new & bit:
                changes.append(_kq.kevent(fd, filt, _kq.KQ_EV_DELETE))
        if changes:
            self._kq.control(changes, 0, 0)
        self._masks[fd] = new

    def register(self, fd: int, mask: int) -> None:
        self._change(fd, 0, mask)

    def modify(self, fd: int, mask: int) -> None:
        self._change(fd, self._masks.get(fd, 0), mask)

    def unregister(self, fd: int) -> None:
        old = self._masks.get(fd, 0)
        with contextlib.suppress(OSError):  # closing a descriptor removed its filters
            self._change(fd, old, 0)
        self._masks.pop(fd, None)

    def poll(self, timeout: float | None) -> Ready:
        n = max(1, len(self._masks) * 2)
        try:
            events = self._kq.control(None, n, None if timeout is None else max(0.0, timeout))
        except InterruptedError:  # pragma: no cover
            return []
        merged: dict[int, int] = {}
        for ev in events:
            m = READ if ev.filter == _kq.KQ_FILTER_READ else WRITE
            if ev.flags & (_kq.KQ_EV_EOF | _kq.KQ_EV_ERROR):
                m = READ | WRITE
            merged[ev.ident] = merged.get(ev.ident, 0) | m
        return list(merged.items())

    def close(self) -> None:
        self._kq.close()


class PollPoller(Poller):
    """POSIX ``poll``: the interest set travels with every call."""

    name = "poll"

    def __init__(self) -> None:
        self._p = select.poll()
        self._to_native = {
            0: 0,
            READ: select.POLLIN | select.POLLPRI,
            WRITE: select.POLLOUT,
            READ | WRITE: select.POLLIN | select.POLLPRI | select.POLLOUT,
        }
        self._hup = select.POLLHUP | select.POLLERR | select.POLLNVAL

    def register(self, fd: int, mask: int) -> None:
        self._p.register(fd, self._to_native[mask])

    def modify(self, fd: int, mask: int) -> None:
        self._p.modify(fd, self._to_native[mask])

    def unregister(self, fd: int) -> None:
        with contextlib.suppress(KeyError):  # never registered, or already removed
            self._p.unregister(fd)

    def poll(self, timeout: float | None) -> Ready:
        try:
            native = self._p.poll(_timeout_ms(timeout))
        except InterruptedError:  # pragma: no cover
            return []
        hup = self._hup
        rd = select.POLLIN | select.POLLPRI
        out: Ready = []
        for fd, ev in native:
            if ev & hup:
                out.append((fd, READ | WRITE))
            else:
                out.append((fd, (READ if ev & rd else 0) | (WRITE if ev & select.POLLOUT else 0)))
        return out


FD_SETSIZE = 1024
"""``select`` cannot watch descriptors numbered this or higher."""


# POLL-7: descriptors at FD_SETSIZE and above refused
class SelectPoller(Poller):
    """``select``: the most portable and the most limited backend.

    ``select`` has no hang-up or error report of its own (its third set means
    out-of-band data on Linux): a reset or closed peer shows up as readiness
    in the direction being watched, and the read or write that follows
    meets the error.
    """

    name = "select"

    def __init__(self) -> None:
        self._r: set[int] = set()
        self._w: set[int] = set()

    def register(self, fd: int, mask: int) -> None:
        self.modify(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        if fd >= FD_SETSIZE:
            raise ValueError(f"select cannot watch descriptor {fd} (FD_SETSIZE is {FD_SETSIZE})")
        (self._r.add if mask & READ else self._r.discard)(fd)
        (self._w.add if mask & WRITE else self._w.discard)(fd)

    def unregister(self, fd: int) -> None:
        self._r.discard(fd)
        self._w.discard(fd)

    def poll(self, timeout: float | None) -> Ready:
        try:
            r, w, x = select.select(
                self._r, self._w, self._r | self._w, None if timeout is None else max(0.0, timeout)
            )
        except InterruptedError:  # pragma: no cover
            return []
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
            # A descriptor was closed while registered: a loop bug, but do
            # not spin on it -- drop the dead ones and report nothing.
            self._drop_bad()
            return []
        ready: dict[int, int] = {}
        for fd in r:
            ready[fd] = READ
        for fd in w:
            ready[fd] = ready.get(fd, 0) | WRITE
        for fd in x:
            ready[fd] = READ | WRITE
        return list(ready.items())

    # POLL-8
    def _drop_bad(self) -> None:
        for fd in list(self._r | self._w):
            try:
                os.fstat(fd)
            except OSError:
                self.unregister(fd)


_BACKENDS: dict[str, Callable[[], Poller]] = {
    "epoll": EpollPoller,
    "kqueue": KqueuePoller,
    "poll": PollPoller,
    "select": SelectPoller,
}

_PROBES: dict[str, Callable[[], bool]] = {
    "epoll": lambda: hasattr(select, "epoll"),
    "kqueue": lambda: hasattr(select, "kqueue"),
    "poll": lambda: hasattr(select, "poll") and sys.platform != "darwin",
    "select": lambda: True,
}

PORTABLE_FALLBACK = "select"
"""The backend a ``-net`` address selects: the one every platform has."""


# POLL-5
def available_pollers() -> list[str]:
    """Names of the backends this machine has, best first."""
    return [name for name in ("epoll", "kqueue", "poll", "select") if _PROBES[name]()]


def default_poller_name() -> str:
    """The best backend available here."""
    return available_pollers()[0]


def make_poller(name: str | None = None) -> Poller:
    """Create a poller by name, or the best available one.

    Args:
        name: ``"epoll"``, ``"kqueue"``, ``"poll"``, ``"select"``, or ``None``
            for the best available.

    Raises:
        ValueError: ``name`` is unknown or not available on this machine.
    """
    if name is None:
        name = default_poller_name()
    if name not in _BACKENDS:
        raise ValueError(f"unknown poller {name!r}; choose from {sorted(_BACKENDS)}")
    if not _PROBES[name]():
        raise ValueError(
            f"poller {name!r} is not available here; available: {available_pollers()}"
        )
    return _BACKENDS[name]()
