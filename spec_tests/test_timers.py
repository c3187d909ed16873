"""Timers and closing any connection: `Server.call_later`, `Timer.cancel`,
`Server.close`, `Server.abort`, and a translator's handshake timeout.

Every test runs a real server on loopback on every poller (and, where a
connection is involved, every family): the timers fire from the loop's one
deadline queue, on the loop's thread; a connection closed or aborted from
another connection's callback finishes at the end of that turn, its output
sent (close) or dropped with a reset (abort); a tied timer goes with its
connection (TIMER-1 to TIMER-5).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pytest
from harness import (
    Recorder,
    TranslatorBase,
    echo_events,
    read_to_end,
    recv_all,
    recv_exactly,
    running,
    small_socket,
    wait_for,
    watching_transitions,
)
from implementation import evio, hook

pytestmark = pytest.mark.feature("timers")

Action = evio.Action

BIG = 4 * 1024 * 1024


@pytest.mark.rule("TIMER-1", "TIMER-2")
def test_call_later_fires_in_order_on_the_loop_thread(poller: str) -> None:
    fired: list[tuple[str, float]] = []
    threads: set[int] = set()
    checks: dict[str, Any] = {}
    loop_thread: list[int] = []

    def note(tag: str) -> None:
        threads.add(threading.get_ident())
        fired.append((tag, time.monotonic()))

    def data(cid: int, d: bytes) -> bytes:
        assert r.server is not None
        loop_thread.append(threading.get_ident())
        checks["start"] = time.monotonic()
        srv = r.server
        srv.call_later(0.2, lambda: note("b"))
        srv.call_later(0.1, lambda: note("a"))
        zero = srv.call_later(0, lambda: note("zero"))
        never = srv.call_later(0.05, lambda: note("never"))
        checks["cancel"] = (never.cancel(), never.cancel(), never.active)
        checks["zero-before-return"] = (list(fired), zero.active)
        checks["zero"] = zero
        return d

    with running(echo_events(data=data), "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        assert recv_exactly(c, 2) == b"go"
        wait_for(lambda: len(fired) == 3, what="three timers")
        time.sleep(0.1)
    assert [t for t, _ in fired] == ["zero", "a", "b"]
    assert checks["cancel"] == (True, False, False)
    assert checks["zero-before-return"] == ([], True), "a delay of 0 fired inside the callback"
    assert not checks["zero"].active
    start = checks["start"]
    assert fired[1][1] - start >= 0.1 and fired[2][1] - start >= 0.2
    assert threads == set(loop_thread)


@pytest.mark.rule("TIMER-1")
def test_a_timer_that_raises_is_logged_and_one_that_answers_shutdown_stops(
        poller: str, caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise RuntimeError("timer failed")

    def serving(server: evio.Server) -> None:
        server.call_later(0, boom)
        server.call_later(0.3, lambda: Action.SHUTDOWN)

    with caplog.at_level(logging.ERROR, logger="evio"), running(
            echo_events(serving=serving), "tcp4://127.0.0.1:0", poller=poller,
            stoppable=False) as r:
        c = r.connect()
        c.sendall(b"still here")
        assert recv_exactly(c, 10) == b"still here"
        r.join()
    assert any("call_later" in rec.getMessage() for rec in caplog.records)


@pytest.mark.rule("TIMER-1", "TIMER-2")
def test_call_later_refuses_bad_arguments() -> None:
    errors: list[str] = []

    def serving(server: evio.Server) -> Action:
        for delay, fn, kw in [(-1, print, {}), (float("inf"), print, {}),
                              (float("nan"), print, {}), ("1", print, {}),
                              (True, print, {}), (1, "print", {}), (1, print, {"id": 12345})]:
            try:
                server.call_later(delay, fn, **kw)  # type: ignore[arg-type]
            except (ValueError, TypeError) as e:
                errors.append(type(e).__name__)
        return Action.SHUTDOWN

    with running(evio.Events(serving=serving), "tcp4://127.0.0.1:0", stoppable=False) as r:
        r.join()
    assert errors == ["ValueError"] * 5 + ["TypeError", "ValueError"]


@pytest.mark.rule("TIMER-2")
def test_a_tied_timer_goes_with_its_connection(poller: str, addr: str) -> None:
    rec = Recorder()
    fired: list[int] = []

    def opened(cid: int, info: evio.Info) -> None:
        assert r.server is not None
        rec.add("opened", cid)
        r.server.call_later(0.3, lambda: fired.append(cid), id=cid)

    with running(echo_events(rec, opened=opened), addr, poller=poller) as r:
        c = r.connect()
        wait_for(lambda: rec.ids() == [1], what="opened")
        keep = r.connect()
        wait_for(lambda: rec.ids() == [1, 2], what="opened 2")
        c.close()
        wait_for(lambda: [i for i, _ in rec.of("closed")] == [1], what="closed")
        wait_for(lambda: fired == [2], what="the tied timer of the open connection")
        time.sleep(0.3)
        keep.close()
    assert fired == [2], "a tied timer fired after its connection closed"


@pytest.mark.rule("TIMER-3")
def test_close_from_another_connection_sends_its_output_first(poller: str, addr: str) -> None:
    rec = Recorder()
    answers: list[Any] = []

    def data(cid: int, d: bytes) -> Any:
        assert r.server is not None
        rec.add("data", cid, d)
        if d == b"big":
            return bytes(range(256)) * (BIG // 256)
        if d.startswith(b"close "):
            target = int(d.split()[1])
            answers.append((r.server.close(target), r.server.close(target),
                            [i for i, _ in rec.of("closed")], r.server.close(999)))
            return b"done"
        return d

    with running(echo_events(rec, data=data), addr, poller=poller) as r:
        a = small_socket(r.addrs[0])
        r.clients.append(a)
        wait_for(lambda: rec.ids() == [1], what="opened 1")
        a.sendall(b"big")
        wait_for(lambda: rec.of("data"), what="data 1")
        b = r.connect()
        b.sendall(b"close 1")
        assert recv_exactly(b, 4) == b"done"
        got, was_reset = read_to_end(a)
        assert not was_reset
        assert got == bytes(range(256)) * (BIG // 256)
        wait_for(lambda: rec.of("closed") == [(1, None)], what="closed 1")
        b.sendall(b"echo")
        assert recv_exactly(b, 4) == b"echo"  # the other connection goes on
    assert answers == [(True, True, [], False)]


@pytest.mark.rule("TIMER-3")
def test_close_of_its_own_connection_from_data_sends_that_output(poller: str,
                                                                   addr: str) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> bytes:
        assert r.server is not None
        r.server.close(cid)
        return b"last words"

    with running(echo_events(rec, data=data), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"hi")
        assert recv_all(c) == b"last words"
        wait_for(lambda: rec.of("closed") == [(1, None)], what="closed")


@pytest.mark.rule("TIMER-4")
def test_abort_drops_pending_output_and_resets(poller: str, addr: str) -> None:
    rec = Recorder()
    answers: list[Any] = []

    def data(cid: int, d: bytes) -> Any:
        assert r.server is not None
        if d == b"big":
            return bytes(BIG)
        if d.startswith(b"abort "):
            target = int(d.split()[1])
            answers.append((r.server.abort(target), [i for i, _ in rec.of("closed")],
                            r.server.abort(999)))
            return b"done"
        return d

    with running(echo_events(rec, data=data), addr, poller=poller) as r:
        a = small_socket(r.addrs[0])
        r.clients.append(a)
        wait_for(lambda: rec.ids() == [1], what="opened 1")
        a.sendall(b"big")
        wait_for(lambda: r.server is not None and r.server.pending(1) > 0, what="pending")
        b = r.connect()
        b.sendall(b"abort 1")
        assert recv_exactly(b, 4) == b"done"
        wait_for(lambda: rec.of("closed") == [(1, None)], what="closed 1")
        got, was_reset = read_to_end(a)
        assert len(got) < BIG, "aborted, yet every pending byte arrived"
        if not addr.startswith("unix"):
            assert was_reset, "a TCP abort should reset the connection"
    assert answers == [(True, [], False)]


@pytest.mark.rule("TIMER-4", "LOOP-20")
def test_abort_from_every_state_that_holds_a_socket(poller: str) -> None:
    """open, flushing, writing only, reading only -> closed, on ``abort``."""
    rec = Recorder()

    def data(cid: int, d: bytes) -> Any:
        assert r.server is not None
        if d == b"flush":
            return bytes(BIG), Action.CLOSE
        if d == b"fin":
            r.server.shutdown_write(cid)
        if d == b"abort all":
            return b"".join(b"%d" % r.server.abort(i) for i in range(1, 5))
        return None

    ev = echo_events(rec, data=data, eof=lambda cid: None)
    with watching_transitions() as seen, running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        srv = r.server
        assert srv is not None
        clients: dict[str, socket.socket] = {}
        for i, how in enumerate(("open", "flush", "halfclosed", "fin"), start=1):
            c = small_socket(r.addrs[0])
            r.clients.append(c)
            wait_for(lambda: len(rec.ids()) == len(clients) + 1, what=f"opened {i}")
            clients[how] = c
            if how == "flush":
                c.sendall(b"flush")
                wait_for(lambda: srv.pending(2) > 0, what="pending")
            elif how == "halfclosed":
                c.shutdown(socket.SHUT_WR)
            elif how == "fin":
                c.sendall(b"fin")
                assert recv_all(c) == b""  # our FIN: reading only now
        time.sleep(0.2)
        trigger = r.connect()
        trigger.sendall(b"abort all")
        assert recv_exactly(trigger, 4) == b"1111"
        wait_for(lambda: len(rec.of("closed")) == 4, what="four aborts")
    abort_rows = hook("lifecycle").ABORT_ROWS
    assert seen >= abort_rows, f"not driven: {abort_rows - seen}"


class _Hello(TranslatorBase):
    """A translator whose handshake is the peer saying ``hello``."""

    def __init__(self) -> None:
        self.done = False

    @property
    def handshake_done(self) -> bool:
        return self.done

    def receive(self, wire: bytes) -> tuple[bytes, bytes]:
        if not self.done and wire.startswith(b"hello"):
            self.done = True
            return wire[5:], b"welcome"
        return wire, b""


@pytest.mark.rule("TIMER-5")
def test_a_handshake_not_done_in_time_is_aborted(poller: str, addr: str) -> None:
    rec = Recorder()
    ev = evio.translate(echo_events(rec), None, lambda cid, info: _Hello(),
                        handshake_timeout=0.4)
    with running(ev, addr, poller=poller) as r:
        silent = r.connect()
        wait_for(lambda: rec.ids() == [1], what="opened 1")
        polite = r.connect()
        polite.sendall(b"hello")
        assert recv_exactly(polite, 7) == b"welcome"
        wait_for(lambda: [i for i, _ in rec.of("closed")] == [1], what="the timeout")
        [(_, err)] = rec.of("closed")
        assert isinstance(err, TimeoutError)
        read_to_end(silent)  # ended, by a reset or an end of stream
        time.sleep(0.5)
        polite.sendall(b"still")
        assert recv_exactly(polite, 5) == b"still"
    assert [i for i, _ in rec.of("closed")] == [1, 2]


@pytest.mark.rule("TIMER-5")
@pytest.mark.parametrize("bad", [0, -1, float("inf"), "1", True])
def test_a_bad_handshake_timeout_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="handshake_timeout"):
        evio.translate(evio.Events(), None, lambda cid, info: evio.Passthrough(),
                       handshake_timeout=bad)  # type: ignore[arg-type]
