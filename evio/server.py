"""The server handle: what ``serving`` receives, and the only way in from outside.

Theory of operation
-------------------
Everything in evio runs on the loop's thread, except what a user reaches
through this handle.  It is deliberately thin: each method forwards to the
running loop through the small `LoopControl` interface, so this module
needs nothing else from evio (the events record names `Server` in its
types, and a handle that imported the loop would close a circle).

Three methods are safe from any thread -- `Server.wake`,
`Server.dial` and `Server.stop` -- because each only rings the
loop's doorbell (`evio.wake`) and leaves the work to the loop.
`Server.stop` goes further: it is safe inside a signal handler, so it
never waits for a lock (see `evio.wake.Waker.nudge`).  The rest belong to
the loop's thread.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["LoopControl", "Server"]


class LoopControl(Protocol):
    """What a `Server` handle asks of the running loop."""

    def wake(self, id: int) -> bool: ...

    def dial(self, addr: str, timeout: float | None) -> int: ...

    def pending(self, id: int) -> int: ...

    def paused(self, id: int) -> bool: ...

    def stop(self) -> None: ...


class Server:
    """The running server, as ``serving`` receives it.

    ``wake``, ``dial`` and ``stop`` are safe to call from any thread
    (``stop`` also from a signal handler); everything else belongs to the
    loop's thread.

    Attributes:
        addrs: The real bound address of each listener, in the order given
            to `evio.serve` (so a port of 0 shows the port chosen): a
            ``(host, port)`` tuple for IPv4, ``(host, port, flowinfo,
            scope_id)`` for IPv6, a path for unix sockets.
        poller: The name of the poller backend in use.
    """

    __slots__ = ("_index", "_loop", "_loops", "addrs", "poller")

    def __init__(self, addrs: tuple[Any, ...], poller: str, loop: LoopControl,
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
        """Whether reading from ``id`` is paused by flow control.

        For the loop's thread only. False for an unknown or closed id.
        """
        return self._loop.paused(id)

    def __repr__(self) -> str:
        where = f" loop={self.loop_index}/{self.loops}" if self.loops > 1 else ""
        return f"<evio.Server poller={self.poller}{where} addrs={list(self.addrs)!r}>"
