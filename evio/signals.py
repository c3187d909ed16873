"""Signals: a loop on the main thread hears them at once, and Ctrl-C is safe.

Theory of operation
-------------------
CPython runs a Python signal handler on the main thread, "soon" after the
C-level handler records the signal: at the next bytecode boundary.  Two
traps follow for a loop that sleeps in ``poll``:

1. **A signal can be missed while the loop sleeps.**  If the kernel
   delivers the signal to another thread of the process (it may choose
   any thread that does not block it), the main thread's ``poll`` is not
   interrupted, and the handler waits until some descriptor happens to be
   ready -- perhaps forever.  The cure is ``signal.set_wakeup_fd``: the C
   handler also writes a byte to a descriptor, and the loop watches that
   descriptor like any other.  Our descriptor is one end of a socket pair
   (an eventfd will not do: the C handler writes one byte, and an eventfd
   takes eight).
2. **Python's default SIGINT handler raises anywhere.**
   ``KeyboardInterrupt`` can come out of the middle of a close, between
   closing a socket and calling ``closed``, or inside ``accept`` after the
   kernel handed over a descriptor.  So while the loop runs on the main
   thread with that default handler in place, we swap in one that only asks
   the loop to stop (`evio.Server.stop`) and remembers the interrupt.  The
   loop shuts down as for ``SHUTDOWN`` -- every connection gets its
   ``closed`` -- and `evio.serve` then raises ``KeyboardInterrupt`` from a
   safe point, after the previous handler is back.

A handler the user installed is left alone; it still runs promptly,
because the wake-up descriptor rouses the loop.  Off the main thread
nothing is changed: Python allows signal handlers only there.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["SignalWatch"]


class SignalWatch:
    """Installs and removes the wake-up descriptor and the SIGINT stand-in.

    Args:
        stop: Asks the loop to shut down; safe in a signal handler.
    """

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self.interrupted = False
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self._old_fd = -1
        self._old_sigint: Any = None

    def install(self) -> int | None:
        """On the main thread: set up; returns the descriptor to watch for reading."""
        if threading.current_thread() is not threading.main_thread():
            return None
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        try:
            self._old_fd = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):  # pragma: no cover - not the main interpreter
            r.close()
            w.close()
            return None
        self._pair = (r, w)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        return r.fileno()

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        """The stand-in SIGINT handler: remember it, ask the loop to stop."""
        self.interrupted = True
        self._stop()

    def drain(self, _: object, mask: int) -> None:
        """The wake-up descriptor is readable: empty it (the handlers run on their own)."""
        assert self._pair is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._pair[0].recv(4096):
                pass

    def uninstall(self) -> None:
        """Put back what `install` replaced, and close the socket pair."""
        if self._pair is None:
            return
        if self._old_sigint is not None:
            signal.signal(signal.SIGINT, self._old_sigint)
            self._old_sigint = None
        signal.set_wakeup_fd(self._old_fd)
        for s in self._pair:
            s.close()
        self._pair = None
