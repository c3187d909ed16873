"""Conformance: the ticker (docs/spec/ticker.md), with every poller.

When ``tick`` first runs (TICK-1), how its answer schedules the next call
(TICK-2), stops it (TICK-3) or is refused (TICK-4), and that a server with
no ticker sleeps in ``poll`` (TICK-5). Timings are checked with wide
margins: the assertions tell a fixed schedule from a drifting one, not
milliseconds apart.
"""

from __future__ import annotations

import decimal
import math
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from harness import (
    CountingPoller,
    Recorder,
    Running,
    connect_to,
    echo_events,
    recv_exactly,
    running,
    wait_for,
)
from implementation import evio

Action = evio.Action

LOOPBACK = "tcp4://127.0.0.1:0"


def stop_on(word: bytes) -> Callable[[int, bytes], Any]:
    """A ``data`` callback that echoes, and stops the server on ``word``."""

    def data(cid: int, data: bytes) -> Any:
        return Action.SHUTDOWN if data == word else data

    return data


def run_until_it_stops(poller: str, tick: Callable[[], Any]) -> Running:
    """Serve with ``tick`` until tick itself stops the server."""
    with running(evio.Events(tick=tick), LOOPBACK, poller=poller, stoppable=False) as r:
        r.join()
    return r


def ticker(answers: Callable[[int], Any]) -> tuple[Callable[[], Any], list[float]]:
    """A tick that records when each call started and answers ``answers(n)``
    on its ``n``-th call (from 1)."""
    calls: list[float] = []

    def tick() -> Any:
        calls.append(time.monotonic())
        return answers(len(calls))

    return tick, calls


# -------------------------------------------------------------- first tick


@pytest.mark.rule("TICK-1")
def test_first_tick_right_after_serving(poller: str, addr: str) -> None:
    rec = Recorder()
    queued: list[socket.socket] = []

    def serving(server: evio.Server) -> None:
        rec.add("serving", 0)
        queued.append(connect_to(server.addrs[0]))  # waits in the backlog
        rec.add("serving returns", 0)

    def tick() -> float:
        rec.add("tick", 0)
        return 0.01

    with running(echo_events(rec, serving=serving, tick=tick), addr, poller=poller) as r:
        r.clients.extend(queued)
        wait_for(lambda: rec.of("opened"), what="the queued connection")
    kinds = [kind for kind, _, _ in rec.log]
    assert kinds[:3] == ["serving", "serving returns", "tick"]
    assert kinds.index("tick") < kinds.index("opened")


# --------------------------------------------------------------- schedule


@pytest.mark.rule("TICK-2")
def test_schedule_counts_from_when_a_tick_was_due(poller: str) -> None:
    period, work, n = 0.06, 0.03, 10

    def answer(k: int) -> Any:
        if k > n:
            return Action.SHUTDOWN
        time.sleep(work)  # a tick that takes half its period
        return period

    tick, calls = ticker(answer)
    run_until_it_stops(poller, tick)
    assert len(calls) == n + 1
    total = calls[n] - calls[0]
    # Drift would give n * (period + work) = 0.9 s.
    assert n * period * 0.9 <= total < n * period + 0.25, f"{n} ticks took {total:.3f}s"


@pytest.mark.rule("TICK-2")
def test_overdue_tick_runs_at_once_and_is_not_made_up(poller: str) -> None:
    period, stall = 0.2, 0.5
    returned: list[float] = []

    def answer(k: int) -> Any:
        if k == 2:
            time.sleep(stall)  # two and a half periods: two calls are missed
            returned.append(time.monotonic())
        return Action.SHUTDOWN if k == 5 else period

    tick, calls = ticker(answer)
    run_until_it_stops(poller, tick)
    assert len(calls) == 5
    assert calls[2] - returned[0] < period / 2, "the overdue tick did not run at once"
    for k in (3, 4):
        gap = calls[k] - calls[k - 1]
        assert gap >= period * 0.9, f"missed ticks were made up: tick {k + 1} came after {gap}s"


@pytest.mark.rule("TICK-2", "TICK-4")
@pytest.mark.parametrize("delay", [10**400, 1e300, 86400 * 365], ids=["10**400", "1e300", "year"])
def test_a_huge_delay_is_a_valid_delay(poller: str, delay: Any) -> None:
    # An int of zero or more, however large, is a delay (far in the future),
    # not an error: the server goes on serving until it is stopped.
    rec = Recorder()
    calls: list[float] = []

    def tick() -> Any:
        calls.append(time.monotonic())
        return delay

    with running(echo_events(rec, tick=tick), LOOPBACK, poller=poller) as r:
        c = r.connect()
        c.sendall(b"still here")
        assert recv_exactly(c, 10) == b"still here"
        time.sleep(0.2)
        assert len(calls) == 1
    assert r.error is None


@pytest.mark.rule("TICK-2")
@pytest.mark.parametrize(
    "delay", [0, 0.0, 0.005, 1e-9, (0, Action.NONE), (0.005, Action.NONE)], ids=repr
)
def test_delay_shapes(poller: str, delay: Any) -> None:
    tick, calls = ticker(lambda k: Action.SHUTDOWN if k > 5 else delay)
    start = time.monotonic()
    r = run_until_it_stops(poller, tick)
    assert r.error is None
    assert len(calls) == 6
    assert time.monotonic() - start < 2.0


# ---------------------------------------------------------------- stopping


@pytest.mark.rule("TICK-3")
@pytest.mark.parametrize("answer", [None, Action.NONE], ids=repr)
def test_ticker_stops_and_the_server_goes_on(poller: str, answer: Any) -> None:
    tick, calls = ticker(lambda k: 0.01 if k < 3 else answer)
    ev = evio.Events(tick=tick, data=stop_on(b"stop"))
    with running(ev, LOOPBACK, poller=poller, stoppable=False) as r:
        wait_for(lambda: len(calls) >= 3)
        time.sleep(0.2)  # twenty periods: time enough for calls that must not come
        c = r.connect()
        c.sendall(b"still here")
        assert recv_exactly(c, 10) == b"still here"
        c.sendall(b"stop")
        r.join()
    assert len(calls) == 3


@pytest.mark.rule("TICK-3")
@pytest.mark.parametrize(
    "answer", [Action.SHUTDOWN, (0.01, Action.SHUTDOWN), (0, Action.SHUTDOWN)], ids=repr
)
def test_shutdown_from_tick_stops_the_server(poller: str, answer: Any) -> None:
    tick, calls = ticker(lambda k: 0.01 if k < 3 else answer)
    r = run_until_it_stops(poller, tick)
    assert r.error is None
    assert len(calls) == 3


# ---------------------------------------------------------------- refusals

_BAD_ANSWERS = [
    pytest.param(-1, ValueError, id="negative-int"),
    pytest.param(-0.001, ValueError, id="negative"),
    pytest.param(math.inf, ValueError, id="inf"),
    pytest.param(-math.inf, ValueError, id="-inf"),
    pytest.param(math.nan, ValueError, id="nan"),
    pytest.param((-1, Action.NONE), ValueError, id="negative-in-tuple"),
    pytest.param((math.nan, Action.SHUTDOWN), ValueError, id="nan-in-tuple"),
    pytest.param("abc", TypeError, id="str"),
    pytest.param("0.1", TypeError, id="numeric-str"),
    pytest.param(b"1", TypeError, id="bytes"),
    pytest.param([0.1], TypeError, id="list"),
    pytest.param((0.1,), TypeError, id="1-tuple"),
    pytest.param((0.1, Action.NONE, None), TypeError, id="3-tuple"),
    pytest.param((0.1, "stop"), TypeError, id="not-an-action"),
    pytest.param(("0.1", Action.NONE), TypeError, id="str-in-tuple"),
    pytest.param(decimal.Decimal("0.1"), TypeError, id="decimal"),
]


@pytest.mark.rule("TICK-4")
@pytest.mark.parametrize(("answer", "error"), _BAD_ANSWERS)
def test_bad_answer_ends_serve_with_an_error(
    poller: str, answer: Any, error: type[Exception]
) -> None:
    rec = Recorder()
    tick, _ = ticker(lambda k: answer if rec.of("opened") else 0.01)
    ev = echo_events(rec, tick=tick)
    with running(ev, LOOPBACK, poller=poller, stoppable=False, expect_error=True) as r:
        c = r.connect()
        wait_for(lambda: rec.of("opened"))
        r.join()
        # Handled like an exception from tick: connections are shut down first.
        assert c.recv(1) == b""
    assert isinstance(r.error, error), r.error
    assert [kind for kind, _, _ in rec.log] == ["opened", "closed"]


# -------------------------------------------------------------- no ticker


@pytest.mark.rule("TICK-5")
def test_idle_server_without_ticker_sleeps_in_poll(poller: str, addr: str) -> None:
    counting = CountingPoller(poller)
    ev = echo_events(data=stop_on(b"stop"))
    with running(ev, addr, poller=counting, stoppable=False) as r:
        c = r.connect()
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
        time.sleep(0.3)  # idle: a loop that woke up on its own would poll meanwhile
        c.sendall(b"stop")
        r.join()
    assert counting.timeouts, "the loop never polled"
    assert all(t is None for t in counting.timeouts), counting.timeouts
    assert counting.polls <= 10, f"an idle loop polled {counting.polls} times"
