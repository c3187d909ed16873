"""Lingering close: a reply returned with ``CLOSE`` is not cut by a reset.

Owns: the last moments of a closed connection whose reply the kernel still
holds.

Theory of operation
-------------------
``send`` only hands bytes to the kernel; the kernel transmits them later.
If the socket is closed while its *receive* queue holds bytes the
application never read -- the peer pipelined one more request, or sent
10 stray bytes -- TCP does not send a FIN: it sends a reset (RFC 1122,
4.2.2.13), and the kernel throws away whatever output it had not yet
transmitted.  A 200 KB reply returned with ``CLOSE`` arrives cut at the
peer (measured: 128,000 bytes, every run).  A peer that keeps sending after
our close gets the same reset, with the same loss.

nginx and Apache answer with a *lingering close*, and so do we (rule
LOOP-14): once the pending output is handed to the kernel we

1. shut our write side (``shutdown(SHUT_WR)``): the FIN goes out after
   the last byte of output, so the peer sees the whole reply and its end;
2. read and discard what the peer sends, so the receive queue stays empty;
3. close the socket when the kernel has nothing of ours left unacknowledged
   (Linux's ``SIOCOUTQ``; elsewhere we cannot ask, and wait for the peer's
   end of stream instead), when the peer ends its stream or resets, or at
   the latest after ``Options.linger_timeout`` seconds or
   ``Options.linger_bytes`` discarded -- so a peer that never reads, or
   never stops sending, holds the socket for that bound and no longer.

The checks run from the loop's timer queue, first 1 ms after the shutdown
and then at doubling intervals up to 100 ms: a lingering socket is not on
the poller at all, so it can never make the loop spin.  Unix sockets need
none of this -- their bytes are in the peer's queue the moment ``send``
returns -- and close at once.

Everything about a connection's last moments after its output is sent is
here; `evio._streams` calls `Linger.start` where it used to close.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from functools import partial

from ._lifecycle import Conn, State
from ._pollers import Poller
from ._timers import Timers

__all__ = ["Linger", "settled", "unsent"]

_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None) if sys.platform.startswith("linux") else None
"""Linux's ``SIOCOUTQ`` (the same number as ``TIOCOUTQ``): bytes of output
the kernel still holds, sent but not acknowledged included."""
_FIRST, _MOST = 0.001, 0.1
_DISCARD = 65536


def unsent(sock: socket.socket) -> int | None:
    """Bytes of output the kernel still holds for ``sock``; ``None`` if it cannot say."""
    if _SIOCOUTQ is None:
        return None
    try:
        buf = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", buf)[0])


class Linger:
    """The lingering closes of one loop's stream connections.

    Args:
        poller: The loop's poller (a lingering socket is taken off it).
        timers: The loop's deadline queue.
        close: Closes a connection for good (``closed(id, err)`` follows).
    """

    def __init__(self, poller: Poller, timers: Timers, close: Callable[[Conn], None]) -> None:
        self.poller = poller
        self.timers = timers
        self.close = close

    def start(self, c: Conn) -> None:
        """``c`` is flushing and its output is all handed to the kernel: linger or close."""
        if c.linger_timeout <= 0 or c.sock.family == socket.AF_UNIX:
            self.close(c)
            return
        try:
            c.sock.shutdown(socket.SHUT_WR)  # the FIN follows the last byte of output
        except OSError:
            self.close(c)  # already gone: nothing to wait for
            return
        if self._done(c):
            self.close(c)
            return
        self.timers.cancel(c.idle_timer)  # the linger has its own bound
        self.poller.unregister(c.fd)
        c.interest = -1  # `evio._streams.UNWATCHED`: off the poller until it closes
        c.linger_until = time.monotonic() + c.linger_timeout
        c.idle_timer = self.timers.at(time.monotonic() + _FIRST, partial(self._check, c, _FIRST))

    def _check(self, c: Conn, delay: float) -> None:
        c.idle_timer = None
        if c.state is not State.FLUSHING:
            return  # closed meanwhile (shutdown, abort)
        now = time.monotonic()
        if self._done(c) or now >= c.linger_until:
            self.close(c)
            return
        delay = min(delay * 2, _MOST)
        c.idle_timer = self.timers.at(min(now + delay, c.linger_until),
                                      partial(self._check, c, delay))

    def _done(self, c: Conn) -> bool:
        return settled(c)


def settled(c: Conn) -> bool:
    """Discard what the peer sent ``c``; True once nothing is left to wait for
    (nothing of ours unacknowledged, the peer's end of stream or reset, or
    more than ``linger_bytes`` discarded)."""
    while True:
        try:
            got = c.sock.recv(_DISCARD)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            return True  # a reset: the peer is gone
        if not got:
            return True  # the peer's end of stream: it has everything
        c.linger_bytes -= len(got)
        if c.linger_bytes < 0:
            return True  # it will not stop sending: the bound
    return unsent(c.sock) == 0
