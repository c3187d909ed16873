"""Accept: taking new connections off a stream listener, and backing off.

Owns: taking connections off a stream listener -- how many per turn, and
when to back off -- up to the hand-over to `evio._streams`.

Theory of operation
-------------------
A listener is readable while its queue holds connections the kernel has
completed and nobody has taken.  Two traps:

* **A flood starves everyone else.**  Accepting until the queue is empty
  could take thousands of connections in one turn while the open ones
  wait.  We take at most `ACCEPT_BATCH` per readiness report; the poller
  reports the listener again next turn if more are waiting.
* **Running out of descriptors spins.**  ``accept`` fails with ``EMFILE``
  or ``ENFILE`` while the connection stays queued, so a level-triggered
  poller reports the listener ready again at once -- a 100%-CPU loop that
  accepts nothing.  We stop watching that listener for
  `ACCEPT_RETRY_DELAY` seconds (a timer in `evio._timers`) and keep serving
  the connections we have; the listener is watched again when the timer
  fires.  An error that concerns only the one connection (the peer gave up
  before we took it) is skipped.

Each accepted socket goes to `evio._streams.Streams`, which owns it from
then on.
"""

from __future__ import annotations

import errno
import logging
import time
from functools import partial

from ._addresses import Listener
from ._pollers import READ
from ._streams import Streams
from ._wiring import Parts

__all__ = ["ACCEPT_BATCH", "ACCEPT_RETRY_DELAY", "Acceptor"]

log = logging.getLogger("evio")

# LOOP-29
ACCEPT_BATCH = 128
"""At most this many connections are accepted per readiness report, so a
flood of new connections cannot starve the ones already open."""
ACCEPT_RETRY_DELAY = 0.25
"""Seconds a listener is left unwatched after ``EMFILE``/``ENFILE``."""

# accept() errors that mean "that one connection went away before we took
# it": skip it and keep accepting.
_ACCEPT_SKIP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
# accept() errors that mean "out of descriptors or memory": back off.
_ACCEPT_BACKOFF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Acceptor:
    """The loop's stream listeners.

    Args:
        parts: The loop's parts (its poller, its deadline queue for backing
            off, its dispatch table).
        streams: Takes each accepted socket.
    """

    def __init__(self, parts: Parts, streams: Streams) -> None:
        self.streams = streams
        self.poller = parts.poller
        self.timers = parts.timers
        self.handlers = parts.handlers
        self.backed_off: set[int] = set()  # listener descriptors not watched for now

    def listen(self, index: int, lst: Listener) -> None:
        """Watch a stream listener; its connections get ``addr_index`` ``index``."""
        fd = lst.sock.fileno()
        self.handlers[fd] = (self.accept, (index, lst))
        self.poller.register(fd, READ)

    # LOOP-3: accept until EAGAIN
    def accept(self, entry: tuple[int, Listener], mask: int) -> None:
        """A listener is ready: accept up to `ACCEPT_BATCH` connections."""
        index, lst = entry
        stopping = self.streams.policy.stopping
        for _ in range(ACCEPT_BATCH):
            try:
                sock, remote = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left
            except OSError as e:
                if e.errno in _ACCEPT_SKIP:
                    continue  # that peer gave up before we took it
                if e.errno in _ACCEPT_BACKOFF:
                    log.warning("accept on %s failed (%s); not accepting for %.2fs",
                                lst.address.text, e, ACCEPT_RETRY_DELAY)
                else:
                    log.error("accept on %s failed: %r; backing off", lst.address.text, e)
                self._back_off(lst.sock.fileno())
                return
            c = self.streams.adopt(sock, index)
            if c is not None:
                self.streams.begin(c, remote)
            if stopping():
                return

    # LOOP-5: EMFILE/ENFILE back-off
    def _back_off(self, lfd: int) -> None:
        """Stop watching a listener for `ACCEPT_RETRY_DELAY` seconds."""
        self.poller.unregister(lfd)
        self.backed_off.add(lfd)
        self.timers.at(time.monotonic() + ACCEPT_RETRY_DELAY, partial(self._resume, lfd))

    def _resume(self, lfd: int) -> None:
        """The back-off timer fired: watch the listener again."""
        if lfd in self.backed_off:
            self.backed_off.discard(lfd)
            self.poller.register(lfd, READ)
