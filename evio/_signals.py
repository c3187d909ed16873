"""Signals: a loop on the main thread hears them at once, and Ctrl-C is safe.

Owns: the stop signals: installing the handlers and the wake-up descriptor,
hearing a signal, restoring what was there -- for one loop and for the
supervisor.

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

3. **A supervisor stops a server with SIGTERM** (systemd, docker,
   Kubernetes), a terminal that closes sends SIGHUP, and the default action
   of both kills the process at once: no ``closed`` calls, pending output
   lost, a unix socket file left behind.  So each signal of ``serve``'s
   ``stop_signals`` (SIGINT, SIGTERM and SIGHUP unless told otherwise)
   that still has its default disposition gets the same stand-in as
   SIGINT: it asks the loop to stop, and the shutdown runs as for
   ``SHUTDOWN``.  SIGTERM and SIGHUP then make `evio.serve` return
   normally (the process exits 0, as a supervisor expects of a clean
   stop); SIGINT raises ``KeyboardInterrupt``, as Python always has.  evio
   has no configuration to reload, so SIGHUP means "stop".

A handler the user installed is left alone; it still runs promptly,
because the wake-up descriptor rouses the loop.  Off the main thread
nothing is changed: Python allows signal handlers only there.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from types import FrameType

__all__ = ["DEFAULT_STOP_SIGNALS", "SignalWatch", "check_stop", "check_stop_signals"]

DEFAULT_STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
"""What `evio.serve` stops on unless told otherwise (SIGHUP is absent on Windows)."""

_UNCATCHABLE = {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP") if hasattr(signal, n)}


def check_stop_signals(sigs: object) -> tuple[signal.Signals, ...]:
    """Validate ``serve``'s ``stop_signals`` (LOOP-26).

    Returns:
        The signals, as `signal.Signals`, duplicates dropped, order kept.

    Raises:
        TypeError: ``sigs`` is not an iterable of signal numbers.
        ValueError: one is not a signal of this platform, or cannot be
            caught (SIGKILL, SIGSTOP).
    """
    if isinstance(sigs, str | bytes) or not isinstance(sigs, Iterable):
        raise TypeError(f"stop_signals must be a tuple of signal numbers, not {sigs!r}")
    out: list[signal.Signals] = []
    for s in sigs:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"stop_signals holds {s!r}, which is not a signal number")
        try:
            sig = signal.Signals(s)
        except ValueError:
            raise ValueError(f"stop_signals holds {s!r}, which is not a signal here") from None
        if sig in _UNCATCHABLE:
            raise ValueError(f"stop_signals holds {sig.name}, which no process can catch")
        if sig not in out:
            out.append(sig)
    return tuple(out)


def check_stop(sigs: object, timeout: object) -> tuple[tuple[signal.Signals, ...], float]:
    """Validate ``serve``'s ``stop_signals`` and ``stop_timeout`` (LOOP-26, LOOP-18).

    Raises:
        TypeError: as `check_stop_signals`.
        ValueError: as `check_stop_signals`, or ``timeout`` is not a finite
            number of seconds >= 0.
    """
    out = check_stop_signals(sigs)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            0 <= timeout < float("inf")):
        raise ValueError(f"stop_timeout must be a finite number of seconds >= 0, "
                         f"not {timeout!r}")
    return out, float(timeout)


class SignalWatch:
    """Installs and removes the wake-up descriptor and the stop handlers.

    Args:
        stop: Asks the loop to shut down; safe in a signal handler.
        stop_signals: The signals that stop the loop when they still have
            their default disposition (LOOP-26).
    """

    def __init__(self, stop: Callable[[], None],
                 stop_signals: tuple[signal.Signals, ...] = DEFAULT_STOP_SIGNALS) -> None:
        self._stop = stop
        self._stop_signals = stop_signals
        self.interrupted = False
        self.received: signal.Signals | None = None
        """The first stop signal that arrived, if any."""
        self.count = 0
        """How many stop signals arrived (a second one cuts the flush short)."""
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self._old_fd = -1
        self._old: dict[signal.Signals, signal._HANDLER] = {}

    # LOOP-23, LOOP-24
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
        for sig in self._stop_signals:
            current = signal.getsignal(sig)
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            # A handler of the user's own (or SIG_IGN, or one set outside
            # Python: None) is theirs: left alone (LOOP-26).
            if current is default or (sig == signal.SIGINT and current is signal.SIG_DFL):
                self._old[sig] = signal.signal(sig, self._on_signal)
        return r.fileno()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The stand-in handler: remember the signal, ask the loop to stop."""
        if self.received is None:
            self.received = signal.Signals(signum)
        self.count += 1
        if signum == signal.SIGINT:
            self.interrupted = True
        self._stop()

    def taken(self) -> tuple[signal.Signals, ...]:
        """The signals `install` took over (those that had their default handler)."""
        return tuple(self._old)

    def fileno(self) -> int | None:
        """The descriptor `install` returned, or ``None``."""
        return self._pair[0].fileno() if self._pair is not None else None

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
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        signal.set_wakeup_fd(self._old_fd)
        for s in self._pair:
            s.close()
        self._pair = None
