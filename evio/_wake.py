"""Wake: let other threads nudge the loop, and through it a connection.

Owns: the doorbell: wakes and jobs from other threads, and how the loop
takes them.

Theory of operation
-------------------
The loop spends its idle time blocked in ``poll``.  Another thread that has
finished some work (a database answer, a computed reply) needs a way to say
"come back to connection 7", and the only thing that unblocks ``poll`` is a
descriptor becoming ready.  So the loop owns one extra descriptor, the
*wake descriptor*, always registered for reading:

* On Linux it is an ``eventfd``: a 64-bit counter in the kernel.  Writing
  adds to it and makes it readable; one read returns the total and resets it
  to zero.  (The original evio wrote the counter in the wrong byte order;
  ``os.eventfd_write`` takes an integer, so there is no byte order to get
  wrong.)
* Elsewhere it is a ``socketpair``: writing a byte to one end makes the
  other readable; reading drains it.

Two traps decide the design:

1. **Drain every time.**  The wake descriptor is level-triggered.  If the
   loop handles a wake without reading the descriptor empty, ``poll``
   reports it ready again at once, forever: a 100%-CPU spin (the original's
   issue #61).  `Waker.drain` reads until the descriptor is empty.
2. **Never lose a wake, never write more than needed.**  The ids to wake
   live in a set guarded by a lock; the descriptor is only a doorbell.  A
   thread adds its id and rings the bell only if nobody has rung it since the
   loop last answered (``_rung``).  The loop drains the bell, then clears
   ``_rung`` and takes the whole set *under the same lock*.  Any wake added
   after that either finds ``_rung`` false and rings again, or lands in the
   next batch: none is dropped, and many wakes cost one system call.

The doorbell also carries other cross-thread work (dial requests, resolved
addresses), posted as callables with `Waker.post`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable

__all__ = ["Waker"]


class Waker:
    """The loop's doorbell and its mailbox of ids and jobs.

    ``ring``-side methods (`wake`, `post`) are safe from any
    thread; the rest belong to the loop's thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[int] = set()
        self._jobs: list[Callable[[], None]] = []
        self._rung = False
        self._closed = False
        self._efd = -1
        self._r: socket.socket | None = None
        self._w: socket.socket | None = None
        if hasattr(os, "eventfd"):
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux
            self._r, self._w = socket.socketpair()
            self._r.setblocking(False)
            self._w.setblocking(False)

    def fileno(self) -> int:
        """The descriptor the loop registers for reading."""
        return self._efd if self._efd >= 0 else self._r.fileno()  # type: ignore[union-attr]

    # ------------------------------------------------------- any thread

    # WAKE-1
    def wake(self, cid: int) -> bool:
        """Queue ``cid`` to be woken and ring the bell. False once closed."""
        with self._lock:
            if self._closed:
                return False
            self._ids.add(cid)
            if not self._rung:
                self._rung = True
                self._ring()
        return True

    def post(self, job: Callable[[], None], before: Callable[[], None] | None = None) -> bool:
        """Run ``job`` on the loop's thread soon. False once closed.

        ``before``, if given, runs under the lock just before the job is
        queued: whatever it records is visible to `close`'s caller
        exactly when the job was accepted.
        """
        with self._lock:
            if self._closed:
                return False
            if before is not None:
                before()
            self._jobs.append(job)
            if not self._rung:
                self._rung = True
                self._ring()
        return True

    def nudge(self) -> None:
        """Make the loop's poll return soon, queueing nothing.

        Safe from any thread *and from a signal handler*: it never waits for
        the lock (a handler that ran while its own thread held the lock
        would wait forever).  If the lock is busy, its holder is the loop
        itself (awake, so it will see why it was nudged before it sleeps
        again) or a thread inside `wake` or `post`, which rings the bell or
        finds it already rung: either way the loop's poll returns.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            if not self._closed:
                self._ring()
        finally:
            self._lock.release()

    def _ring(self) -> None:
        # Called with the lock held, so close() cannot free the descriptor
        # (and the OS hand its number to someone else) under our feet. The
        # write cannot block: an eventfd only refuses at 2**64-2, and a
        # full socketpair already holds a pending ring.
        with contextlib.suppress(BlockingIOError):
            if self._efd >= 0:
                os.eventfd_write(self._efd, 1)
            else:  # pragma: no cover - non-Linux
                assert self._w is not None
                self._w.send(b"\0")

    # ------------------------------------------------------ loop thread

    def take(self) -> tuple[set[int], list[Callable[[], None]]]:
        """Everything rung for since the last call; drains the descriptor.

        Drain first, then take: a ring that lands between the two has its id
        taken with this batch, and a ring after the take finds ``_rung``
        false and rings again. Taking first would let a ring land between
        take and drain, be drained away, and leave its id waiting with
        ``_rung`` still set -- a lost wake.
        """
        self.drain()
        with self._lock:
            ids, self._ids = self._ids, set()
            jobs, self._jobs = self._jobs, []
            self._rung = False
        return ids, jobs

    # WAKE-6
    def drain(self) -> None:
        """Read the descriptor until it is empty, so it stops being ready."""
        if self._efd >= 0:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._efd)  # one read resets the counter
            return
        assert self._r is not None  # pragma: no cover - non-Linux
        with contextlib.suppress(BlockingIOError):  # pragma: no cover
            while self._r.recv(4096):
                pass

    def close(self) -> list[Callable[[], None]]:
        """Refuse further wakes and jobs; return jobs that never ran.

        Closing twice is harmless: the second call returns no jobs.
        """
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            jobs, self._jobs = self._jobs, []
            self._ids.clear()
            if self._efd >= 0:
                os.close(self._efd)
                self._efd = -1
            else:  # pragma: no cover - non-Linux
                assert self._r is not None and self._w is not None
                self._r.close()
                self._w.close()
        return jobs
