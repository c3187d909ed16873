"""The server handle: what ``serving`` receives, and the only way in from outside.

Owns: the `Server` handle: the only way into a loop from outside it, and
which of its calls are safe from which thread.

Theory of operation
-------------------
Everything in evio runs on the loop's thread, except what a user reaches
through this handle.  It is deliberately thin: each method forwards to the
running loop through the small `LoopControl` interface, so this module
needs nothing else from evio (the events record names `Server` in its
types, and a handle that imported the loop would close a circle).

Three methods are safe from any thread -- `Server.wake`,
`Server.dial` and `Server.stop` -- because each only rings the
loop's doorbell (`evio._wake`) and leaves the work to the loop.
`Server.call_later`, `Server.close` and `Server.abort` give the loop's
own thread what it needs to act on *any* connection at a time of its
choosing, without a deadline table scanned from ``tick`` or a wake to
itself.
`Server.stop` goes further: it is safe inside a signal handler, so it
never waits for a lock (see `evio._wake.Waker.nudge`).  The rest belong to
the loop's thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._addresses import SockAddr
    from ._timers import Timer

__all__ = ["LoopControl", "Server"]


class LoopControl(Protocol):
    """What a `Server` handle asks of the running loop."""

    def wake(self, id: int) -> bool: ...

    def dial(self, addr: str, timeout: float | None) -> int: ...

    def pending(self, id: int) -> int: ...

    def paused(self, id: int) -> bool: ...

    def pause(self, id: int) -> bool: ...

    def resume(self, id: int) -> bool: ...

    def shutdown_write(self, id: int) -> bool: ...

    def call_later(self, delay: float, fn: Callable[[], object],
                   id: int | None) -> Timer: ...

    def close(self, id: int) -> bool: ...

    def abort(self, id: int) -> bool: ...

    def stop(self) -> None: ...


class Server:
    """The running server, as ``serving`` receives it.

    ``wake``, ``dial`` and ``stop`` are safe to call from any thread
    (``stop`` also from a signal handler); everything else --
    ``call_later``, ``close``, ``abort``, ``pause`` and the rest -- belongs
    to the loop's thread.

    Attributes:
        addrs: The real bound address of each listener, in the order given
            to `evio.serve` (so a port of 0 shows the port chosen): a
            ``(host, port)`` tuple for IPv4, ``(host, port, flowinfo,
            scope_id)`` for IPv6, a path for unix sockets.
        poller: The name of the poller backend in use.
    """

    __slots__ = ("_index", "_loop", "_loops", "addrs", "poller")

    def __init__(self, addrs: tuple[SockAddr, ...], poller: str, loop: LoopControl,
                 loop_index: int = 0, loops: int = 1) -> None:
        self.addrs = addrs
        self.poller = poller
        self._loop = loop
        self._index = loop_index
        self._loops = loops

    @property
    def loop_index(self) -> int:
        """Which loop this is, from 0 to ``loops - 1`` (0 when there is one)."""
        return self._index

    @property
    def loops(self) -> int:
        """How many loops `evio.serve` runs, each in its own process if more than one."""
        return self._loops

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
        return self._loop.wake(id)

    # DIAL-1: any thread; UDP-7: not udp
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
        return self._loop.dial(addr, timeout)

    def stop(self) -> None:
        """Shut the server down as if a callback had returned ``Action.SHUTDOWN``.

        Safe from any thread and from a signal handler: it never blocks and
        never raises. It returns at once; `evio.serve` returns once every
        connection has been closed (each gets its ``closed`` call) and
        every descriptor released. Calling it again, or after the server
        has stopped, does nothing.
        """
        self._loop.stop()

    def pending(self, id: int) -> int:
        """Bytes of output queued for stream connection ``id`` and not yet sent.

        For the loop's thread only. 0 for an unknown or closed id.
        """
        return self._loop.pending(id)

    def paused(self, id: int) -> bool:
        """Whether reading from ``id`` is paused by its water marks.

        For the loop's thread only. False for an unknown or closed id.
        A pause by `pause` is not counted: that one the caller knows of.
        """
        return self._loop.paused(id)

    # UDP-9: no flow control for UDP remotes
    def pause(self, id: int) -> bool:
        """Stop reading from stream connection ``id`` until `resume`.

        For the loop's thread only. Independent of the water marks: reading
        goes on only when neither has paused it (like asyncio's
        ``pause_reading``). Bytes the peer sends meanwhile wait in the
        kernel, and its sends block. Pausing a paused connection does
        nothing.

        Returns:
            True if ``id`` is a stream connection that still reads (open,
            or *reading only*); False otherwise (unknown, closed, closing,
            *writing only*, UDP), and then nothing happens.
        """
        return self._loop.pause(id)

    def resume(self, id: int) -> bool:
        """Undo `pause`: read from ``id`` again, unless its water marks hold it.

        For the loop's thread only.

        Returns:
            As for `pause`.
        """
        return self._loop.resume(id)

    def shutdown_write(self, id: int) -> bool:
        """Send our end of stream (FIN) on ``id`` once its pending output is sent.

        For the loop's thread only. Output returned by callbacks in the same
        turn of the loop -- the one calling this included -- goes before
        the FIN; output returned after it is sent is dropped. The
        connection goes on reading (*reading only*) until the peer ends its
        stream too; a connection that is *writing only* closes after the
        FIN, with ``closed(id, None)``. A translated connection has no
        half-close (TLS 1.2 has none): it finishes as for ``Action.CLOSE``,
        its goodbye (a TLS ``close_notify``) sent after the pending output.

        Returns:
            True if ``id`` is an open or *writing only* stream connection
            (the FIN is on its way); False otherwise, and nothing happens.
        """
        return self._loop.shutdown_write(id)

    def call_later(self, delay: float, fn: Callable[[], object], *,
                   id: int | None = None) -> Timer:
        """Call ``fn()`` on the loop's thread ``delay`` seconds from now.

        For the loop's thread only (from a callback, or from another timer).
        The timer sits in the loop's one deadline queue with ``tick``, the
        idle timeouts and the dial timeouts (rule TIMER-1): it fires in the
        loop's *timers* phase, at the earliest after a poll -- a delay of 0
        means "at the end of this turn". ``fn`` may return ``None`` or an
        `evio.Action` (only ``SHUTDOWN`` has an effect, as for ``tick``); if
        it raises, the error is logged and the loop goes on. A timer still
        pending when the server stops never fires.

        Args:
            delay: Seconds from now, ``>= 0`` and finite (more than 1e18
                means never).
            fn: What to call, with no arguments (bind them with
                ``functools.partial`` or a lambda).
            id: Ties the timer to this stream connection: it is cancelled
                when the connection closes or detaches, so ``fn`` never
                sees a connection that is gone (rule TIMER-2).

        Returns:
            The `evio.Timer`; its ``cancel()`` makes sure it never fires.

        Raises:
            TypeError: ``fn`` is not callable.
            ValueError: ``delay`` is negative, not finite or not a number;
                or ``id`` is given and is not an open stream connection.
        """
        return self._loop.call_later(delay, fn, id)

    def close(self, id: int) -> bool:
        """Close stream connection ``id`` as if its callback had returned ``Action.CLOSE``.

        For the loop's thread only. Reading from ``id`` stops at once (no
        more ``data`` with bytes); at the end of this turn of the loop the
        connection finishes as ``CLOSE`` does (rule TIMER-3): output
        returned by callbacks in this turn, the calling one included, is
        sent first, then the socket closes and ``closed(id, None)`` is
        called. So ``closed`` is never called from inside this call.

        Returns:
            True if ``id`` is a stream connection that holds its socket (it
            will close); False for an unknown, closed, detached, UDP or
            still-dialing id, and then nothing happens.
        """
        return self._loop.close(id)

    def abort(self, id: int) -> bool:
        """Close stream connection ``id`` at once, dropping its pending output.

        For the loop's thread only. Reading stops at once; at the end of
        this turn the pending output -- including output returned in this
        turn -- is dropped, a TCP connection is reset (the kernel drops
        what it still holds; the peer sees ``ECONNRESET``), the socket
        closes and ``closed(id, None)`` is called (rule TIMER-4). Like
        asyncio's ``transport.abort()``.

        Returns:
            As for `close`.
        """
        return self._loop.abort(id)

    def __repr__(self) -> str:
        where = f" loop={self.loop_index}/{self.loops}" if self.loops > 1 else ""
        return f"<evio.Server poller={self.poller}{where} addrs={list(self.addrs)!r}>"
