"""Idle: when a connection has been idle for its ``idle_timeout`` (rule REL-4).

Owns: deciding that a connection has been silent for its ``idle_timeout``.

Theory of operation
-------------------
"Idle" must mean *nothing moved*, and the loop sees only part of what
moves.  It sees its own reads, and each ``send`` the kernel takes bytes
from: either restarts the count (``Conn.last_active``).  What it does not
see is the kernel handing output it already took to the peer.  A peer that
reads steadily but slower than the kernel's send buffer (megabytes on
loopback) leaves the socket unwritable for long stretches -- Linux reports
it writable again only once a good part of the buffer is free -- so, judged
by the loop's own sends alone, a client still downloading would be closed
as idle (the trap a hostile-client session found).

So when output is pending, every partial send notes how much the kernel
still holds unsent (`note_write`: ``SIOCOUTQ`` on Linux, via
`evio._linger.unsent`); when the idle timer finds nothing moved by the
loop, it asks again (`check`), and a smaller count means the peer has been
reading: the connection is not idle, and the count starts afresh.  A peer
that has stopped reading leaves the count where it was and is closed, its
output dropped.  Where the kernel cannot say, a connection whose output
the loop cannot write counts as idle, as before.  The check runs only when
the idle timer fires, so the fast path pays nothing but one ``ioctl`` per
send that leaves output pending.

Everything that decides whether a connection is idle lives here;
`evio._streams` arms the timer and notes the writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from ._lifecycle import LIVE, Conn, On
from ._linger import unsent
from ._timers import Timers

__all__ = ["check", "note_write"]

Close = Callable[[Conn, On, BaseException | None], None]


def note_write(c: Conn, n: int) -> None:
    """A send to ``c`` (which has an idle timeout) took ``n`` bytes: note it.

    With output still pending the kernel's buffer is full now: remember how
    much of ours it holds, to tell later whether the peer took any.
    """
    if n:
        c.last_active = time.monotonic()
    if c.pending:
        c.unsent_mark = unsent(c.sock) or 0


def check(timers: Timers, close: Close, c: Conn) -> None:
    """The idle timer fired: close ``c`` if nothing moved since, else look again."""
    c.idle_timer = None
    if c.state not in LIVE or c.idle_timeout is None:
        return
    due = c.last_active + c.idle_timeout
    if due <= time.monotonic() and c.pending and c.unsent_mark > 0:
        # The loop had no room to write; has the kernel handed any to the peer?
        now = unsent(c.sock)
        if now is not None and now < c.unsent_mark:
            c.unsent_mark = now
            c.last_active = time.monotonic()
            due = c.last_active + c.idle_timeout
    if due > time.monotonic():
        c.idle_timer = timers.at(due, partial(check, timers, close, c))
        return
    c.pending.clear()  # nobody is reading it: an idle peer gets nothing more
    close(c, On.IDLE, TimeoutError(f"connection {c.id} idle for {c.idle_timeout}s"))
