"""Conformance: events and actions (docs/spec/events.md), over every poller and family.

Every callback is optional and what each may return (EV-1..EV-15); one
callback policy, every callback against every action (EV-16..EV-20); and a
connection that fails at its edges: a translator that fails to set up, a
dial whose translator fails, a ``detached`` that raises (EV-21, EV-22).
"""

from __future__ import annotations

import array
import dataclasses
import logging
import socket
import threading
import time
from typing import Any

import pytest
from harness import (
    Recorder,
    echo_events,
    open_descriptors,
    recv_all,
    recv_exactly,
    running,
    wait_for,
)
from implementation import evio

Action = evio.Action

MiB = 1 << 20


def _closed_errors(rec: Recorder) -> list[Any]:
    return [err for _, err in rec.of("closed")]


@pytest.mark.rule("EV-1")
def test_every_callback_is_optional(poller: str, addr: str) -> None:
    with running(evio.Events(), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"into the void")
        c.shutdown(1)  # SHUT_WR: the server sees the end, closes its side
        assert recv_all(c) == b""  # nothing echoed, the connection closed cleanly


@pytest.mark.rule("EV-1")
def test_without_data_reads_are_discarded(poller: str, addr: str) -> None:
    rec = Recorder()
    ev = dataclasses.replace(echo_events(rec), data=None)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"x" * 100_000)
        c.shutdown(1)
        assert recv_all(c) == b""
        wait_for(lambda: rec.of("closed"))
    assert rec.kinds(1) == ["opened", "closed"]
    assert _closed_errors(rec) == [None]


@pytest.mark.rule("EV-2")
def test_callbacks_run_on_the_serving_thread(poller: str, addr: str) -> None:
    rec = Recorder()
    serving_thread: list[int] = []
    ev = echo_events(
        rec,
        serving=lambda s: serving_thread.append(threading.get_ident()),
        prewrite=lambda cid, n: rec.add("pre", cid),
        postwrite=lambda cid, n, rem: rec.add("post", cid),
    )
    with running(ev, addr, poller=poller) as r:
        clients = [r.connect() for _ in range(5)]
        for c in clients:
            c.sendall(b"abc")
        for c in clients:
            assert recv_exactly(c, 3) == b"abc"
    assert rec.threads == set(serving_thread)
    assert serving_thread[0] != threading.get_ident()


REPLIES: list[tuple[Any, bytes, bool]] = [
    # (what data returns for b"in", what the client receives, whether it then closes)
    (None, b"", False),
    (b"out", b"out", False),
    (bytearray(b"out"), b"out", False),
    (memoryview(b"xoutx")[1:4], b"out", False),
    (Action.NONE, b"", False),
    (Action.CLOSE, b"", True),
    ((b"out", None), b"out", False),
    ((None, Action.NONE), b"", False),
    ((b"bye", Action.CLOSE), b"bye", True),
    ((bytearray(b"bye"), Action.CLOSE), b"bye", True),
]


def _views(size: int) -> list[tuple[str, memoryview, bytes]]:
    """Memoryviews that are not flat byte runs, and the bytes each holds."""
    ints = array.array("i", range(size // 4))
    raw = ints.tobytes()
    grid = memoryview(raw).cast("B", (size // 64, 64))
    strided = memoryview(raw)[::2]
    return [("int-items", memoryview(ints), raw), ("two-dimensions", grid, raw),
            ("strided", strided, raw[::2])]


@pytest.mark.rule("EV-3", "LOOP-8")
@pytest.mark.parametrize("which", ["int-items", "two-dimensions", "strided"])
def test_any_memoryview_is_sent_byte_for_byte(poller: str, addr: str, which: str) -> None:
    # Larger than a socket takes at once, so the loop counts and slices it.
    view, expected = next((v, b) for name, v, b in _views(8 * MiB) if name == which)
    rec = Recorder()
    ev = echo_events(rec, data=lambda cid, d: (view, Action.CLOSE))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        got = recv_all(c)
        wait_for(lambda: rec.of("closed"), what="closed")
    assert len(got) == len(expected) and got == expected
    assert _closed_errors(rec) == [None]


@pytest.mark.rule("EV-3", "EV-7")
@pytest.mark.parametrize(("reply", "expected", "closes"), REPLIES, ids=repr)
def test_data_reply_shapes(
    poller: str, addr: str, reply: Any, expected: bytes, closes: bool
) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return reply if d == b"in" else d  # anything else echoes

    with running(echo_events(rec, data=data), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"in")
        if closes:
            assert recv_all(c) == expected
            wait_for(lambda: rec.of("closed"))
            assert _closed_errors(rec) == [None]
        else:
            wait_for(lambda: rec.of("data"))  # so the marker is a read of its own
            c.sendall(b"|marker")  # a later echo proves what came before
            assert recv_exactly(c, len(expected) + 7) == expected + b"|marker"


OPENED: list[tuple[Any, bytes, bool, bool]] = [
    # (what opened returns, greeting received, whether it closes, whether reads are views)
    (None, b"", False, False),
    (b"hi", b"hi", False, False),
    (evio.Options(reuse_input_buffer=True), b"", False, True),
    ((b"hi", evio.Options(reuse_input_buffer=True), Action.NONE), b"hi", False, True),
    ((b"hi", None, None), b"hi", False, False),
    ((b"go away", None, Action.CLOSE), b"go away", True, False),
    ((b"go away", Action.CLOSE), b"go away", True, False),
]


@pytest.mark.rule("EV-4")
@pytest.mark.parametrize(("reply", "greeting", "closes", "views"), OPENED, ids=repr)
def test_opened_reply_shapes(
    poller: str, addr: str, reply: Any, greeting: bytes, closes: bool, views: bool
) -> None:
    kinds: list[type] = []

    def data(cid: int, d: Any) -> Any:
        kinds.append(type(d))
        return bytes(d)

    ev = evio.Events(opened=lambda cid, info: reply, data=data)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        if closes:
            assert recv_all(c) == greeting
            return
        c.sendall(b"echo")
        assert recv_exactly(c, len(greeting) + 4) == greeting + b"echo"
    assert set(kinds) == {memoryview if views else bytes}


@pytest.mark.rule("EV-5")
def test_action_only_callbacks(poller: str, addr: str) -> None:
    rec = Recorder()
    ev = echo_events(
        rec,
        prewrite=lambda cid, n: Action.NONE,
        postwrite=lambda cid, n, rem: Action.CLOSE,  # close after the first write
        closed=lambda cid, err: rec.add("closed", cid, err),
    )
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"once")
        assert recv_all(c) == b"once"
        wait_for(lambda: rec.of("closed"))
    assert _closed_errors(rec) == [None]


BAD_REPLIES = [42, "text", (b"x",), (b"x", "close"), ("x", Action.NONE), [b"x"], 1.5]


@pytest.mark.rule("EV-6", "EV-9")
@pytest.mark.parametrize("bad", BAD_REPLIES, ids=repr)
def test_bad_data_reply_is_a_type_error(
    poller: str, addr: str, bad: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    ev = echo_events(rec, data=lambda cid, d: bad)
    with caplog.at_level(logging.ERROR, logger="evio"), running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"x")
        assert recv_all(c) == b""
        wait_for(lambda: rec.of("closed"))
    (err,) = _closed_errors(rec)
    assert isinstance(err, TypeError)
    assert type(bad).__name__ in str(err)
    assert any(rec_.exc_info and rec_.exc_info[1] is err for rec_ in caplog.records)


@pytest.mark.rule("EV-6")
@pytest.mark.parametrize("bad", [42, (b"x", "opts", Action.NONE)], ids=repr)
def test_bad_opened_reply_is_a_type_error(poller: str, addr: str, bad: Any) -> None:
    rec = Recorder()
    ev = echo_events(rec, opened=lambda cid, info: bad)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        assert recv_all(c) == b""
        wait_for(lambda: rec.of("closed"))
    (err,) = _closed_errors(rec)
    assert isinstance(err, TypeError)


@pytest.mark.rule("EV-6")
@pytest.mark.parametrize("where", ["eof", "prewrite", "postwrite"])
def test_a_bad_answer_from_any_connection_callback_is_a_type_error(
    poller: str, addr: str, where: str
) -> None:
    # 42 is no answer any callback may give: a TypeError naming it, handled
    # as if that callback had raised it (the connection closes with it).
    rec = Recorder()
    bad: dict[str, Any] = {where: lambda *args: 42}
    ev = echo_events(rec, **bad)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"x")
        if where == "eof":
            assert recv_exactly(c, 1) == b"x"
            c.shutdown(socket.SHUT_WR)
        recv_all(c)
        wait_for(lambda: rec.of("closed"), what="closed")
    (err,) = _closed_errors(rec)
    assert isinstance(err, TypeError) and "int" in str(err)


@pytest.mark.rule("EV-8")
def test_detach_without_a_detached_callback_is_a_type_error(poller: str, addr: str) -> None:
    rec = Recorder()
    ev = echo_events(rec, data=lambda cid, d: (b"before", Action.DETACH))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"x")
        assert recv_all(c) == b"before"
        wait_for(lambda: rec.of("closed"))
    (err,) = _closed_errors(rec)
    assert isinstance(err, TypeError) and "detached" in str(err)


@pytest.mark.rule("EV-8", "EV-10")
@pytest.mark.parametrize("hook", ["prewrite", "postwrite"])
def test_detach_from_a_write_hook_without_detached_drops_the_output(
    poller: str, addr: str, hook: str
) -> None:
    # A TypeError "raised" by the hook: the connection closes at once and its
    # pending output is dropped, as when the hook raises (EV-10).
    rec = Recorder()
    big = 16 * MiB  # more than any socket buffer takes: most of it stays pending
    hooks: dict[str, Any] = {hook: (lambda *args: Action.DETACH)}
    ev = echo_events(rec, data=lambda cid, d: b"x" * big, **hooks)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        wait_for(lambda: rec.of("closed"), what="closed")
        got = recv_all(c)
    (err,) = _closed_errors(rec)
    assert isinstance(err, TypeError) and "detached" in str(err)
    assert len(got) < big


@pytest.mark.rule("EV-9", "EV-13")
@pytest.mark.parametrize("where", ["opened", "data"])
def test_exception_in_a_connection_callback_closes_only_it(
    poller: str, addr: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    big = bytes(range(256)) * (16 * MiB // 256)
    boom = RuntimeError("boom")

    def opened(cid: int, info: evio.Info) -> Any:
        rec.add("opened", cid)
        if where == "opened" and cid == 1:
            return b"queued before it raised"[:0] or _raise(boom)
        # The victim is read while its output is pending: no flow control.
        return evio.Options(high_water=1 << 40)

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        if cid == 1 and d == b"big":
            return big  # more than the socket takes at once: stays pending
        if cid == 1 and d == b"raise":
            raise boom
        return d

    ev = echo_events(rec, opened=opened, data=data)
    with caplog.at_level(logging.ERROR, logger="evio"), running(ev, addr, poller=poller) as r:
        victim = r.connect()
        bystander = r.connect()
        if where == "data":
            victim.sendall(b"big")
            wait_for(lambda: ("data", 1, b"big") in rec.log)
            victim.sendall(b"raise")
            wait_for(lambda: ("data", 1, b"raise") in rec.log)
            bystander.sendall(b"still here")
            assert recv_exactly(bystander, 10) == b"still here"
            # Output queued before the exception still arrives whole.
            assert recv_all(victim) == big
        else:
            assert recv_all(victim) == b""
        bystander.sendall(b"and here")
        assert recv_exactly(bystander, 8) == b"and here"
        wait_for(lambda: 1 in [i for i, _ in rec.of("closed")])
    assert dict(rec.of("closed"))[1] is boom
    assert any(r_.levelno == logging.ERROR and r_.exc_info and r_.exc_info[1] is boom
               for r_ in caplog.records)


def _raise(e: BaseException) -> Any:
    raise e


@pytest.mark.rule("EV-10")
@pytest.mark.parametrize("where", ["prewrite", "postwrite"])
def test_exception_around_a_write_closes_at_once(poller: str, addr: str, where: str) -> None:
    rec = Recorder()
    boom = ValueError(where)
    big = b"z" * (16 * MiB)

    def around(*args: Any) -> None:
        raise boom

    ev = echo_events(rec, data=lambda cid, d: big, **{where: around})
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"x")
        time.sleep(0.1)  # not reading yet: the first send cannot take it all
        got = recv_all(c)
        wait_for(lambda: rec.of("closed"))
    # prewrite raised before anything was sent; postwrite after the first send,
    # and the rest was dropped.
    assert len(got) < len(big)
    if where == "prewrite":
        assert got == b""
    assert _closed_errors(rec) == [boom]


@pytest.mark.rule("EV-11")
def test_exception_in_closed_is_logged_and_ignored(
    poller: str, addr: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def closed(cid: int, err: BaseException | None) -> None:
        calls.append(cid)
        raise RuntimeError("closed failed")

    ev = echo_events(closed=closed)
    with caplog.at_level(logging.ERROR, logger="evio"), running(ev, addr, poller=poller) as r:
        first = r.connect()
        first.close()
        wait_for(lambda: calls == [1])
        second = r.connect()
        second.sendall(b"ok")
        assert recv_exactly(second, 2) == b"ok"
    assert calls == [1, 2]
    assert sum("closed raised" in r_.getMessage() for r_ in caplog.records) == 2


@pytest.mark.rule("EV-12")
def test_exception_in_serving_is_raised_by_serve(poller: evio.PollerName, addr: str) -> None:
    def serving(server: evio.Server) -> None:
        raise LookupError("serving failed")

    with pytest.raises(LookupError, match="serving failed"):
        evio.serve(evio.Events(serving=serving), addr, poller=poller)


@pytest.mark.rule("EV-12")
def test_exception_in_tick_shuts_down_then_raises(poller: str, addr: str) -> None:
    rec = Recorder()
    go = threading.Event()

    def tick() -> float:
        if go.is_set():
            raise LookupError("tick failed")
        return 0.01

    ev = echo_events(rec, tick=tick)
    with running(ev, addr, poller=poller, stoppable=False, expect_error=True) as r:
        c = r.connect()
        c.sendall(b"hi")
        assert recv_exactly(c, 2) == b"hi"
        go.set()
        r.join()
        assert recv_all(c) == b""
    assert isinstance(r.error, LookupError)
    assert _closed_errors(rec) == [None]


@pytest.mark.rule("EV-14")
def test_records_are_frozen_and_options_validated() -> None:
    info = evio.Info(False, 0, ("127.0.0.1", 1), ("127.0.0.1", 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.closing = True  # type: ignore[misc]
    opts = evio.Options(tcp_keepalive=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.reuse_input_buffer = True  # type: ignore[misc]
    for bad in (0, -1, True, float("nan"), "5"):
        with pytest.raises(ValueError):
            evio.Options(tcp_keepalive=bad)  # type: ignore[arg-type]


@pytest.mark.rule("EV-15")
def test_input_stream_joins_partial_messages() -> None:
    stream = evio.InputStream()
    backing = bytearray(b"GET /a\nGET /b\nGE")
    view = memoryview(backing)
    buf = stream.begin(view)
    assert isinstance(buf, bytes)
    assert buf == b"GET /a\nGET /b\nGE"
    stream.end(view[buf.rindex(b"\n") + 1 :])  # keep the tail, given as a view
    backing[:] = b"X" * len(backing)  # the reused buffer is overwritten...
    assert len(stream) == 2
    buf = stream.begin(b"T /c\n")  # ...but what was kept was copied
    assert buf == b"GET /c\n"
    stream.end(b"")
    assert stream.begin(b"") == b""


# --------------------------------------------- one callback policy (EV-16...)


@pytest.mark.rule("EV-16")
@pytest.mark.parametrize("action", [Action.NONE, Action.CLOSE, Action.DETACH])
def test_serving_may_return_any_action_only_shutdown_stops(poller: str, action: Action) -> None:
    ev = echo_events(serving=lambda s: action)
    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        c.sendall(b"still serving")
        assert recv_exactly(c, 13) == b"still serving"


@pytest.mark.rule("EV-16", "LOOP-1")
def test_serving_returning_shutdown_stops_before_accepting(poller: str) -> None:
    rec = Recorder()
    ev = echo_events(rec, serving=lambda s: Action.SHUTDOWN)
    with running(ev, "tcp4://127.0.0.1:0", poller=poller, stoppable=False) as r:
        r.join()
    assert rec.log == []


@pytest.mark.rule("EV-17")
@pytest.mark.parametrize("action", [Action.CLOSE, Action.DETACH])
def test_tick_returning_close_or_detach_touches_no_connection(
    poller: str, action: Action
) -> None:
    rec = Recorder()
    ticks: list[float] = []

    def tick() -> Any:
        ticks.append(time.monotonic())
        return 0.01, action

    with running(echo_events(rec, tick=tick), "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        c.sendall(b"a")
        assert recv_exactly(c, 1) == b"a"
        n = len(ticks)
        wait_for(lambda: len(ticks) >= n + 3, what="ticks go on")
        c.sendall(b"b")
        assert recv_exactly(c, 1) == b"b"
        assert rec.of("closed") == []


@pytest.mark.rule("EV-17")
def test_tick_returning_an_action_alone_stops_the_ticker(poller: str) -> None:
    ticks: list[int] = []

    def tick() -> Any:
        ticks.append(1)
        return Action.CLOSE

    with running(echo_events(tick=tick), "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        time.sleep(0.1)
        c.sendall(b"ok")
        assert recv_exactly(c, 2) == b"ok"
    assert ticks == [1]


@pytest.mark.rule("EV-18")
@pytest.mark.parametrize("action", [Action.NONE, Action.CLOSE, Action.DETACH, Action.SHUTDOWN])
def test_what_closed_returns(poller: str, action: Action) -> None:
    rec = Recorder()

    def closed(cid: int, err: BaseException | None) -> Any:
        rec.add("closed", cid, err)
        return action

    ev = echo_events(rec, closed=closed)
    with running(ev, "tcp4://127.0.0.1:0", poller=poller,
                 stoppable=action is not Action.SHUTDOWN) as r:
        first, second = r.connect(), r.connect()
        wait_for(lambda: len(rec.ids()) == 2, what="two opened")
        first.close()
        wait_for(lambda: rec.of("closed"), what="closed(1)")
        if action is Action.SHUTDOWN:
            r.join()
            assert recv_all(second) == b""
        else:
            second.sendall(b"more")
            assert recv_exactly(second, 4) == b"more"
    assert [i for i, _ in rec.of("closed")] == [1, 2]


@pytest.mark.rule("EV-19")
@pytest.mark.parametrize("action", [Action.NONE, Action.CLOSE, Action.DETACH])
def test_what_detached_returns_leaves_the_socket_to_its_owner(
    poller: str, action: Action
) -> None:
    conns: list[Any] = []

    def detached(cid: int, conn: Any) -> Any:
        conns.append(conn)
        return action

    ev = echo_events(data=lambda cid, d: (d, Action.DETACH), detached=detached)
    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        assert recv_exactly(c, 2) == b"go"
        wait_for(lambda: conns, what="detached")
        conns[0].sendall(b"owner")
        assert recv_exactly(c, 5) == b"owner"
        conns[0].close()
        assert recv_all(c) == b""


@pytest.mark.rule("EV-20", "LOOP-10")
@pytest.mark.parametrize("hook", ["prewrite", "postwrite"])
@pytest.mark.parametrize("action", [Action.CLOSE, Action.DETACH, Action.SHUTDOWN])
def test_what_the_write_hooks_return(poller: str, hook: str, action: Action) -> None:
    """Whatever the hook returns, the output of that write reaches the peer:
    ``CLOSE`` finishes after it, ``DETACH`` hands it over with the socket,
    ``SHUTDOWN`` sends it in the last write."""
    rec = Recorder()
    conns: list[Any] = []

    def hook_fn(cid: int, *args: int) -> Any:
        return action

    ev = echo_events(rec, detached=lambda cid, conn: conns.append(conn), **{hook: hook_fn})
    with running(ev, "tcp4://127.0.0.1:0", poller=poller,
                 stoppable=action is not Action.SHUTDOWN) as r:
        c = r.connect()
        c.sendall(b"abc")
        if action is Action.DETACH:
            wait_for(lambda: conns, what="detached")
            conns[0].close()
        assert recv_all(c) == b"abc"
        if action is Action.SHUTDOWN:
            r.join()
    if action is not Action.DETACH:
        assert rec.of("closed") == [(1, None)]


# --------------------- a connection that fails at its edges (EV-21, EV-22)


@pytest.mark.rule("EV-21", "TR-2")
@pytest.mark.parametrize("where", ["should", "factory", "start"])
def test_a_translator_that_fails_to_set_up_gets_neither_opened_nor_closed(
    poller: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()

    class Failing(evio.Passthrough):
        def start(self) -> bytes:
            raise RuntimeError("start failed")

    def should(cid: int, info: evio.Info) -> bool:
        if where == "should":
            raise RuntimeError("should failed")
        return info.addr_index == 0

    def factory(cid: int, info: evio.Info) -> evio.Translator:
        if where == "factory":
            raise RuntimeError("factory failed")
        return Failing()

    ev = evio.translate(echo_events(rec), should, factory)
    with caplog.at_level(logging.ERROR, logger="evio"), running(
        ev, "tcp4://127.0.0.1:0", "tcp4://127.0.0.1:0", poller=poller
    ) as r:
        c = r.connect(0)
        assert recv_all(c) == b""
        if where != "should":  # untranslated connections are unaffected
            other = r.connect(1)
            other.sendall(b"ok")
            assert recv_exactly(other, 2) == b"ok"
    assert [k for k, i, _ in rec.log if i == 1] == []
    assert any("failed" in str(x.exc_info[1]) for x in caplog.records if x.exc_info)


@pytest.mark.rule("EV-21", "DIAL-4")
def test_a_dial_whose_translator_fails_is_reported_as_a_failed_dial(poller: str) -> None:
    rec = Recorder()

    def factory(cid: int, info: evio.Info) -> evio.Translator:
        raise RuntimeError("factory failed")

    ev = evio.translate(echo_events(rec), lambda cid, info: info.addr_index == -1, factory)
    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        assert r.server is not None
        did = r.server.dial(f"tcp://127.0.0.1:{r.server.addrs[0][1]}")
        wait_for(lambda: did in [i for i, _ in rec.of("closed")], what="the dial's closed")
    opened = [info for i, info in rec.of("opened") if i == did]
    assert len(opened) == 1 and opened[0].closing
    errs = [e for i, e in rec.of("closed") if i == did]
    assert len(errs) == 1 and str(errs[0]) == "factory failed"


@pytest.mark.rule("EV-22", "DETACH-1")
def test_when_detached_raises_the_socket_is_closed(
    poller: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = open_descriptors()

    def detached(cid: int, conn: Any) -> None:
        raise RuntimeError("detached failed")

    ev = echo_events(data=lambda cid, d: (b"last words", Action.DETACH) if d == b"go" else d,
                     detached=detached)
    with caplog.at_level(logging.ERROR, logger="evio"), running(
        ev, "tcp4://127.0.0.1:0", poller=poller
    ) as r:
        c = r.connect()
        c.sendall(b"go")
        assert recv_all(c) == b"last words"  # then the end of stream: nobody owns it
        other = r.connect()
        other.sendall(b"served")
        assert recv_exactly(other, 6) == b"served"
    assert open_descriptors() - before == set()
    assert any(x.levelno == logging.ERROR for x in caplog.records)
