"""Socket-free unit tests of the doorbell's mailbox (evio/_wake.py ``Waker``).

The loop asks the doorbell for everything rung since the last time
(``take``); other threads ring it (``wake``, ``post``). On Linux the bell is
an eventfd, so no socket is involved. These use this implementation's
private module, so they are ``impl_detail``; the socket tests of the same
rules are in test_wake.py.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from evio._wake import Waker

pytestmark = [pytest.mark.impl_detail, pytest.mark.timeout(10)]


@pytest.fixture
def bell() -> Iterator[Waker]:
    from evio._wake import Waker

    w = Waker()
    yield w
    w.close()  # closing again, after a test closed it, is harmless


def _rung(w: Waker) -> bool:
    """Whether the bell's descriptor is ready (the loop's poll would return)."""
    return bool(select.select([w.fileno()], [], [], 0)[0])


@pytest.mark.rule("WAKE-1", "WAKE-2")
def test_several_wakes_of_one_id_are_taken_once(bell: Waker) -> None:
    assert not _rung(bell)
    assert bell.wake(7) and bell.wake(7) and bell.wake(3)
    assert _rung(bell)
    ids, jobs = bell.take()
    assert ids == {3, 7} and jobs == []
    assert bell.take() == (set(), [])


@pytest.mark.rule("WAKE-6")
def test_take_drains_the_descriptor(bell: Waker) -> None:
    for cid in range(100):
        bell.wake(cid)
    bell.take()
    assert not _rung(bell), "a drained bell would keep the loop spinning"
    bell.drain()  # draining an empty bell neither blocks nor fails
    assert not _rung(bell)


@pytest.mark.rule("WAKE-2")
def test_a_wake_after_a_take_rings_again(bell: Waker) -> None:
    bell.wake(1)
    bell.take()
    bell.wake(1)
    assert _rung(bell), "a wake after the take must ring the bell again: it would be lost"
    assert bell.take()[0] == {1}


@pytest.mark.rule("WAKE-1", "WAKE-2")
def test_no_wake_from_other_threads_is_lost(bell: Waker) -> None:
    per_thread, threads = 2000, 4
    start = threading.Barrier(threads + 1)

    def ring(base: int) -> None:
        start.wait()
        for i in range(per_thread):
            bell.wake(base + i)

    workers = [threading.Thread(target=ring, args=(n * per_thread,)) for n in range(threads)]
    for t in workers:
        t.start()
    start.wait()
    seen: set[int] = set()
    for _ in range(100_000):  # the loop's side: take while the others ring
        if select.select([bell.fileno()], [], [], 0.01)[0]:
            seen |= bell.take()[0]
        if not any(t.is_alive() for t in workers) and not _rung(bell):
            break
    for t in workers:
        t.join(5)
    seen |= bell.take()[0]
    assert seen == set(range(threads * per_thread))


@pytest.mark.rule("WAKE-1", "LOOP-18")
def test_jobs_run_in_order_and_a_closed_bell_refuses_everything(bell: Waker) -> None:
    log: list[int] = []
    assert bell.post(lambda: log.append(1)) and bell.post(lambda: log.append(2))
    _ids, jobs = bell.take()
    for job in jobs:
        job()
    assert log == [1, 2]
    bell.post(lambda: log.append(3))
    left = bell.close()
    assert len(left) == 1, "close hands back the jobs that never ran"
    assert bell.wake(1) is False and bell.post(lambda: None) is False
    bell.nudge()  # after close: nothing to ring, and no error
    assert bell.close() == [], "a second close is harmless and hands back nothing"


@pytest.mark.rule("WAKE-1")
def test_post_runs_before_under_the_lock_only_when_accepted(bell: Waker) -> None:
    marks: list[str] = []
    assert bell.post(lambda: None, before=lambda: marks.append("accepted"))
    bell.close()
    assert bell.post(lambda: None, before=lambda: marks.append("late")) is False
    assert marks == ["accepted"]
