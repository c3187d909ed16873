"""Debug mode (EV-25): a callback slower than the threshold is reported,
naming the callback and the connection; off by default.

Real servers on every poller: a ``data`` that sleeps 0.25 s with
``slow_callback=0.1`` (and with ``EVIO_DEBUG=0.1`` instead) is logged with
its qualified name and connection id; a quick one is not; ``tick`` is
named without an id; with neither option nor variable nothing is logged.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pytest
from harness import recv_exactly
from implementation import evio

pytestmark = pytest.mark.feature("debug-mode")


def sleepy_data(cid: int, d: bytes) -> bytes:
    if d == b"slow":
        time.sleep(0.25)
    return d


def _run(poller: str, caplog: pytest.LogCaptureFixture, **kw: Any) -> list[str]:
    slow_ticks = [0]

    def tick() -> float | None:
        if slow_ticks[0] == 0:
            slow_ticks[0] = 1
            time.sleep(0.15)
            return 0.01
        return None

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="evio"):
        done: list[BaseException | None] = []
        server: list[evio.Server] = []
        ev = evio.Events(serving=server.append, data=sleepy_data, tick=tick)

        def main() -> None:
            try:
                evio.serve(ev, "tcp4://127.0.0.1:0", poller=poller, **kw)  # type: ignore[arg-type]
                done.append(None)
            except BaseException as e:
                done.append(e)

        t = threading.Thread(target=main)
        t.start()
        end = time.monotonic() + 10
        while not server and time.monotonic() < end:  # bounded: serving comes at once
            time.sleep(0.01)
        with socket.create_connection(server[0].addrs[0], timeout=10) as c:
            c.sendall(b"fast")
            assert recv_exactly(c, 4) == b"fast"
            c.sendall(b"slow")
            assert recv_exactly(c, 4) == b"slow"
        server[0].stop()
        t.join(10)
        assert done == [None]
    return [r.getMessage() for r in caplog.records if "slow callback" in r.getMessage()]


@pytest.mark.rule("EV-25")
def test_a_slow_callback_is_named_with_its_connection(
        poller: str, caplog: pytest.LogCaptureFixture) -> None:
    msgs = _run(poller, caplog, slow_callback=0.1)
    data_msgs = [m for m in msgs if "sleepy_data" in m]
    assert len(data_msgs) == 1, msgs
    assert "test_debug.sleepy_data" in data_msgs[0] and "for connection 1" in data_msgs[0]
    assert any("(tick)" in m and "connection" not in m.split("took")[0] for m in msgs), msgs


@pytest.mark.rule("EV-25")
def test_evio_debug_turns_it_on_and_it_is_off_by_default(
        poller: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVIO_DEBUG", raising=False)
    assert _run(poller, caplog) == []
    monkeypatch.setenv("EVIO_DEBUG", "0.1")
    assert any("sleepy_data" in m for m in _run(poller, caplog))


@pytest.mark.impl_detail  # evio._debug is this implementation's module
@pytest.mark.rule("EV-25")
def test_bad_thresholds_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from evio._debug import DEFAULT_THRESHOLD, slow_threshold

    monkeypatch.delenv("EVIO_DEBUG", raising=False)
    assert slow_threshold(None) is None
    for bad in (0, -1, float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="slow_callback"):
            slow_threshold(bad)  # type: ignore[arg-type]
    monkeypatch.setenv("EVIO_DEBUG", "1")
    assert slow_threshold(None) == DEFAULT_THRESHOLD
    monkeypatch.setenv("EVIO_DEBUG", "soon")
    with pytest.raises(ValueError, match="EVIO_DEBUG"):
        slow_threshold(None)
    with pytest.raises(ValueError, match="EVIO_DEBUG"):
        evio.serve(evio.Events(), "tcp4://127.0.0.1:0")
