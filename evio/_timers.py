"""Timers: one deadline queue for everything the loop must do at a time.

Owns: everything the loop does at a time: one deadline queue.

Theory of operation
-------------------
The loop sleeps in one system call, and the only thing that decides how
long it may sleep is *the earliest thing that is due*.  Four kinds of thing
fall due: the next ``tick``, a dial's timeout, a connection's idle timeout,
and the moment a listener that ran out of descriptors is watched again.
Keeping each in its own structure means merging four answers by hand on
every turn; keeping them in one queue makes the poll timeout one lookup.

So there is one binary heap of ``(when, sequence, timer)``.  The sequence
number breaks ties in the order timers were set, so two timers due at the
same instant fire in a fixed order and the heap never compares two
`Timer` records.

The trap is *cancellation*.  Removing an entry from the middle of a heap
costs a linear search, and a server that closes ten thousand connections a
second, each with an idle timer, would pay it ten thousand times.  So a
cancelled timer only forgets its callback; the heap drops it as soon as
it is at the top (so the earliest entry is always live, and the loop
reads its poll timeout off ``heap[0]`` with no call), and when more than
half the heap is dead it is rebuilt in one linear pass.  Memory stays
proportional to the live timers.

The same queue serves the application: `evio.Server.call_later` puts a
user's function on it and hands back its `Timer`, whose `Timer.cancel`
is the cheap cancellation above.  A timer may be tied to a connection; the
connection cancels it when it closes (`evio._streams`).

Everything here runs on the loop's thread: no locks.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

__all__ = ["MAX_POLL_WAIT", "Timer", "Timers"]

MAX_POLL_WAIT = 86400.0
"""The longest one poll waits when something is due: backends overflow
somewhere past 24 days, and waking once a day to find nothing due is free."""

_COMPACT_AT = 64
"""Dead entries are swept only once there are at least this many."""


class Timer:
    """One pending call on the loop's thread, as `evio.Server.call_later` returns it.

    For the loop's thread only, like the queue it sits in.

    Attributes:
        when: The ``time.monotonic()`` at which it is due.
        fire: What the loop calls then; ``None`` once cancelled or fired.
    """

    __slots__ = ("_queue", "fire", "when")

    def __init__(self, when: float, fire: Callable[[], None], queue: Timers | None = None) -> None:
        self.when = when
        self.fire: Callable[[], None] | None = fire
        self._queue = queue

    @property
    def active(self) -> bool:
        """Whether it is still due to fire (not fired, not cancelled)."""
        return self.fire is not None

    def cancel(self) -> bool:
        """Make sure it never fires (rule TIMER-2).

        Returns:
            True if it was still due and now will not fire; False if it had
            already fired or been cancelled (then nothing happens).
        """
        if self.fire is None:
            return False
        if self._queue is not None:
            self._queue.cancel(self)
        else:
            self.fire = None
        return True

    def __repr__(self) -> str:
        state = "active" if self.fire is not None else "done"
        return f"<evio.Timer {state} when={self.when:.3f}>"


class Timers:
    """The loop's single deadline queue."""

    __slots__ = ("_dead", "_seq", "heap")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Timer]] = []
        """The queue itself; the loop tests it for emptiness (it is only
        ever changed in place, so a reference to it stays valid)."""
        self._seq = itertools.count()
        self._dead = 0

    def at(self, when: float, fire: Callable[[], None]) -> Timer:
        """Call ``fire()`` on the loop's thread once ``time.monotonic() >= when``."""
        t = Timer(when, fire, self)
        heapq.heappush(self.heap, (when, next(self._seq), t))
        return t

    def cancel(self, t: Timer | None) -> None:
        """Forget ``t`` (``None``, fired or already cancelled: nothing to do)."""
        if t is None or t.fire is None:
            return
        t.fire = None
        self._dead += 1
        heap = self.heap
        self._live_head()
        if self._dead >= _COMPACT_AT and self._dead * 2 > len(heap):
            heap[:] = [e for e in heap if e[2].fire is not None]
            heapq.heapify(heap)
            self._dead = 0

    def run_due(self, now: float, stopping: Callable[[], bool]) -> None:
        """Fire every timer due by ``now`` (a ``time.monotonic()``), earliest first.

        "Now" is fixed for the call, and so is the set of timers it may
        fire: one set while it runs (a tick with a delay of 0, even one due
        at ``now`` exactly) waits for the next turn, so one call always ends.
        ``stopping()`` is asked after each timer, and a true answer ends the
        call (what is left fires on a later turn, or never).
        """
        heap = self.heap
        # Entries pushed from here on have a larger sequence number: the call
        # stops at the first of them to reach the top.  An old entry still
        # due behind it is due no earlier than that new one, which is due
        # already; so the next turn's poll does not wait, and both fire then.
        first_new = next(self._seq)
        while heap and heap[0][0] <= now and heap[0][1] < first_new:
            t = heapq.heappop(heap)[2]
            fire = t.fire
            if fire is None:
                self._dead -= 1
                continue
            t.fire = None
            fire()
            if stopping():
                break
        self._live_head()

    def _live_head(self) -> None:
        """Drop cancelled entries from the top: the earliest entry is always
        live, so the loop reads its poll timeout off ``heap[0]`` without a call."""
        heap = self.heap
        while heap and heap[0][2].fire is None:
            heapq.heappop(heap)
            self._dead -= 1
