"""Conformance: flow control across connections, output limits and
half-close (docs/spec/reliability.md), over every poller; and the rows of
the lifecycle table they add (docs/spec/loop.md, LOOP-20)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from harness import (
    DEADLINE,
    Recorder,
    echo_events,
    pattern,
    read_until_eof,
    recv_all,
    recv_exactly,
    reset,
    running,
    small_socket,
    wait_for,
    watching_transitions,
)
from implementation import evio, hook

Action = evio.Action

MiB = 1 << 20


# ----------------------------------------------------------- the lifecycle


@pytest.mark.rule("LOOP-20", "REL-7", "REL-10", "REL-11", "REL-12")
def test_the_loop_makes_every_flow_transition_of_the_table(poller: str) -> None:  # noqa: C901 -- drives every flow row of the lifecycle table
    """Drives real connections through every row of flow control and
    half-close (the ``lifecycle`` hook's ``FLOW_ROWS``); test_core drives the rest."""
    lc = hook("lifecycle")
    LIFECYCLE, FLOW_ROWS = lc.LIFECYCLE, lc.FLOW_ROWS
    rec = Recorder()
    srv: list[evio.Server] = []
    big = b"x" * (16 * MiB)
    mid = b"y" * (3 * MiB)
    on_eof: dict[int, str] = {}
    hooks: dict[int, str] = {}
    detached: list[Any] = []

    def opened(cid: int, info: evio.Info) -> Any:
        rec.add("opened", cid, info)
        if info.addr_index == 1:
            return evio.Options(idle_timeout=0.3)
        return evio.Options(max_pending=4 * MiB)

    def data(cid: int, d: Any) -> Any:
        if d is None:
            return None
        rec.add("data", cid, bytes(d))
        cmd = bytes(d[:4])
        server = srv[0]
        if cmd == b"fin!":
            assert server.shutdown_write(cid)
            return b"last"
        if cmd == b"hold":
            assert server.pause(cid) and server.resume(cid)
            return None
        if cmd == b"clos":
            return Action.CLOSE
        if cmd == b"rais":
            raise RuntimeError("data failed")
        if cmd == b"deta":
            return Action.DETACH
        if cmd == b"big!":
            return big
        return d

    def eof(cid: int) -> Any:
        rec.add("eof", cid)
        what = on_eof.get(cid, "close")
        if what == "close":
            return b"bye", Action.CLOSE
        if what == "raise":
            raise RuntimeError("eof failed")
        if what == "fin":
            srv[0].shutdown_write(cid)
            return b"bye"
        if what == "big":
            return big
        if what == "mid":
            return mid
        if what == "detach":
            return Action.DETACH
        return None  # stay writing only

    def prewrite(cid: int, n: int) -> None:
        if hooks.get(cid) == "raise":
            raise RuntimeError("prewrite failed")

    def closed_ids() -> list[int]:
        return [i for i, _ in rec.of("closed")]

    ev = echo_events(rec, serving=srv.append, opened=opened, data=data, eof=eof,
                     prewrite=prewrite, detached=lambda cid, conn: detached.append(conn))
    addrs = ("tcp4://127.0.0.1:0", "tcp4://127.0.0.1:0")
    with watching_transitions() as seen, running(ev, *addrs, poller=poller) as r:
        server = srv[0]

        def conn(index: int = 0, tiny: bool = False) -> tuple[socket.socket, int]:
            n = len(rec.ids())
            c = small_socket(server.addrs[index]) if tiny else r.connect(index)
            if tiny:
                r.clients.append(c)
            wait_for(lambda: len(rec.ids()) > n, what="opened")
            return c, rec.ids()[-1]

        # open: pause and resume; over the limit
        c, cid = conn()
        c.sendall(b"hold")
        wait_for(lambda: (cid, b"hold") in rec.of("data"), what="hold")
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
        c, cid = conn(tiny=True)
        c.sendall(b"big!")
        wait_for(lambda: cid in closed_ids(), what="over the limit")
        assert isinstance(dict(rec.of("closed"))[cid], evio.OutputLimitError)
        # writing only: CLOSE, a raise, FIN, over the limit, idle, an error,
        # a write hook, DETACH, and SHUTDOWN (below)
        for what in ("close", "raise", "fin"):
            c, cid = conn()
            on_eof[cid] = what
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == (b"" if what == "raise" else b"bye")
        c, cid = conn(tiny=True)
        on_eof[cid] = "big"
        c.shutdown(socket.SHUT_WR)
        wait_for(lambda: cid in closed_ids(), what="over the limit while writing only")
        c, cid = conn(1)
        on_eof[cid] = "stay"
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b""  # the idle timeout
        c, cid = conn(tiny=True)
        on_eof[cid] = "mid"
        c.shutdown(socket.SHUT_WR)
        wait_for(lambda: server.pending(cid) > 0, what="pending output")
        reset(c)
        wait_for(lambda: cid in closed_ids(), what="a write error while writing only")
        c, cid = conn()
        hooks[cid] = "raise"
        c.shutdown(socket.SHUT_WR)
        wait_for(lambda: cid in closed_ids(), what="prewrite raised while writing only")
        c, cid = conn()
        on_eof[cid] = "detach"
        c.shutdown(socket.SHUT_WR)
        wait_for(lambda: len(detached) == 1, what="detached while writing only")
        # reading only: pause and resume, the peer's end, CLOSE, a raise,
        # an error, DETACH, idle, SHUTDOWN (below)
        readers = []
        for last in (b"end", b"clos", b"rais", b"reset", b"deta", b"idle"):
            c, cid = conn(1 if last == b"idle" else 0)
            c.sendall(b"fin!")
            assert recv_all(c) == b"last"  # our FIN came after the output
            c.sendall(b"hold")
            wait_for(lambda cid=cid: (cid, b"hold") in rec.of("data"), what="hold")
            readers.append((c, cid, last))
        for c, cid, last in readers:
            if last == b"end":
                c.shutdown(socket.SHUT_WR)
            elif last == b"reset":
                reset(c)
            elif last != b"idle":
                c.sendall(last)
            if last == b"deta":
                wait_for(lambda: len(detached) == 2, what="detached while reading only")
            else:
                wait_for(lambda cid=cid: cid in closed_ids(), what=f"{last!r} while reading only")
        # at shutdown: one writing only, one reading only
        c, cid = conn()
        on_eof[cid] = "stay"
        c.shutdown(socket.SHUT_WR)
        wait_for(lambda: (cid, None) in rec.of("eof"), what="eof")
        c, cid = conn()
        c.sendall(b"fin!")
        assert recv_all(c) == b"last"
        server.stop()
        r.join()
        for d in detached:
            d.socket.close()
    rows = {(t.source, t.event, t.target) for t in LIFECYCLE}
    assert seen - rows == set(), f"transitions not in the table: {seen - rows}"
    assert FLOW_ROWS - seen == set(), f"rows never driven: {sorted(FLOW_ROWS - seen, key=str)}"


# --------------------------------------------------------- pause, resume


def _commands(rec: Recorder, srv: list[evio.Server], **extra: Any) -> evio.Events:
    """An echo server that also obeys ``pause N`` / ``resume N`` / ``fin N``
    sent on any connection, answering ``True``/``False``."""

    def data(cid: int, d: Any) -> Any:
        if d is None:
            return None
        d = bytes(d)
        rec.add("data", cid, d)
        word, _, arg = d.partition(b" ")
        if word in (b"pause", b"resume", b"fin"):
            fn = {b"pause": srv[0].pause, b"resume": srv[0].resume,
                  b"fin": srv[0].shutdown_write}[word]
            return str(fn(int(arg))).encode()
        return d

    return echo_events(rec, serving=srv.append, data=data, **extra)


@pytest.mark.rule("REL-7")
def test_pause_and_resume_any_connection(poller: str, addr: str) -> None:
    rec = Recorder()
    srv: list[evio.Server] = []
    with running(_commands(rec, srv), addr, poller=poller) as r:
        a, ctl = r.connect(), r.connect()
        wait_for(lambda: len(rec.ids()) == 2)
        aid = rec.ids()[0]
        ctl.sendall(b"pause %d" % aid)
        assert ctl.recv(16) == b"True"
        ctl.sendall(b"pause %d" % aid)  # again: nothing changes
        assert ctl.recv(16) == b"True"
        payload = pattern(200_000, 1)
        a.sendall(payload)
        time.sleep(0.3)
        assert (aid, payload[:1]) not in [(i, p[:1]) for i, p in rec.of("data")]
        ctl.sendall(b"resume %d" % aid)
        assert ctl.recv(16) == b"True"
        assert recv_exactly(a, len(payload)) == payload  # nothing lost
        for bad in (b"pause 999", b"resume 999"):
            ctl.sendall(bad)
            assert ctl.recv(16) == b"False"


@pytest.mark.rule("REL-9")
def test_a_paused_connection_that_is_reset_does_not_spin_the_loop(poller: str) -> None:
    from harness import CountingPoller

    rec = Recorder()
    srv: list[evio.Server] = []
    counting = CountingPoller(poller)
    with running(_commands(rec, srv), "tcp4://127.0.0.1:0", poller=counting) as r:
        a, ctl = r.connect(), r.connect()
        wait_for(lambda: len(rec.ids()) == 2)
        aid = rec.ids()[0]
        ctl.sendall(b"pause %d" % aid)
        assert ctl.recv(16) == b"True"
        r.clients.remove(a)
        reset(a)
        time.sleep(0.3)
        polls = counting.polls
        time.sleep(0.3)
        assert counting.polls - polls < 20, "the loop spins on a paused, reset connection"
        ctl.sendall(b"resume %d" % aid)
        ctl.recv(16)
        wait_for(lambda: aid in [i for i, _ in rec.of("closed")], what="closed")
    [(_, err)] = [(i, e) for i, e in rec.of("closed") if i == aid]
    assert isinstance(err, OSError)


@pytest.mark.rule("REL-9", "REL-7")
@pytest.mark.parametrize("how", ["paused", "reading-only-paused"])
def test_a_paused_connection_whose_peer_hangs_up_costs_no_wake_ups(
    poller: str, addr: str, how: str
) -> None:
    # The peer sends bytes and goes: a hang-up with no socket error, which
    # epoll and poll report on every poll whatever the connection asked for.
    from harness import CountingPoller

    rec = Recorder()
    srv: list[evio.Server] = []
    counting = CountingPoller(poller)
    with running(_commands(rec, srv), addr, poller=counting) as r:
        a, ctl = r.connect(), r.connect()
        wait_for(lambda: len(rec.ids()) == 2)
        aid = rec.ids()[0]
        if how == "reading-only-paused":
            ctl.sendall(b"fin %d" % aid)
            assert ctl.recv(16) == b"True"
            assert a.recv(16) == b""  # our end of stream arrived
        ctl.sendall(b"pause %d" % aid)
        assert ctl.recv(16) == b"True"
        a.sendall(b"last words")
        r.clients.remove(a)
        a.close()
        time.sleep(0.3)
        polls = counting.polls
        time.sleep(0.5)
        assert counting.polls - polls < 20, "the loop spins on a paused, hung-up connection"
        ctl.sendall(b"resume %d" % aid)
        assert ctl.recv(16) == b"True"
        wait_for(lambda: aid in [i for i, _ in rec.of("closed")], what="closed")
    assert (aid, b"last words") in rec.of("data")  # nothing the peer sent is lost
    [(_, err)] = [(i, e) for i, e in rec.of("closed") if i == aid]
    assert err is None or isinstance(err, ConnectionResetError | BrokenPipeError)


@pytest.mark.rule("REL-8")
def test_drained_once_back_at_the_low_water_mark(poller: str) -> None:
    rec = Recorder()
    big = pattern(16 * MiB, 2)  # more than the kernel buffers take

    def data(cid: int, d: bytes) -> Any:
        return big if d == b"big" else None

    def drained(cid: int) -> Any:
        rec.add("drained", cid)
        return b"END"

    ev = echo_events(rec, data=data, drained=drained)
    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = small_socket(r.addrs[0])
        r.clients.append(c)
        c.sendall(b"big")
        time.sleep(0.2)
        assert rec.of("drained") == []  # still above the low-water mark
        assert recv_exactly(c, len(big) + 3) == big + b"END"
        c.sendall(b"small")
        time.sleep(0.2)
    assert len(rec.of("drained")) == 1


# ------------------------------------------------------------ the limit


@pytest.mark.rule("REL-10")
def test_output_over_max_pending_closes_the_connection(poller: str) -> None:
    rec = Recorder()

    def opened(cid: int, info: evio.Info) -> Any:
        rec.add("opened", cid, info)
        return evio.Options(max_pending=MiB)

    def data(cid: int, d: bytes) -> Any:
        return pattern(512 * 1024) if d == b"some" else pattern(8 * MiB)

    ev = echo_events(rec, opened=opened, data=data)
    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        ok = small_socket(r.addrs[0])
        r.clients.append(ok)
        ok.sendall(b"some")  # under the limit: delivered
        assert recv_exactly(ok, 512 * 1024) == pattern(512 * 1024)
        bad = small_socket(r.addrs[0])
        r.clients.append(bad)
        bad.sendall(b"lots")
        wait_for(lambda: len(rec.of("closed")) == 1, what="closed")
        assert len(read_until_eof(bad)) < 8 * MiB
        [(cid, err)] = rec.of("closed")
    assert cid == 2 and isinstance(err, evio.OutputLimitError) and isinstance(err, BufferError)
    assert "max_pending" in str(err) and "1048576" in str(err)
    with pytest.raises(ValueError):
        evio.Options(max_pending=-1)


# ------------------------------------------------------------ half-close


@pytest.mark.rule("REL-11", "LOOP-13")
def test_eof_keeps_the_connection_writable(poller: str, addr: str) -> None:
    rec = Recorder()
    srv: list[evio.Server] = []
    answers: dict[int, bytes] = {}

    def data(cid: int, d: Any) -> Any:
        if d is None:
            return answers.pop(cid), Action.CLOSE  # the late answer
        rec.add("data", cid, bytes(d))
        return None

    def eof(cid: int) -> Any:
        rec.add("eof", cid)
        got = b"".join(p for i, p in rec.of("data") if i == cid)
        answers[cid] = got[::-1]
        threading.Timer(0.2, srv[0].wake, (cid,)).start()  # answer later
        return b"seen %d;" % len(got)

    ev = echo_events(rec, serving=srv.append, data=data, eof=eof)
    payload = pattern(MiB, 5)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        got = recv_all(c)
    assert got == b"seen %d;" % len(payload) + payload[::-1]
    cid = rec.ids()[0]
    assert rec.kinds(cid)[-2:] == ["eof", "closed"]
    assert rec.of("closed") == [(cid, None)]


@pytest.mark.rule("REL-12")
def test_shutdown_write_sends_fin_after_the_output_and_goes_on_reading(
        poller: str, addr: str) -> None:
    rec = Recorder()
    srv: list[evio.Server] = []
    body = pattern(300_000, 7)

    def data(cid: int, d: Any) -> Any:
        rec.add("data", cid, bytes(d))
        if d == b"go":
            assert srv[0].shutdown_write(cid)
            assert srv[0].shutdown_write(cid)  # asked twice: one FIN
            return body  # returned after the call, sent before the FIN
        return b"dropped"  # after the FIN: nowhere to go

    ev = echo_events(rec, serving=srv.append, data=data)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        c.settimeout(DEADLINE)
        assert recv_all(c) == body  # then our end of stream
        c.sendall(b"still reading")
        wait_for(lambda: any(p == b"still reading" for _, p in rec.of("data")), what="data")
        assert rec.of("closed") == []
        c.shutdown(socket.SHUT_WR)
        wait_for(lambda: rec.of("closed"), what="closed")
        assert srv[0].shutdown_write(rec.ids()[0]) is False
    assert rec.of("closed") == [(rec.ids()[0], None)]


@pytest.mark.rule("TR-10")
def test_a_translated_connection_has_no_half_close(poller: str) -> None:
    rec = Recorder()
    srv: list[evio.Server] = []

    def data(cid: int, d: Any) -> Any:
        if d == b"fin":
            srv[0].shutdown_write(cid)
            return b"bye"
        return d

    ev = evio.translate(echo_events(rec, serving=srv.append, data=data,
                                    eof=lambda cid: rec.add("eof", cid)),
                        None, lambda cid, info: evio.ZlibTranslator())
    import zlib
    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        comp = zlib.compressobj()
        c.sendall(comp.compress(b"fin") + comp.flush(zlib.Z_SYNC_FLUSH))
        d = zlib.decompressobj()
        got = d.decompress(recv_all(c))
        assert got == b"bye" and d.eof  # the goodbye ended the stream, then the close
        c2 = r.connect()
        c2.shutdown(socket.SHUT_WR)
        assert recv_all(c2) == zlib.compressobj().flush(zlib.Z_FINISH)
        wait_for(lambda: len(rec.of("closed")) == 2, what="closed")
    assert rec.of("eof") == []


# ------------------------------------------------------------------ UDP


def _udp(addr: Any) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(DEADLINE)
    s.bind(("127.0.0.1", 0))
    return s


@pytest.mark.rule("UDP-9")
def test_udp_remotes_have_no_flow_control(poller: str) -> None:
    rec = Recorder()
    srv: list[evio.Server] = []
    answers: list[bool] = []

    def data(cid: int, d: bytes) -> bytes:
        s = srv[0]
        answers.extend([s.pause(cid), s.resume(cid), s.shutdown_write(cid)])
        return d

    ev = echo_events(rec, serving=srv.append, data=data, eof=lambda cid: rec.add("eof", cid),
                     drained=lambda cid: rec.add("drained", cid))
    with running(ev, "udp4://127.0.0.1:0", poller=poller) as r:
        c = _udp(r.addrs[0])
        r.clients.append(c)
        c.sendto(b"x", r.addrs[0])
        assert c.recv(16) == b"x"
    assert answers == [False, False, False]
    assert rec.of("eof") == rec.of("drained") == []


@pytest.mark.rule("UDP-10")
def test_an_idle_udp_remote_is_forgotten(poller: str) -> None:
    rec = Recorder()
    ev = echo_events(rec, udp_idle_timeout=0.2)
    with running(ev, "udp4://127.0.0.1:0", poller=poller) as r:
        c = _udp(r.addrs[0])
        r.clients.append(c)
        c.sendto(b"a", r.addrs[0])
        assert c.recv(16) == b"a"
        for _ in range(3):  # heard again within the idle time: kept
            time.sleep(0.1)
            c.sendto(b"b", r.addrs[0])
            assert c.recv(16) == b"b"
        assert rec.of("closed") == []
        wait_for(lambda: rec.of("closed"), what="forgotten")
        c.sendto(b"c", r.addrs[0])
        assert c.recv(16) == b"c"
    assert rec.ids() == [1, 2]
    assert rec.of("closed")[0] == (1, None)
    with pytest.raises(ValueError), running(echo_events(udp_idle_timeout=0), "udp4://127.0.0.1:0"):
        pass


@pytest.mark.rule("UDP-11")
def test_past_the_cap_the_least_recently_heard_remote_is_forgotten(poller: str) -> None:
    rec = Recorder()
    ev = echo_events(rec, udp_max_remotes=3)
    with running(ev, "udp4://127.0.0.1:0", poller=poller) as r:
        cs = [_udp(r.addrs[0]) for _ in range(4)]
        r.clients.extend(cs)
        for c in cs[:3]:
            c.sendto(b"hi", r.addrs[0])
            assert c.recv(16) == b"hi"
        cs[0].sendto(b"again", r.addrs[0])  # the first is now the most recent
        assert cs[0].recv(16) == b"again"
        cs[3].sendto(b"hi", r.addrs[0])
        assert cs[3].recv(16) == b"hi"
        assert rec.of("closed") == [(2, None)]  # the second: least recently heard
