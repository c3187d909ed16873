"""Socket-free unit tests of the lifecycle move (evio/_lifecycle.py ``move``).

Every change of a connection's state goes through ``move``, which allows
exactly the rows of the ``LIFECYCLE`` table (LOOP-20). Here it is driven on a
bare record, row by row and pair by pair, with no loop and no socket; the
conformance tests of the same rule drive a real loop through every row.
This implementation's private module: ``impl_detail``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from evio._lifecycle import State

pytestmark = [pytest.mark.impl_detail, pytest.mark.timeout(10)]


@dataclass
class _Record:
    """What ``move`` touches: the id, the state, and the inline-path flag."""

    id: int
    state: State
    fast: bool = True


@pytest.mark.rule("LOOP-20")
def test_every_row_of_the_table_is_a_move() -> None:
    from evio._lifecycle import LIFECYCLE, move

    for row in LIFECYCLE:
        rec = _Record(1, row.source)
        assert move(rec, row.event) is row.target, row
        assert rec.state is row.target


@pytest.mark.rule("LOOP-20")
def test_every_change_the_table_does_not_have_is_refused() -> None:
    from evio._lifecycle import LIFECYCLE, LifecycleError, On, State, move

    rows = {(t.source, t.event) for t in LIFECYCLE}
    refused = 0
    for state in State:
        for event in On:
            if (state, event) in rows:
                continue
            rec = _Record(42, state)
            with pytest.raises(LifecycleError, match=f"connection 42: .*{state.value}"):
                move(rec, event)
            assert rec.state is state, "a refused move changes nothing"
            refused += 1
    assert refused > 0
    for final in (State.CLOSED, State.DETACHED):
        assert not any(t.source is final for t in LIFECYCLE), f"{final} is not final"


@pytest.mark.rule("LOOP-20")
def test_leaving_open_ends_the_inline_read_path() -> None:
    from evio._lifecycle import On, State, move

    staying = _Record(1, State.OPEN)
    move(staying, On.BYTES_READ)
    assert staying.fast, "open -> open keeps the inline path"
    leaving = _Record(2, State.OPEN)
    move(leaving, On.CLOSE)
    assert leaving.state is State.FLUSHING and not leaving.fast


@pytest.mark.rule("LOOP-20")
def test_observers_see_each_move_until_they_stop() -> None:
    from evio._lifecycle import On, State, move, observe

    seen: list[tuple[int, object, object, object]] = []
    stop = observe(lambda *change: seen.append(change))
    try:
        rec = _Record(5, State.DIALING)
        move(rec, On.CONNECTED)
        move(rec, On.OPENED)
    finally:
        stop()
    move(rec, On.CLOSE)
    assert seen == [
        (5, State.DIALING, On.CONNECTED, State.OPENING),
        (5, State.OPENING, On.OPENED, State.OPEN),
    ]
