"""Socket-free unit tests of the loop's deadline queue (evio/_timers.py).

The queue is sans-I/O: it is handed "now" and calls what is due, so it is
tested here with a made-up clock, beside the socket tests of the same rules
(test_timers.py, test_ticker.py). These use this implementation's private
module, so they are ``impl_detail``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytestmark = [pytest.mark.impl_detail, pytest.mark.timeout(10)]


def _recorder(log: list[str], name: str) -> Callable[[], None]:
    return lambda: log.append(name)


def _never() -> bool:
    return False


@pytest.mark.rule("LOOP-16")
def test_due_timers_fire_earliest_first_and_ties_in_the_order_set() -> None:
    from evio._timers import Timers

    q = Timers()
    log: list[str] = []
    for name, when in [("c", 3.0), ("a1", 1.0), ("b", 2.0), ("a2", 1.0), ("late", 9.0)]:
        q.at(when, _recorder(log, name))
    q.run_due(3.0, _never)
    assert log == ["a1", "a2", "b", "c"]
    assert [e[0] for e in q.heap] == [9.0], "what is not due stays queued"
    q.run_due(9.0, _never)
    assert log[-1] == "late" and not q.heap


@pytest.mark.rule("LOOP-16", "TICK-2")
def test_a_timer_set_while_timers_run_waits_for_the_next_call() -> None:
    from evio._timers import Timers

    q = Timers()
    log: list[str] = []
    clock = [5.0]

    def again() -> None:
        log.append("tick")
        # A tick with a delay of 0: due at the clock read inside the call,
        # a little after the "now" the call was given.
        clock[0] += 1e-6
        q.at(clock[0], again)

    q.at(5.0, again)
    q.run_due(5.0, _never)
    assert log == ["tick"], "one call ends even when each timer sets another due at once"
    q.run_due(clock[0], _never)
    assert log == ["tick", "tick"]


@pytest.mark.rule("LOOP-16", "TICK-2")
def test_a_timer_set_due_at_the_calls_own_now_waits_for_the_next_call() -> None:
    from evio._timers import Timers

    q = Timers()
    log: list[str] = []

    def again() -> None:
        log.append("tick")
        q.at(5.0, again)  # due at the very "now" the call was given

    q.at(5.0, again)
    q.run_due(5.0, _never)
    assert log == ["tick"]
    q.run_due(5.0, _never)
    assert log == ["tick", "tick"]


@pytest.mark.rule("LOOP-16")
def test_stopping_ends_the_call_and_leaves_the_rest_queued() -> None:
    from evio._timers import Timers

    q = Timers()
    log: list[str] = []
    for i in range(3):
        q.at(1.0, _recorder(log, str(i)))
    q.run_due(1.0, lambda: bool(log))
    assert log == ["0"] and len(q.heap) == 2


@pytest.mark.rule("TIMER-2")
def test_cancel_is_true_once_and_a_cancelled_timer_never_fires() -> None:
    from evio._timers import Timers

    q = Timers()
    log: list[str] = []
    t = q.at(1.0, _recorder(log, "x"))
    kept = q.at(2.0, _recorder(log, "y"))
    assert t.active and t.cancel() is True
    assert not t.active and t.cancel() is False
    q.run_due(10.0, _never)
    assert log == ["y"]
    assert kept.cancel() is False, "a fired timer cannot be cancelled"


@pytest.mark.rule("TIMER-2", "LOOP-2")
def test_the_head_of_the_queue_is_always_a_live_timer() -> None:
    # The loop reads its poll timeout off heap[0] without a call (LOOP-2):
    # a cancelled head must not make it wake early for nothing.
    from evio._timers import Timers

    q = Timers()
    first = q.at(1.0, lambda: None)
    q.at(2.0, lambda: None)
    first.cancel()
    assert q.heap[0][0] == 2.0
    q.heap[0][2].cancel()
    assert not q.heap, "an all-cancelled queue is empty: poll blocks with no limit (TICK-5)"


@pytest.mark.rule("TIMER-2")
def test_many_cancelled_timers_do_not_pile_up() -> None:
    from evio._timers import Timers

    q = Timers()
    live = q.at(10_000.0, lambda: None)
    timers = [q.at(float(i), lambda: None) for i in range(1, 1001)]
    for t in reversed(timers):  # from the back: the head stays live, nothing pops
        t.cancel()
    assert len(q.heap) < 200, f"{len(q.heap)} entries kept for one live timer"
    assert live.active and q.heap[0][2] is live


@pytest.mark.rule("TIMER-2")
def test_a_timer_outside_a_queue_can_be_cancelled() -> None:
    from evio._timers import Timer

    t = Timer(1.0, lambda: None)
    assert t.cancel() is True and t.cancel() is False and t.fire is None
    assert "done" in repr(t)
