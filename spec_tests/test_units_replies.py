"""Socket-free unit tests of the reply splitters (evio/_events.py).

What a callback returns is taken apart by small pure functions before the
loop acts on it: ``split_reply`` (``data``), ``split_opened``,
``split_action`` (the action-only callbacks) and ``split_tick``. They are
this implementation's private helpers, so these tests are ``impl_detail``;
the socket tests of the same rules are in test_events.py and test_ticker.py.
"""

from __future__ import annotations

import array
import math

import pytest
from implementation import evio

pytestmark = [pytest.mark.impl_detail, pytest.mark.timeout(10)]

Action = evio.Action


@pytest.mark.rule("EV-3")
@pytest.mark.parametrize(
    ("reply", "out", "action"),
    [
        (None, None, "NONE"),
        (b"hi", b"hi", "NONE"),
        (bytearray(b"hi"), b"hi", "NONE"),
        (memoryview(b"hi"), b"hi", "NONE"),
        ("CLOSE", None, "CLOSE"),
        ((b"bye", "CLOSE"), b"bye", "CLOSE"),
        ((None, "SHUTDOWN"), None, "SHUTDOWN"),
        ((b"x", None), b"x", "NONE"),
    ],
)
def test_split_reply_takes_every_shape_data_may_return(
    reply: object, out: bytes | None, action: str
) -> None:
    from evio._events import split_reply

    if isinstance(reply, str):
        reply = Action.__members__[reply]
    elif isinstance(reply, tuple) and isinstance(reply[1], str):
        reply = (reply[0], Action.__members__[reply[1]])
    got_out, got_action = split_reply(reply)
    assert (None if got_out is None else bytes(got_out)) == out
    assert got_action is Action.__members__[action]


@pytest.mark.rule("EV-3")
def test_a_memoryview_of_any_shape_is_sent_byte_for_byte() -> None:
    from evio._events import split_reply

    ints = array.array("i", [1, 2, 3])
    wide = memoryview(ints)
    out, _ = split_reply(wide)
    assert out is not None and bytes(out) == ints.tobytes() and len(out) == 3 * ints.itemsize
    grid = memoryview(bytes(range(6))).cast("B", (2, 3))
    out, _ = split_reply(grid)
    assert out is not None and bytes(out) == bytes(range(6))
    strided = memoryview(bytes(range(10)))[::2]
    out, _ = split_reply((strided, None))
    assert out is not None and bytes(out) == bytes([0, 2, 4, 6, 8])


@pytest.mark.rule("EV-6")
@pytest.mark.parametrize(
    "reply", ["text", ("text", None), 42, (b"x",), (b"x", 1), [b"x"], (b"x", None, None)]
)
def test_any_other_reply_is_a_type_error_naming_it(reply: object) -> None:
    from evio._events import split_reply

    with pytest.raises(TypeError) as e:
        split_reply(reply)
    assert repr(reply)[:20] in str(e.value) or type(reply).__name__ in str(e.value)
    if isinstance(reply, str) or (isinstance(reply, tuple) and isinstance(reply[0], str)):
        assert "encode()" in str(e.value)


@pytest.mark.rule("EV-4")
def test_split_opened_takes_options_and_the_three_tuple() -> None:
    from evio._events import split_opened

    opts = evio.Options(tcp_keepalive=5)
    assert split_opened(opts) == (None, opts, Action.NONE)
    out, options, action = split_opened((b"hello", opts, Action.CLOSE))
    assert (bytes(out or b""), options, action) == (b"hello", opts, Action.CLOSE)
    assert split_opened((None, None, None)) == (None, None, Action.NONE)
    assert split_opened(b"hi") == (b"hi", None, Action.NONE)
    with pytest.raises(TypeError, match="Options"):
        split_opened((b"x", {"tcp_keepalive": 5}, None))


@pytest.mark.rule("EV-5", "EV-6")
def test_split_action_takes_none_or_an_action_only() -> None:
    from evio._events import split_action

    assert split_action(None, "closed") is Action.NONE
    assert split_action(Action.SHUTDOWN, "closed") is Action.SHUTDOWN
    for bad in (b"out", "CLOSE", 1):
        with pytest.raises(TypeError, match=r"serving must return None or an evio\.Action"):
            split_action(bad, "serving")


@pytest.mark.rule("TICK-2", "TICK-3")
def test_split_tick_takes_a_delay_a_pair_an_action_or_none() -> None:
    from evio._events import split_tick

    assert split_tick(None) == (None, Action.NONE)
    assert split_tick(Action.SHUTDOWN) == (None, Action.SHUTDOWN)
    assert split_tick(0) == (0.0, Action.NONE)
    assert split_tick(0.25) == (0.25, Action.NONE)
    assert split_tick((1, Action.SHUTDOWN)) == (1.0, Action.SHUTDOWN)
    forever, _ = split_tick(10**400)  # however large: simply never
    assert forever is not None and math.isfinite(forever) and forever >= 10**9


@pytest.mark.rule("TICK-4")
@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (-1, ValueError), (-0.001, ValueError), (math.inf, ValueError), (math.nan, ValueError),
        (True, TypeError), ("1", TypeError), ((1, None), TypeError), ((1, 2, 3), TypeError),
    ],
)
def test_split_tick_refuses_bad_delays_and_shapes(reply: object, error: type[Exception]) -> None:
    from evio._events import split_tick

    with pytest.raises(error, match="tick"):
        split_tick(reply)
