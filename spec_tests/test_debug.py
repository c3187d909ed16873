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
from harness import recv_exactly, running
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
        addr = server[0].addrs[0]
        assert isinstance(addr, tuple)  # tcp4: (host, port)
        with socket.create_connection((addr[0], addr[1]), timeout=10) as c:
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


BIG = 16 << 20
"""More than loopback's socket buffers take at once: some of it waits for
writability, so the connection has output pending (interest READ | WRITE)."""


def _exercise(addr: Any) -> None:
    """Reads on the inline path, a pause and resume, a large answer left
    pending, and a half-close: every way a connection leaves and rejoins it."""
    with socket.create_connection(addr, timeout=10) as c:
        for _ in range(20):
            c.sendall(b"ping")
            assert recv_exactly(c, 4) == b"ping"
        c.sendall(b"pause")
        assert recv_exactly(c, 5) == b"pause"  # paused now, resumed in 0.05 s
        c.sendall(b"big")
        time.sleep(0.2)  # not reading yet: the answer cannot all go at once
        big = recv_exactly(c, BIG + 3)
        assert big[:3] == b"big" and big[-3:] == b"end"
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
        c.shutdown(socket.SHUT_WR)
        assert c.recv(1) == b""


def _events(server: list[Any]) -> Any:
    def data(cid: int, d: bytes) -> bytes:
        if d == b"pause":
            server[0].pause(cid)
            server[0].call_later(0.05, lambda: server[0].resume(cid) and None)
            return d
        if d == b"big":
            return d + bytes(BIG)[:-3] + b"end"
        return d
    return evio.Events(data=data)


def _debug_mode_bugs(poller: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Run `_exercise` against a server in debug mode; the errors it logged
    about a broken shortcut."""
    holder: list[Any] = []
    with caplog.at_level(logging.ERROR, logger="evio"), running(
            _events(holder), "tcp4://127.0.0.1:0", poller=poller, slow_callback=5.0) as r:
        holder.append(r.server)
        _exercise(r.addrs[0])
    return [rec.getMessage() for rec in caplog.records if "evio bug" in rec.getMessage()]


@pytest.mark.impl_detail  # the inline read path is this implementation's shortcut
@pytest.mark.rule("EV-26")
def test_debug_mode_finds_no_broken_shortcut_in_a_busy_connection(
        poller: str, caplog: pytest.LogCaptureFixture) -> None:
    assert _debug_mode_bugs(poller, caplog) == []


@pytest.mark.impl_detail  # breaks evio's own sync on purpose
@pytest.mark.rule("EV-26")
def test_debug_mode_reports_a_broken_shortcut_and_loses_no_byte(
        poller: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import evio._streams as streams  # the module whose shortcut is checked
    from evio._lifecycle import LIVE

    real_sync = streams.Streams.sync

    def broken_sync(self: Any, c: Any) -> None:
        real_sync(self, c)
        if c.state in LIVE:
            c.fast = True  # a bug: paused or with output pending, still "fast"

    monkeypatch.setattr(streams.Streams, "sync", broken_sync)
    bugs = _debug_mode_bugs(poller, caplog)  # every byte still comes back (`_exercise`)
    assert bugs and "inline read path" in bugs[0]
