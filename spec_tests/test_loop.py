"""Conformance: the loop (docs/spec/loop.md), over every poller and family.

In the order of the spec page: start, the poll's timeout, accept, writes
(the write hooks, also after a write that failed: LOOP-21), reads, closing,
shutdown, `Server.stop` from another thread, a callback or a signal handler
(LOOP-22, LOOP-23), and the layout of the evio package (LOOP-25). The
lifecycle table driving the loop (LOOP-20) is in ``test_loop_lifecycle.py``.
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    DEADLINE,
    CountingPoller,
    Recorder,
    connect_to,
    cpu_seconds,
    echo_events,
    open_descriptors,
    pattern,
    recv_all,
    recv_exactly,
    reset,
    running,
    server_side_socket,
    small_socket,
    wait_for,
)
from implementation import evio

Action = evio.Action

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------- start


@pytest.mark.rule("LOOP-1")
def test_serving_once_before_any_accept(poller: str, addr: str) -> None:
    rec = Recorder()
    seen: list[evio.Server] = []

    def serving(server: evio.Server) -> None:
        rec.add("serving", 0)
        seen.append(server)

    with running(echo_events(rec, serving=serving), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
    assert len(seen) == 1 and seen[0].addrs == r.addrs
    assert rec.log[0] == ("serving", 0, None)


@pytest.mark.rule("LOOP-1")
def test_shutdown_from_serving_accepts_nothing(poller: str, addr: str) -> None:
    rec = Recorder()
    clients: list[socket.socket] = []

    def serving(server: evio.Server) -> Action:
        clients.append(connect_to(server.addrs[0]))  # waits in the backlog
        return Action.SHUTDOWN

    with running(echo_events(rec, serving=serving), addr, poller=poller, stoppable=False) as r:
        r.clients.extend(clients)  # closed by the harness
        r.join()
        # The listener is gone: the queued connection sees the end.
        with contextlib.suppress(ConnectionResetError):
            assert clients[0].recv(10) == b""
    assert rec.of("opened") == []


# --------------------------------------------------------------- timeout


@pytest.mark.rule("LOOP-2", "LOOP-16")
def test_poll_timeout_is_bounded_by_the_next_tick(poller: str, addr: str) -> None:
    counting = CountingPoller(poller)
    ticks: list[float] = []

    def tick() -> Any:
        ticks.append(time.monotonic())
        return Action.SHUTDOWN if len(ticks) >= 5 else 0.05

    with running(evio.Events(tick=tick), addr, poller=counting, stoppable=False) as r:
        r.join()
    assert len(ticks) == 5
    assert counting.timeouts, "the loop never polled"
    assert all(t is not None and 0 <= t <= 0.05 + 1e-6 for t in counting.timeouts)


@pytest.mark.rule("LOOP-2", "REL-4")
def test_poll_timeout_is_bounded_by_an_idle_timeout(poller: str, addr: str) -> None:
    # No ticker, nothing else to wake the loop: only the idle timer can end
    # its wait, and the connection must still close on time.
    counting = CountingPoller(poller)
    rec = Recorder()

    def closed(cid: int, err: BaseException | None) -> Action:
        rec.add("closed", cid, err)
        return Action.SHUTDOWN

    ev = echo_events(
        rec, opened=lambda cid, info: evio.Options(idle_timeout=0.3), closed=closed
    )
    with running(ev, addr, poller=counting, stoppable=False) as r:
        c = r.connect()
        start = time.monotonic()
        assert c.recv(10) == b""  # the server closed it
        elapsed = time.monotonic() - start
        r.join()
        c.close()
    (_cid, err), = rec.of("closed")
    assert isinstance(err, TimeoutError)
    assert 0.25 <= elapsed < 1.5, elapsed
    waits = [t for t in counting.timeouts if t is not None]
    assert waits and max(waits) <= 0.3 + 1e-6, counting.timeouts[:10]


@pytest.mark.rule("LOOP-2")
def test_a_cancelled_timer_no_longer_bounds_the_poll(poller: str, addr: str) -> None:
    # The first connection's idle timer bounds the wait; once it closes
    # (its timer cancelled) nothing is due, and the loop waits with no limit.
    counting = CountingPoller(poller)
    rec = Recorder()
    ev = echo_events(rec, opened=lambda cid, info: evio.Options(idle_timeout=30.0)
                     if cid == 1 else None)
    with running(ev, addr, poller=counting) as r:
        c = r.connect()
        c.sendall(b"x")
        assert recv_exactly(c, 1) == b"x"
        assert any(t is not None and 29.0 < t <= 30.0 for t in counting.timeouts)
        c.close()
        wait_for(lambda: rec.of("closed"), what="closed 1")
        with counting.lock:
            after = len(counting.timeouts)
        d = r.connect()
        d.sendall(b"y")
        assert recv_exactly(d, 1) == b"y"
        with counting.lock:
            later = counting.timeouts[after:]
    assert later and all(t is None for t in later), later


# ---------------------------------------------------------------- accept


@pytest.mark.rule("LOOP-3")
def test_ids_start_at_one_and_increase(poller: str, addr: str) -> None:
    rec = Recorder()
    with running(echo_events(rec), addr, poller=poller) as r:
        clients = [r.connect() for _ in range(20)]
        for i, c in enumerate(clients):
            c.sendall(b"%d" % i)
            assert recv_exactly(c, len(b"%d" % i)) == b"%d" % i
        for c in clients[:10]:
            c.close()
        wait_for(lambda: len(rec.of("closed")) == 10)
        more = [r.connect() for _ in range(5)]
        for c in more:
            c.sendall(b"x")
            recv_exactly(c, 1)
    ids = rec.ids()
    assert ids == list(range(1, 26))


@pytest.mark.rule("LOOP-29")
def test_accept_takes_at_most_128_per_turn(poller: str, addr: str) -> None:
    counting = CountingPoller(poller)
    polls_at_open: list[int] = []
    clients: list[socket.socket] = []

    def serving(server: evio.Server) -> None:
        # Queue 200 connections in the backlog before the loop's first poll.
        for _ in range(200):
            clients.append(connect_to(server.addrs[0]))

    def opened(cid: int, info: evio.Info) -> None:
        polls_at_open.append(counting.polls)

    with running(evio.Events(serving=serving, opened=opened), addr, poller=counting) as r:
        r.clients.extend(clients)  # closed by the harness
        wait_for(lambda: len(polls_at_open) == 200)
    first = polls_at_open[0]
    assert polls_at_open[:128] == [first] * 128
    assert polls_at_open[128] > first


@pytest.mark.rule("LOOP-3", "LOOP-6")
@pytest.mark.parametrize("family", ["tcp4", "tcp6"])
def test_tcp_nodelay_and_keepalive(poller: str, addr: str) -> None:
    def opened(cid: int, info: evio.Info) -> Any:
        return evio.Options(tcp_keepalive=7.4) if cid == 1 else None

    with running(evio.Events(opened=opened), addr, poller=poller) as r:
        with_ka, without = r.connect(), r.connect()
        for c, ka in ((with_ka, True), (without, False)):
            wait_for(lambda c=c: _has_server_side(c))
            s = server_side_socket(c)
            try:
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                assert bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)) is ka
                if ka:
                    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
                    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
            finally:
                s.close()


def _has_server_side(c: socket.socket) -> bool:
    try:
        server_side_socket(c).close()
    except AssertionError:
        return False
    return True


@pytest.mark.rule("LOOP-6", "EV-13")
@pytest.mark.parametrize("options", [
    {"tcp_keepalive": 40000}, {"tcp_keepalive": 1e10}, {"tcp_keepalive": 10**400},
    {"idle_timeout": 10**400}, {"idle_timeout": 1e300},
], ids=repr)
def test_huge_option_values_are_accepted_and_the_server_serves(
    poller: str, options: dict[str, Any]
) -> None:
    # Valid by the Options docstring (positive, finite): the kernel's own
    # limits must not turn them into an error, let alone stop the server.
    rec = Recorder()
    ev = echo_events(rec, opened=lambda cid, info: evio.Options(**options))
    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
        if "tcp_keepalive" in options:
            assert c and 1 <= _peer_keepidle(r) <= 32767
    assert r.error is None


def _peer_keepidle(r: Any) -> int:
    """The server side's TCP_KEEPIDLE, read through /proc/self/fd."""
    import os

    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            fd = os.dup(int(name))
        except OSError:
            continue  # closed meanwhile
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        with s:
            try:
                if s.type == socket.SOCK_STREAM and s.getsockopt(
                        socket.SOL_SOCKET, socket.SO_KEEPALIVE):
                    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            except OSError:
                continue
    raise AssertionError("no socket with SO_KEEPALIVE")


@pytest.mark.rule("LOOP-6")
@pytest.mark.parametrize("family", ["unix"])
def test_keepalive_ignored_on_unix(poller: str, addr: str) -> None:
    ev = echo_events(opened=lambda cid, info: evio.Options(tcp_keepalive=5))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"still echoes")
        assert recv_exactly(c, 12) == b"still echoes"


@pytest.mark.rule("LOOP-4")
def test_opened_first_and_its_output_first(poller: str, addr: str) -> None:
    rec = Recorder()

    def opened(cid: int, info: evio.Info) -> bytes:
        rec.add("opened", cid, info)
        return b"welcome %d\n" % cid

    with running(echo_events(rec, opened=opened), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"hello")  # sent at once: races opened, and must lose
        assert recv_exactly(c, len(b"welcome 1\nhello")) == b"welcome 1\nhello"
    assert rec.kinds(1)[0] == "opened"


@pytest.mark.rule("LOOP-4")
def test_info_describes_the_connection(poller: str, family: str, tmp_path: Path) -> None:
    from harness import listen_address

    first = listen_address(family, tmp_path)
    second = listen_address(family, tmp_path / "b") if family == "unix" else first
    (tmp_path / "b").mkdir()
    infos: list[evio.Info] = []
    ev = evio.Events(opened=lambda cid, info: infos.append(info))
    with running(ev, first, second, poller=poller) as r:
        c0, c1 = r.connect(0), r.connect(1)
        wait_for(lambda: len(infos) == 2)
        by_index = {i.addr_index: i for i in infos}
        assert sorted(by_index) == [0, 1]
        for index, c in ((0, c0), (1, c1)):
            info = by_index[index]
            assert info.closing is False
            assert info.local_addr == r.addrs[index]
            if family != "unix":
                assert info.remote_addr == c.getsockname()


def _emfile_child(poller: str) -> str:
    return textwrap.dedent(f"""
        import logging, resource, sys, evio
        logging.basicConfig(level=logging.WARNING)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))
        def serving(server):
            print(server.addrs[0][1], flush=True)
        evio.serve(evio.Events(serving=serving, data=lambda i, d: d),
                   "tcp4://127.0.0.1:0", poller={poller!r})
    """)


@pytest.mark.rule("LOOP-5", "LOOP-16")
@pytest.mark.timeout(60)
def test_emfile_neither_spins_nor_drops(poller: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(
        None, [os.environ.get("PYTHONPATH"), str(Path(__file__).resolve().parent.parent)])))
    child = subprocess.Popen(
        [sys.executable, "-c", _emfile_child(poller)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    clients: list[socket.socket] = []
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        # More connections than the child has descriptors for.
        for _ in range(60):
            clients.append(connect_to(("127.0.0.1", port)))
        time.sleep(0.5)  # the child is now out of descriptors
        cpu0 = cpu_seconds(child.pid)
        time.sleep(1.0)
        cpu = cpu_seconds(child.pid) - cpu0
        assert cpu < 0.5, f"the loop spun at EMFILE: {cpu:.2f}s CPU in 1s"
        # The connections it has are still served.
        served = clients[0]
        served.sendall(b"alive")
        assert recv_exactly(served, 5) == b"alive"
        # Free descriptors: the waiting connections are accepted and served.
        for c in clients[1:30]:
            c.close()
        late = clients[-1]
        late.sendall(b"late")
        assert recv_exactly(late, 4) == b"late"
        assert child.poll() is None, "the loop died at EMFILE"
    finally:
        for c in clients:
            c.close()
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=10)
    assert "not accepting" in err


# ---------------------------------------------------------------- writes


@pytest.mark.rule("LOOP-7", "LOOP-8")
def test_large_output_arrives_whole_and_in_order(poller: str, addr: str) -> None:
    payloads = {b"a": pattern(3 * MiB, 1), b"b": pattern(2 * MiB, 2), b"c": pattern(MiB, 3)}

    def data(cid: int, d: bytes) -> bytes:
        return b"".join(payloads[bytes([x])] for x in d)

    with running(evio.Events(data=data), addr, poller=poller) as r:
        c = r.connect()
        for key in (b"a", b"b", b"c"):
            c.sendall(key)
            time.sleep(0.05)  # separate reads, while earlier output is pending
        got = recv_exactly(c, 6 * MiB)
    assert got == payloads[b"a"] + payloads[b"b"] + payloads[b"c"]


@pytest.mark.rule("LOOP-9")
def test_no_wakeups_while_idle_and_write_interest_only_while_pending(
    poller: str, addr: str
) -> None:
    counting = CountingPoller(poller)
    big = pattern(8 * MiB)

    def data(cid: int, d: bytes) -> Any:
        return Action.SHUTDOWN if d == b"bye" else big

    with running(evio.Events(data=data), addr, poller=counting, stoppable=False) as r:
        c = r.connect()
        c.sendall(b"go")
        time.sleep(0.1)  # not reading yet: what the kernel cannot take stays pending
        assert recv_exactly(c, len(big)) == big
        time.sleep(0.05)
        before = counting.polls
        time.sleep(0.3)
        idle_polls = counting.polls - before
        with counting.lock:
            masks = [m for _, m in counting.modifies]
        c.sendall(b"bye")
        r.join()
    assert idle_polls == 0, f"{idle_polls} wake-ups while idle"
    assert any(m & evio.WRITE for m in masks)  # asked while pending
    assert masks[-1] == evio.READ  # and no longer once drained


@pytest.mark.rule("LOOP-10")
def test_prewrite_and_postwrite_bracket_every_attempt(poller: str, addr: str) -> None:
    rec = Recorder()
    big = pattern(16 * MiB)
    ev = evio.Events(
        data=lambda cid, d: big,
        prewrite=lambda cid, n: rec.add("pre", cid, n),
        postwrite=lambda cid, n, rem: rec.add("post", cid, (n, rem)),
    )
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"x")
        # Not reading yet: the first attempt must stop short at the kernel's
        # buffers (a reading client on loopback can take 16 MiB in one send).
        wait_for(lambda: any(k == "post" for k, _, _ in rec.log))
        assert recv_exactly(c, len(big)) == big
        wait_for(lambda: rec.log and rec.log[-1][0] == "post" and rec.log[-1][2][1] == 0)
    log = [(k, p) for k, _, p in rec.log]
    assert len(log) >= 4 and len(log) % 2 == 0  # 16 MiB cannot go in one send
    pending = 0
    sent = 0
    for (k1, amount), (k2, (n, remaining)) in zip(log[::2], log[1::2], strict=True):
        assert (k1, k2) == ("pre", "post")
        expected = len(big) if pending == 0 and sent == 0 else pending
        assert amount == expected
        assert 0 <= n <= amount and remaining == amount - n
        sent += n
        pending = remaining
    assert sent == len(big) and pending == 0


@pytest.mark.rule("LOOP-21", "LOOP-10")
def test_postwrite_follows_a_write_that_failed(poller: str) -> None:
    rec = Recorder()
    big = b"y" * (4 * MiB)
    sent = threading.Event()

    def prewrite(cid: int, n: int) -> None:
        rec.add("pre", cid, n)

    def postwrite(cid: int, n: int, remaining: int) -> None:
        rec.add("post", cid, (n, remaining))
        sent.set()

    ev = echo_events(rec, data=lambda cid, d: big, prewrite=prewrite, postwrite=postwrite)
    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        assert r.server is not None
        c = small_socket(r.server.addrs[0])
        c.sendall(b"go")
        sent.wait(DEADLINE)
        wait_for(lambda: rec.of("post"), what="the first postwrite")
        reset(c)
        wait_for(lambda: rec.of("closed"), what="closed after the reset")
    kinds = [k for k, i, _ in rec.log if k in ("pre", "post")]
    assert kinds == ["pre", "post"] * (len(kinds) // 2), kinds
    last = rec.of("post")[-1][1]
    assert last[0] == 0 and last[1] > 0, f"the failed attempt: {last}"
    err = rec.of("closed")[0][1]
    assert isinstance(err, ConnectionResetError | BrokenPipeError), err


# ----------------------------------------------------------------- reads


@pytest.mark.rule("LOOP-28", "LOOP-12")
def test_reads_are_owned_bytes_of_at_most_64k(poller: str, addr: str) -> None:
    rec = Recorder()
    payload = pattern(MiB)
    with running(echo_events(rec), addr, poller=poller) as r:
        c = r.connect()
        # Send while reading: the server stops reading a client that does not
        # read its echo (flow control, REL-1).
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(c, len(payload)) == payload
        sender.join(10)
    chunks = [p for _, p in rec.of("data")]
    assert all(0 < len(p) <= 65536 for p in chunks)
    assert b"".join(chunks) == payload


@pytest.mark.rule("LOOP-28")
def test_after_small_reads_a_burst_is_read_small_once_then_in_full_pieces(
    poller: str, addr: str
) -> None:
    rec = Recorder()
    payload = pattern(MiB, 3)
    with running(echo_events(rec), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"  # a small read: the next asks for 448
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(c, len(payload)) == payload
        sender.join(10)
    sizes = [len(p) for _, p in rec.of("data")]
    assert sizes[0] == 4
    assert 0 < sizes[1] <= 448  # the first read of the burst asked for 448
    assert max(sizes[2:]) > 448 and max(sizes) <= 65536  # then for 65,536


@pytest.mark.rule("LOOP-28")
@pytest.mark.parametrize("reuse", [False, True], ids=["bytes", "reuse_input_buffer"])
def test_the_read_after_a_small_one_asks_448_unless_the_buffer_is_reused(
    poller: str, addr: str, reuse: bool
) -> None:
    # The loop stands still inside the first data call while 100 KiB arrive,
    # so the next read gets all it asks for: 448 bytes, or 65,536 from the
    # reused buffer, which allocates nothing to save.
    sizes: list[int] = []

    def data(cid: int, d: Any) -> Any:
        sizes.append(len(d))
        if len(sizes) == 1:
            time.sleep(0.3)
        return bytes(d)

    ev = evio.Events(opened=lambda cid, info: evio.Options(reuse_input_buffer=reuse), data=data)
    payload = pattern(100 * 1024, 7)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"ping")
        time.sleep(0.1)  # read, and inside data: the burst waits in the kernel
        c.sendall(payload)
        assert recv_exactly(c, 4 + len(payload)) == b"ping" + payload
    assert sizes[0] == 4
    assert sizes[1] == (65536 if reuse else 448)


@pytest.mark.rule("LOOP-12")
def test_reuse_input_buffer_hands_a_view_valid_only_during_the_call(
    poller: str, addr: str
) -> None:
    views: list[memoryview] = []
    types: list[type] = []

    def data(cid: int, d: Any) -> Any:
        types.append(type(d))
        views.append(d)
        return d  # returning the view itself is allowed

    ev = evio.Events(opened=lambda cid, info: evio.Options(reuse_input_buffer=True), data=data)
    payload = pattern(3 * MiB, 5)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        got = recv_exactly(c, len(payload))
        sender.join(10)
    assert got == payload
    assert set(types) == {memoryview}
    with pytest.raises(ValueError):
        views[0].tobytes()


@pytest.mark.rule("LOOP-13")
def test_peer_end_of_stream_flushes_then_closes(poller: str, addr: str) -> None:
    rec = Recorder()
    big = pattern(4 * MiB, 7)

    def data(cid: int, d: bytes) -> bytes:
        rec.add("data", cid, d)
        return big

    ev = evio.Events(data=data, closed=lambda cid, err: rec.add("closed", cid, err))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"q")
        wait_for(lambda: rec.of("data"))
        c.shutdown(socket.SHUT_WR)
        got = recv_all(c)  # everything, then the server's end of stream
        wait_for(lambda: rec.of("closed"))
    assert got == big
    assert rec.kinds(1) == ["data", "closed"]
    assert rec.of("closed") == [(1, None)]


# --------------------------------------------------------------- closing


@pytest.mark.rule("LOOP-14")
@pytest.mark.parametrize("size", [3, 5 * MiB])
def test_close_sends_pending_output_first(poller: str, addr: str, size: int) -> None:
    rec = Recorder()
    out = pattern(size, 9)
    ev = echo_events(rec, data=lambda cid, d: (out, Action.CLOSE))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"bye")
        got = recv_all(c)
        wait_for(lambda: rec.of("closed"))
    assert got == out
    assert rec.of("closed") == [(1, None)]


@pytest.mark.rule("LOOP-15")
@pytest.mark.parametrize("family", ["tcp4", "tcp6"])
def test_reset_gives_the_error_once(poller: str, addr: str) -> None:
    rec = Recorder()
    with running(echo_events(rec), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"x")
        recv_exactly(c, 1)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST
        wait_for(lambda: rec.of("closed"))
        time.sleep(0.05)
    closed = rec.of("closed")
    assert len(closed) == 1
    assert isinstance(closed[0][1], ConnectionResetError)


@pytest.mark.rule("LOOP-15")
def test_closed_exactly_once_per_opened(poller: str, addr: str) -> None:
    rec = Recorder()
    with running(echo_events(rec), addr, poller=poller) as r:
        clients = [r.connect() for _ in range(30)]
        for i, c in enumerate(clients):
            c.sendall(b"m")
            recv_exactly(c, 1)
            if i % 3 == 0:
                c.close()
        wait_for(lambda: len(rec.of("closed")) == 10)
    # The rest are closed by shutdown.
    opened = sorted(rec.ids())
    closed = sorted(i for i, _ in rec.of("closed"))
    assert opened == closed == list(range(1, 31))
    for cid in opened:
        kinds = rec.kinds(cid)
        assert kinds[0] == "opened" and kinds[-1] == "closed"
        assert kinds.count("closed") == 1


# -------------------------------------------------------------- shutdown


@pytest.mark.rule("LOOP-17", "LOOP-18", "LOOP-19")
def test_shutdown_closes_everything_in_id_order(poller: str, addr: str) -> None:
    rec = Recorder()
    ticks: list[float] = []

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return (b"bye", Action.SHUTDOWN) if d == b"stop" else d

    def tick() -> float:
        ticks.append(time.monotonic())
        return 0.01

    ev = echo_events(rec, data=data, tick=tick)
    with running(ev, addr, poller=poller, stoppable=False) as r:
        idle = [r.connect() for _ in range(3)]
        for c in idle:
            c.sendall(b"hi")
            recv_exactly(c, 2)
        stopper = r.connect()
        stopper.sendall(b"stop")
        r.join()
        n_ticks = len(ticks)
        assert recv_all(stopper) == b"bye"
        for c in idle:
            assert recv_all(c) == b""
        time.sleep(0.05)
        assert len(ticks) == n_ticks  # no more ticks
    closed = rec.of("closed")
    assert [i for i, _ in closed] == [1, 2, 3, 4]
    assert all(err is None for _, err in closed)
    if addr.startswith("unix://"):
        assert not os.path.exists(addr[len("unix://"):])


@pytest.mark.rule("LOOP-17")
@pytest.mark.parametrize("where", ["opened", "data", "prewrite", "postwrite", "closed"])
def test_shutdown_from_any_callback(poller: str, addr: str, where: str) -> None:
    def maybe(name: str, value: Any = None) -> Any:
        return Action.SHUTDOWN if name == where else value

    ev = evio.Events(
        opened=lambda cid, info: maybe("opened"),
        data=lambda cid, d: (d, maybe("data", Action.CLOSE if d == b"close" else None)),
        prewrite=lambda cid, n: maybe("prewrite"),
        postwrite=lambda cid, n, rem: maybe("postwrite"),
        closed=lambda cid, err: maybe("closed"),
    )
    with running(ev, addr, poller=poller, stoppable=False) as r:
        c = r.connect()
        if where != "opened":
            c.sendall(b"close")
        r.join()


@pytest.mark.rule("LOOP-19")
def test_keyboard_interrupt_still_releases_everything(poller: str, addr: str) -> None:
    def data(cid: int, d: bytes) -> bytes:
        raise KeyboardInterrupt

    rec = Recorder()
    ev = echo_events(rec, data=data)
    with running(ev, addr, poller=poller, stoppable=False, expect_error=True) as r:
        c = r.connect()
        c.sendall(b"^C")
        r.join()
        assert recv_all(c) == b""
    assert isinstance(r.error, KeyboardInterrupt)
    assert rec.of("closed") == [(1, None)]


@pytest.mark.project  # the spec page and this implementation's table agree
@pytest.mark.rule("LOOP-20")
def test_lifecycle_table_on_the_spec_page_is_the_loops() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import lifecycle_doc

    assert lifecycle_doc.current() == lifecycle_doc.render(), (
        "docs/spec/loop.md is out of date: run python tools/lifecycle_doc.py --write"
    )


@pytest.mark.rule("LOOP-2")
def test_a_far_tick_does_not_overflow_the_poll(poller: str, addr: str) -> None:
    counting = CountingPoller(poller)

    def data(cid: int, d: bytes) -> Any:
        return Action.SHUTDOWN if d == b"stop" else d

    ev = evio.Events(data=data, tick=lambda: 1e7)  # about 116 days
    with running(ev, addr, poller=counting, stoppable=False) as r:
        c = r.connect()
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
        c.sendall(b"stop")
        r.join()
    waits = [t for t in counting.timeouts if t is not None]
    assert waits and max(waits) <= 86400.0


# ------------------------------------------------------------ Server.stop


@pytest.mark.rule("LOOP-22")
def test_stop_from_another_thread_closes_everything_and_returns(poller: str) -> None:
    rec = Recorder()
    before = open_descriptors()
    with running(echo_events(rec), "tcp4://127.0.0.1:0", poller=poller,
                 stoppable=False) as r:
        clients = [r.connect() for _ in range(3)]
        for c in clients:
            c.sendall(b"x")
            assert recv_exactly(c, 1) == b"x"
        assert r.server is not None
        r.server.stop()
        r.server.stop()  # twice: nothing more
        r.join()
        for c in clients:
            assert recv_all(c) == b""
        r.server.stop()  # after serve() returned: nothing
    assert sorted(i for i, _ in rec.of("closed")) == [1, 2, 3]
    assert all(e is None for _, e in rec.of("closed"))
    assert r.server.wake(1) is False
    assert open_descriptors() - before == set()


@pytest.mark.rule("LOOP-22")
def test_stop_from_a_callback_is_a_shutdown(poller: str) -> None:
    rec = Recorder()
    holder: list[evio.Server] = []

    def data(cid: int, d: bytes) -> Any:
        holder[0].stop()
        return d

    ev = echo_events(rec, data=data, serving=holder.append)
    with running(ev, "tcp4://127.0.0.1:0", poller=poller, stoppable=False) as r:
        c = r.connect()
        c.sendall(b"bye")
        assert recv_all(c) == b"bye"  # the output of that callback is still sent
        r.join()
    assert rec.of("closed") == [(1, None)]


_STOP_CHILD = textwrap.dedent("""
    import signal, sys
    import evio

    def serving(server):
        signal.signal(signal.SIGTERM, lambda signum, frame: server.stop())
        print("ready", server.addrs[0][1], flush=True)

    def closed(cid, err):
        print("closed", cid, err, flush=True)

    evio.serve(evio.Events(serving=serving, data=lambda c, d: d, closed=closed),
               "tcp4://127.0.0.1:0", poller=sys.argv[1])
    print("returned", flush=True)
""")


@pytest.mark.rule("LOOP-22", "LOOP-23")
def test_stop_from_a_signal_handler_while_the_loop_sleeps(poller: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _STOP_CHILD, poller], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as c:
            c.sendall(b"ping")
            assert recv_exactly(c, 4) == b"ping"
            time.sleep(0.2)  # asleep in poll(None): nothing is due
            proc.send_signal(signal.SIGTERM)
            assert recv_all(c) == b""
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.split("\n")[:2] == ["closed 1 None", "returned"], (out, err)


# ------------------------------------------------------------------ layout


def _evio_imports() -> dict[str, set[str]]:
    """Module -> the evio modules it imports, ``TYPE_CHECKING`` ones included."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "evio").glob("*.py")):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[name] = deps - {name}
    return graph


@pytest.mark.rule("LOOP-25")
def test_the_evio_modules_import_one_another_without_a_cycle() -> None:
    graph = _evio_imports()
    graph.pop("__init__")  # the package re-exports everything: it is the root
    done: set[str] = set()
    path: list[str] = []

    def visit(m: str) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(m):], m]))
        if m in done:
            return
        path.append(m)
        for dep in sorted(graph.get(m, ())):
            visit(dep)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def _evio_classes() -> dict[str, list[ast.ClassDef]]:
    """Module -> the classes it defines (at any depth)."""
    return {path.stem: [n for n in ast.walk(ast.parse(path.read_text()))
                        if isinstance(n, ast.ClassDef)]
            for path in sorted((ROOT / "evio").glob("*.py"))}


def _is_stub(fn: ast.FunctionDef) -> bool:
    """A method whose body is only ``...`` (after any docstring)."""
    body = [n for n in fn.body
            if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                    and isinstance(n.value.value, str))]
    return len(body) == 1 and isinstance(body[0], ast.Expr) and (
        isinstance(body[0].value, ast.Constant) and body[0].value.value is Ellipsis)


@pytest.mark.rule("LOOP-25")
def test_no_class_is_split_across_modules() -> None:
    import evio as reference  # the layout rule is this implementation's

    classes = _evio_classes()
    where = {c.name: m for m, cs in classes.items() for c in cs}
    split = []
    for module, cs in classes.items():
        for c in cs:
            bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in c.bases]
            if any(b.startswith(("Protocol", "typing.Protocol")) for b in bases):
                continue  # a Protocol says what it needs of another class: stubs are its form
            stubs = [f.name for f in c.body if isinstance(f, ast.FunctionDef) and _is_stub(f)]
            if stubs:
                split.append(f"{module}.{c.name}: stub methods {stubs} stand in for another half")
            for b in bases:
                home = where.get(b)
                if home is not None and home != module and b not in reference.__all__:
                    split.append(f"{module}.{c.name}: takes a base from {home} ({b}), "
                                 "which is not public API")
    assert split == []
