"""Conformance: reliability (docs/spec/reliability.md), over every poller and family.

Flow control by the water marks (REL-1..REL-3); pausing and resuming any
connection, and what a paused one costs (REL-7..REL-9); the limit on
pending output (REL-10); half-close, both ways (REL-11, REL-12); idle
timeouts (REL-4); unix socket modes (REL-5); secure defaults (REL-6).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    DEADLINE,
    Recorder,
    echo_events,
    family_of,
    pattern,
    read_until_eof,
    recv_all,
    recv_exactly,
    reset,
    running,
    small_socket,
    wait_for,
)
from implementation import evio

Action = evio.Action

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------- flow control


@pytest.mark.rule("REL-1", "REL-2", "REL-3")
@pytest.mark.parametrize("marks", [None, (256 * 1024, 1024)], ids=["default", "custom"])
def test_a_peer_that_does_not_read_cannot_grow_the_server(
    poller: str, addr: str, marks: tuple[int, int] | None
) -> None:
    high, low = marks or (65536, 16384)
    most: list[int] = []
    paused: list[bool] = []
    server: list[evio.Server] = []

    def opened(cid: int, info: evio.Info) -> Any:
        return evio.Options(high_water=high, low_water=low) if marks else None

    def data(cid: int, d: bytes) -> bytes:
        most.append(server[0].pending(cid))
        return d  # echo: the peer must read to keep the server reading

    def tick() -> float:
        if server and server[0].pending(1):
            paused.append(server[0].paused(1))
        return 0.01

    ev = evio.Events(serving=server.append, opened=opened, data=data, tick=tick)
    payload = pattern(24 * MiB, 3)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.settimeout(30)
        sender = threading.Thread(target=c.sendall, args=(payload,), daemon=True)
        sender.start()
        time.sleep(0.5)
        assert sender.is_alive(), "24 MiB went in without anyone reading the echo"
        wait_for(lambda: any(paused), what="reading paused")
        got = recv_exactly(c, len(payload))  # now read: everything comes back
        sender.join(10)
    assert got == payload
    # What was pending when data was called never passed the mark by more
    # than one read's echo.
    assert max(most) <= high + 65536
    assert server[0].pending(1) == 0 and server[0].paused(1) is False  # unknown now


@pytest.mark.rule("REL-3")
def test_a_producer_streams_in_pieces(poller: str, addr: str) -> None:
    piece, pieces = 64 * 1024, 256  # 16 MiB, never more than a piece or two in memory
    sent = [0]
    most = [0]
    server: list[evio.Server] = []

    def piece_no(i: int) -> bytes:
        return i.to_bytes(4, "big") * (piece // 4)  # each piece tells its number

    def next_piece() -> bytes:
        sent[0] += 1
        return piece_no(sent[0] - 1)

    def data(cid: int, d: bytes | None) -> Any:
        if d is None:  # woken: the socket took enough, here is more
            if sent[0] == pieces:
                return None
            return next_piece()
        return next_piece() if d == b"stream" else None

    def postwrite(cid: int, n: int, remaining: int) -> None:
        most[0] = max(most[0], remaining)
        if remaining <= 16384 and 0 < sent[0] < pieces:
            server[0].wake(cid)

    ev = evio.Events(serving=server.append, data=data, postwrite=postwrite)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"stream")
        got = recv_exactly(c, piece * pieces)
    assert got == b"".join(piece_no(i) for i in range(pieces))
    assert most[0] <= piece + 16384


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


@pytest.mark.rule("REL-1")
def test_reading_resumes_at_the_low_water_mark(poller: str, addr: str) -> None:
    """Paused at the high mark, the loop reads again once the peer drains it."""
    rec = Recorder()
    big = pattern(64 * MiB, 9)  # more than the kernel buffers hold

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return big if d == b"big" else d

    with running(echo_events(rec, data=data), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"big")
        wait_for(lambda: rec.of("data"))
        c.sendall(b"after")  # not read while the rest is pending...
        time.sleep(0.2)
        assert [p for _, p in rec.of("data")] == [b"big"]
        assert recv_exactly(c, len(big)) == big  # ...then read once drained
        assert recv_exactly(c, 5) == b"after"


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


# ---------------------------------------------------------------- idle


@pytest.mark.rule("REL-4")
def test_idle_connections_are_closed_with_timeout_error(poller: str, addr: str) -> None:
    rec = Recorder()
    ev = echo_events(rec, opened=lambda cid, info: evio.Options(idle_timeout=0.3))
    with running(ev, addr, poller=poller) as r:
        idle, busy = r.connect(), r.connect()
        start = time.monotonic()
        # The busy one talks every 0.1 s for 1 s: never idle for 0.3 s.
        while time.monotonic() - start < 1.0:
            busy.sendall(b"x")
            assert recv_exactly(busy, 1) == b"x"
            time.sleep(0.1)
        assert idle.recv(10) == b""  # closed by the server long ago
        closed = dict(rec.of("closed"))
        assert list(closed) == [1]
        assert isinstance(closed[1], TimeoutError)
        busy.sendall(b"y")
        assert recv_exactly(busy, 1) == b"y"


@pytest.mark.rule("REL-4")
def test_idle_timeout_drops_output_nobody_reads(poller: str, addr: str) -> None:
    rec = Recorder()
    ev = echo_events(
        rec,
        opened=lambda cid, info: evio.Options(idle_timeout=0.3),
        data=lambda cid, d: b"z" * (32 * MiB),
    )
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")  # then never read: the server's writes stall
        wait_for(lambda: rec.of("closed"), timeout=10)
    (_cid, err), = rec.of("closed")
    assert isinstance(err, TimeoutError)


@pytest.mark.rule("REL-4")
def test_a_slow_steady_reader_of_draining_output_is_not_idle(poller: str, addr: str) -> None:
    # 16 MiB answer; the client reads 16 KiB every 50 ms (320 KB/s) for
    # 2.5 s: the kernel's buffer stays too full to take more, so the loop
    # itself moves no byte for far longer than the 0.4 s idle timeout -- but
    # the peer is reading, so the connection is not idle. Then it stops
    # reading: idle.
    rec = Recorder()
    ev = echo_events(
        rec,
        opened=lambda cid, info: evio.Options(idle_timeout=0.4),
        data=lambda cid, d: b"z" * (16 * MiB),
    )
    with running(ev, addr, poller=poller) as r:
        bound = r.addrs[0]
        c = socket.socket(family_of(bound), socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connecting
        c.settimeout(DEADLINE)
        c.connect(bound)
        c.sendall(b"go")
        got, start = 0, time.monotonic()
        while time.monotonic() - start < 2.5:
            chunk = c.recv(16384)
            assert chunk, f"closed as idle after {got} bytes, while reading"
            got += len(chunk)
            time.sleep(0.05)
        assert not rec.of("closed")
        stopped = time.monotonic()
        wait_for(lambda: rec.of("closed"), timeout=10)  # now it does not read: idle
        took = time.monotonic() - stopped
        (_cid, err), = rec.of("closed")
        assert isinstance(err, TimeoutError)
        assert took < 0.4 + 1.5, took
        c.close()
    assert got < 16 * MiB  # it was still draining all along


@pytest.mark.rule("REL-4", "EV-14")
@pytest.mark.parametrize("bad", [
    {"idle_timeout": 0}, {"idle_timeout": -1}, {"idle_timeout": float("inf")},
    {"high_water": 10, "low_water": 20}, {"low_water": -1}, {"high_water": 1.5},
], ids=repr)
def test_bad_options_are_value_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        evio.Options(**bad)


# ----------------------------------------------------------- unix modes


@pytest.mark.rule("REL-5")
@pytest.mark.parametrize(("query", "mode"), [("", 0o600), ("?mode=0660", 0o660),
                                             ("?mode=666", 0o666)])
def test_unix_socket_file_permissions(poller: evio.PollerName, tmp_path: Path, query: str,
                                      mode: int) -> None:
    path = tmp_path / "s.sock"
    seen: list[int] = []

    def serving(server: evio.Server) -> Action:
        seen.append(stat.S_IMODE(os.stat(path).st_mode))
        return Action.SHUTDOWN

    evio.serve(evio.Events(serving=serving), f"unix://{path}{query}", poller=poller)
    assert seen == [mode]


@pytest.mark.rule("REL-5", "ADDR-6")
@pytest.mark.parametrize("query", ["?mode=0999", "?mode=rw", "?mode=01777", "?mode="])
def test_bad_unix_modes_are_value_errors(tmp_path: Path, query: str) -> None:
    text = f"unix://{tmp_path / 's.sock'}{query}"
    with pytest.raises(ValueError, match="mode"):
        evio.parse_address(text)
    with pytest.raises(ValueError):
        evio.parse_address(f"tcp://127.0.0.1:0{query or '?mode=0600'}")


# ------------------------------------------------------ secure defaults


EXAMPLES = ["echo_server.py", "wake_server.py", "udp_echo.py", "tls_echo.py", "proxy.py"]


@pytest.mark.rule("REL-6")
@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_bind_localhost_by_default(example: str) -> None:
    path = ROOT / "examples" / example
    if not path.exists():
        pytest.fail(f"{example} is missing")
    args = [sys.executable, str(path), "--port", "0"]
    if example == "proxy.py":
        args += ["--upstream", "tcp://127.0.0.1:9"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = ""
        end = time.monotonic() + 30
        while "listening on" not in line and time.monotonic() < end:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "listening on ('127.0.0.1'," in line, line
        assert "0.0.0.0" not in line and "'::'" not in line
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.rule("REL-6", "TLS-3")
def test_tls_helpers_refuse_old_versions(tmp_path: Path) -> None:
    import ssl

    client_context = evio.client_context

    assert client_context().minimum_version >= ssl.TLSVersion.TLSv1_2
    import trustme
    cert = trustme.CA().issue_cert("localhost")
    key = tmp_path / "key.pem"
    chain = tmp_path / "chain.pem"
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(chain))
    server_context = evio.server_context

    assert server_context(str(chain), str(key)).minimum_version >= ssl.TLSVersion.TLSv1_2


