"""Detach: hand a connection's socket to its new owner, pending bytes first.

Owns: a socket after it leaves the loop: the pending output goes first, then
it is the user's.

Theory of operation
-------------------
``Action.DETACH`` takes a connection out of the loop: the loop forgets the
descriptor, makes the socket blocking again, and passes it to the
``detached(id, conn)`` callback.  From then on the socket is the user's --
typically handed to a thread that speaks some blocking protocol on it.

Two things can go wrong at that hand-over, and both bit the original's users:

1. **Output still pending.**  The loop may hold bytes that the socket would
   not take yet.  Writing them from the loop would block it (the peer may
   never read); dropping them loses data; letting the new owner write first
   reorders the stream.  So the pending bytes travel *with* the socket, in
   `DetachedConn`, and every operation of the new owner -- a read, a
   write, a shutdown, a close -- first sends them, blocking in the owner's
   thread, never the loop's.  Reads flush too: a peer may wait for our
   pending reply before it says anything, and a reader that did not flush
   first would wait forever.
2. **End of stream.**  The original's detached reader returned "0 bytes, no
   error" at end of stream and callers looped forever.  Here ``recv`` is the
   socket's own ``recv``: ``b""`` at end of stream, an exception on error.

``closed`` is not called for a detached connection: it did not close, it
changed hands.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from ._addresses import SockAddr

__all__ = ["DetachedConn"]


class DetachedConn:
    """A blocking, socket-like connection handed over by ``Action.DETACH``.

    Every method sends any output the loop still held before doing its own
    work, so the peer receives the bytes in the order they were produced.

    Attributes:
        socket: The underlying blocking ``socket.socket``. Using it directly
            skips the pending-output rule; call `flush` first.
    """

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        sock.setblocking(True)
        self.socket = sock
        self._pending = pending
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """How many bytes from the loop have not been sent yet."""
        return len(self._pending)

    def flush(self) -> None:
        """Send the output the loop still held (blocking)."""
        if self._pending:
            with self._lock:
                # send() in a loop, not sendall(): if a timeout or an error
                # stops us part-way, exactly the unsent tail stays owed.
                view = memoryview(self._pending)
                sent = 0
                try:
                    while sent < len(view):
                        sent += self.socket.send(view[sent:])
                finally:
                    self._pending = bytes(view[sent:]) if sent else self._pending
                    view.release()

    # DETACH-3: blocking reads, buffered bytes first
    def recv(self, bufsize: int = 65536) -> bytes:
        """Read up to ``bufsize`` bytes; ``b""`` means the peer ended its stream."""
        self.flush()
        return self.socket.recv(bufsize)

    read = recv

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        """Read into ``buffer``; 0 means the peer ended its stream."""
        self.flush()
        return self.socket.recv_into(buffer, nbytes)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Send some of ``data``; returns how much was sent."""
        self.flush()
        return self.socket.send(data)

    # DETACH-4: sends after the pending output
    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``."""
        self.flush()
        self.socket.sendall(data)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Send all of ``data`` and return its length."""
        self.sendall(data)
        return len(memoryview(data))

    def shutdown(self, how: int) -> None:
        """Shut down one or both directions, after sending what is pending
        (whichever direction: DETACH-2 makes no exception)."""
        self.flush()
        self.socket.shutdown(how)

    def close(self) -> None:
        """Send what is pending, then close.

        Sending blocks until the peer has taken it all, the peer is gone, or
        the timeout set with `settimeout` passes; then the socket is
        closed either way.
        """
        try:
            if self._pending and self.socket.fileno() >= 0:
                self.flush()
        except OSError:
            pass  # the peer is gone, or the owner's timeout passed
        finally:
            self.socket.close()

    def abandon(self) -> None:
        """Close at once, without blocking: one non-blocking try to send
        what is pending, then close. The loop calls this when ``detached``
        raised and nobody owns the socket."""
        try:
            self.socket.setblocking(False)
            if self._pending:
                self.socket.send(self._pending)
        except OSError:
            pass  # the peer is gone, or its buffer is full: the rest is lost
        finally:
            self.socket.close()

    def fileno(self) -> int:
        """The descriptor, or -1 once closed."""
        return self.socket.fileno()

    def settimeout(self, timeout: float | None) -> None:
        """Set a timeout on blocking operations (``None``: none)."""
        self.socket.settimeout(timeout)

    def gettimeout(self) -> float | None:
        """The timeout on blocking operations."""
        return self.socket.gettimeout()

    def getpeername(self) -> SockAddr:
        """The peer's address."""
        addr: SockAddr = self.socket.getpeername()
        return addr

    def getsockname(self) -> SockAddr:
        """Our end's address."""
        addr: SockAddr = self.socket.getsockname()
        return addr

    def __enter__(self) -> DetachedConn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<evio.DetachedConn fd={self.fileno()} pending={self.pending}>"
