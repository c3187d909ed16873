"""Conformance: UDP (docs/spec/udp.md), over every poller, on 127.0.0.1 and ::1.

A UDP "connection" is a remote address the server knows.  The client side of
every test is a plain blocking UDP socket bound to loopback (so its
``getsockname()`` is the address the server sees), with a timeout, handed to
the harness so that it is closed before the descriptor-leak check.  Datagrams
from one socket to one socket on loopback arrive whole and in order; tests do
not rely on ordering across different client sockets.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import socket
import time
from typing import Any

import pytest
from harness import (
    DEADLINE,
    CountingPoller,
    Recorder,
    Running,
    connect_to,
    echo_events,
    recv_all,
    recv_exactly,
    running,
    wait_for,
)
from implementation import evio

Action = evio.Action

# (udp listen address, a tcp listen address of the same family)
UDP_FAMILIES = {
    "udp4": ("udp4://127.0.0.1:0", "tcp4://127.0.0.1:0"),
    "udp6": ("udp6://[::1]:0", "tcp6://[::1]:0"),
}
# The largest payload one datagram can carry: 65535 minus the IPv4 and UDP
# headers; IPv6 has no header in its 16-bit length, and loopback's MTU is 64 KiB.
MAX_PAYLOAD = {"udp4": 65507, "udp6": 65527}


@pytest.fixture(params=sorted(UDP_FAMILIES))
def udp(request: pytest.FixtureRequest) -> str:
    """``udp4`` on 127.0.0.1 and ``udp6`` on ::1."""
    return str(request.param)


def udp_socket(bound: Any) -> socket.socket:
    """A blocking UDP socket bound to the loopback of ``bound``'s family."""
    if len(bound) == 4:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
    s.settimeout(DEADLINE)
    return s


def udp_client(r: Running, index: int = 0) -> socket.socket:
    """A UDP client of listener ``index``, closed by the harness inside the ``with``."""
    s = udp_socket(r.addrs[index])
    r.clients.append(s)
    return s


def ask(c: socket.socket, r: Running, payload: bytes, index: int = 0) -> bytes:
    """Send one datagram to listener ``index`` and return the one datagram that answers."""
    c.sendto(payload, r.addrs[index])
    return reply(c, r, index)


def reply(c: socket.socket, r: Running, index: int = 0) -> bytes:
    """The next datagram ``c`` receives; it must come from listener ``index``."""
    got, sender = c.recvfrom(1 << 17)
    assert sender == r.addrs[index]
    return got


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed + (i >> 8)) & 0xFF for i in range(n))


def udp_events(rec: Recorder, **extra: Any) -> evio.Events:
    """An echo server that records opened/data/detached/closed."""

    def opened(cid: int, info: evio.Info) -> None:
        rec.add("opened", cid, info)

    def data(cid: int, d: Any) -> Any:
        rec.add("data", cid, None if d is None else bytes(d))
        return d

    def closed(cid: int, err: BaseException | None) -> None:
        rec.add("closed", cid, err)

    def detached(cid: int, conn: Any) -> None:
        rec.add("detached", cid, conn)

    ev = evio.Events(opened=opened, data=data, closed=closed, detached=detached)
    return dataclasses.replace(ev, **extra)


# ---------------------------------------------------------------- opened


@pytest.mark.rule("UDP-1", "UDP-2")
def test_opened_once_per_remote_with_its_addresses(poller: str, udp: str) -> None:
    rec = Recorder()
    with running(udp_events(rec), UDP_FAMILIES[udp][0], poller=poller) as r:
        a, b = udp_client(r), udp_client(r)
        for i in range(3):
            assert ask(a, r, b"a%d" % i) == b"a%d" % i
            assert ask(b, r, b"b%d" % i) == b"b%d" % i
        infos = dict(rec.of("opened"))
        assert sorted(infos) == [1, 2]
        by_remote = {info.remote_addr: cid for cid, info in infos.items()}
        assert set(by_remote) == {a.getsockname(), b.getsockname()}
        for info in infos.values():
            assert info == evio.Info(False, 0, r.addrs[0], info.remote_addr)
        ida, idb = by_remote[a.getsockname()], by_remote[b.getsockname()]
    assert ida != idb
    assert rec.kinds(ida) == ["opened", "data", "data", "data", "closed"]
    assert [p for i, p in rec.of("data") if i == ida] == [b"a0", b"a1", b"a2"]
    assert [p for i, p in rec.of("data") if i == idb] == [b"b0", b"b1", b"b2"]


@pytest.mark.rule("UDP-1")
def test_ids_come_from_the_same_sequence_as_streams(poller: str, udp: str) -> None:
    rec = Recorder()
    udp_addr, tcp_addr = UDP_FAMILIES[udp]
    with running(udp_events(rec), tcp_addr, udp_addr, poller=poller) as r:
        t1 = r.connect(0)
        t1.sendall(b"t1")
        assert recv_exactly(t1, 2) == b"t1"
        u1 = udp_client(r, 1)
        assert ask(u1, r, b"u1", 1) == b"u1"
        t2 = r.connect(0)
        t2.sendall(b"t2")
        assert recv_exactly(t2, 2) == b"t2"
        u2 = udp_client(r, 1)
        assert ask(u2, r, b"u2", 1) == b"u2"
        infos = dict(rec.of("opened"))
        names = u1.getsockname(), u2.getsockname()
    assert sorted(infos) == [1, 2, 3, 4]
    assert [infos[i].addr_index for i in (1, 2, 3, 4)] == [0, 1, 0, 1]
    assert infos[2].local_addr == infos[4].local_addr == r.addrs[1]
    assert (infos[2].remote_addr, infos[4].remote_addr) == names


# ------------------------------------------------------------ datagrams


@pytest.mark.rule("UDP-2", "UDP-3")
def test_each_datagram_is_one_data_call_and_one_reply(poller: str, udp: str) -> None:
    rec = Recorder()
    sizes = [1, 1400, 9000, 65507, MAX_PAYLOAD[udp], 2, 65536 - 1500]
    with running(udp_events(rec), UDP_FAMILIES[udp][0], poller=poller) as r:
        c = udp_client(r)
        for n, size in enumerate(sizes):
            payload = pattern(size, n)
            assert ask(c, r, payload) == payload
    assert [p for _, p in rec.of("data")] == [pattern(s, n) for n, s in enumerate(sizes)]


@pytest.mark.rule("UDP-2", "UDP-3")
def test_empty_datagram_is_an_empty_packet_and_empty_output_sends_nothing(
    poller: str, udp: str
) -> None:
    rec = Recorder()
    with running(udp_events(rec), UDP_FAMILIES[udp][0], poller=poller) as r:
        c = udp_client(r)
        c.sendto(b"", r.addrs[0])  # echoed as b"": nothing goes back
        c.sendto(b"", r.addrs[0])
        # The next datagram back answers the next request: nothing came before it.
        assert ask(c, r, b"after") == b"after"
    assert [p for _, p in rec.of("data")] == [b"", b"", b"after"]


@pytest.mark.rule("UDP-3")
@pytest.mark.parametrize(
    "out", [b"hello", bytearray(b"hello"), memoryview(b"xhellox")[1:6]], ids=["bytes",
                                                                             "bytearray",
                                                                             "memoryview"]
)
def test_opened_output_is_one_datagram_before_the_reply(
    poller: str, udp: str, out: Any
) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> Any:
        return b"" if d == b"quiet" else (bytearray(d), None)

    ev = udp_events(rec, opened=lambda cid, info: out, data=data)
    with running(ev, UDP_FAMILIES[udp][0], poller=poller) as r:
        c = udp_client(r)
        c.sendto(b"quiet", r.addrs[0])
        assert reply(c, r) == b"hello"
        assert ask(c, r, b"loud") == b"loud"  # b"quiet" was answered by nothing


@pytest.mark.rule("UDP-2")
def test_reuse_input_buffer_gives_views_valid_during_the_call(poller: str, udp: str) -> None:
    kinds: dict[int, set[type]] = collections.defaultdict(set)
    views: list[memoryview] = []

    def opened(cid: int, info: evio.Info) -> Any:
        return evio.Options(reuse_input_buffer=True) if cid == 1 else None

    def data(cid: int, d: Any) -> Any:
        kinds[cid].add(type(d))
        if isinstance(d, memoryview):
            views.append(d)
        return d  # returning the view itself is allowed

    with running(evio.Events(opened=opened, data=data), UDP_FAMILIES[udp][0],
                 poller=poller) as r:
        reusing = udp_client(r)
        for size in (5, 65507, 3):
            payload = pattern(size, size)
            assert ask(reusing, r, payload) == payload
        owning = udp_client(r)
        assert ask(owning, r, b"mine") == b"mine"
    assert kinds == {1: {memoryview}, 2: {bytes}}
    assert len(views) == 3
    with pytest.raises(ValueError):
        views[0].tobytes()  # released once the call returned


# -------------------------------------------------------------- sending


@pytest.mark.rule("UDP-3", "UDP-4", "UDP-5", "LOOP-21")
def test_too_large_a_datagram_forgets_the_remote_with_the_error(poller: str, udp: str) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> bytes:
        rec.add("data", cid, d)
        return b"\0" * 70000 if d == b"big" else d

    ev = udp_events(
        rec,
        data=data,
        prewrite=lambda cid, n: rec.add("pre", cid, n),
        postwrite=lambda cid, n, rem: rec.add("post", cid, (n, rem)),
    )
    with running(ev, UDP_FAMILIES[udp][0], poller=poller) as r:
        c = udp_client(r)
        c.sendto(b"big", r.addrs[0])
        wait_for(lambda: rec.of("closed"))
        # The remote was forgotten: its next datagram opens a new id, and the
        # first datagram back is the answer to it (the big one was never sent).
        assert ask(c, r, b"small") == b"small"
        name = c.getsockname()
    [err] = [e for i, e in rec.of("closed") if i == 1]
    assert isinstance(err, OSError) and err.errno == errno.EMSGSIZE
    assert rec.kinds(1) == ["opened", "data", "pre", "post", "closed"]  # LOOP-21
    assert rec.of("pre")[0] == (1, 70000)
    assert rec.of("post")[0] == (1, (0, 0))  # the failed send is reported too
    assert rec.kinds(2)[:4] == ["opened", "data", "pre", "post"]
    assert rec.of("opened")[1][1].remote_addr == name


@pytest.mark.rule("UDP-5", "UDP-3")
def test_prewrite_and_postwrite_bracket_each_datagram(poller: str, udp: str) -> None:
    rec = Recorder()

    def opened(cid: int, info: evio.Info) -> bytes:
        rec.add("opened", cid)
        return b"hi"

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return b"" if d == b"quiet" else d

    ev = udp_events(
        rec,
        opened=opened,
        data=data,
        prewrite=lambda cid, n: rec.add("pre", cid, n),
        postwrite=lambda cid, n, rem: rec.add("post", cid, (n, rem)),
    )
    big = pattern(60000)
    with running(ev, UDP_FAMILIES[udp][0], poller=poller) as r:
        c = udp_client(r)
        c.sendto(b"abc", r.addrs[0])
        assert reply(c, r) == b"hi"
        assert reply(c, r) == b"abc"
        c.sendto(b"quiet", r.addrs[0])
        assert ask(c, r, big) == big
        wait_for(lambda: rec.log[-1] == ("post", 1, (60000, 0)))  # runs after the send
        log = [(k, p) for k, i, p in rec.log if i == 1]
    assert log == [
        ("opened", None),
        ("pre", 2), ("post", (2, 0)),
        ("data", b"abc"), ("pre", 3), ("post", (3, 0)),
        ("data", b"quiet"),
        ("data", big), ("pre", 60000), ("post", (60000, 0)),
    ]


@pytest.mark.rule("UDP-3", "UDP-5")
def test_nothing_is_buffered(poller: str, udp: str) -> None:
    # The rule's other half -- "a datagram the socket cannot take now is
    # dropped, and postwrite reports (0, 0)" -- cannot be forced over
    # loopback on Linux: the loopback device orphans each datagram from the
    # sending socket as it transmits it, so a UDP socket's send buffer never
    # fills there, whatever SO_SNDBUF is, and sendto() never says EAGAIN.
    # What is deterministic is the other side of the same decision: however
    # many replies pile up at a client that does not read, the server never
    # holds output back -- postwrite reports nothing pending, every reply is
    # all or nothing, and the poller is never asked to watch for writability.
    counting = CountingPoller(poller)
    posts: list[tuple[int, int]] = []
    size = 60000
    ev = evio.Events(
        data=lambda cid, d: d * size,  # one distinct reply per request
        postwrite=lambda cid, n, rem: posts.append((n, rem)),
    )
    with running(ev, UDP_FAMILIES[udp][0], poller=counting) as r:
        c = udp_client(r)
        for i in range(50):
            c.sendto(bytes([i]), r.addrs[0])  # far more replies than c can hold
        wait_for(lambda: len(posts) == 50)
        c.setblocking(False)
        got: list[bytes] = []
        while True:
            try:
                got.append(c.recv(1 << 17))
            except BlockingIOError:
                break
        with counting.lock:
            masks = [m for _, m in counting.modifies]
    assert all(rem == 0 and n in (0, size) for n, rem in posts), posts
    assert 0 < len(got) <= sum(1 for n, _ in posts if n == size)
    assert all(len(g) == size and g == g[:1] * size for g in got)
    assert len({g[0] for g in got}) == len(got)
    assert not any(m & evio.WRITE for m in masks)


# -------------------------------------------------------------- forgetting


@pytest.mark.rule("UDP-4", "DETACH-5")
@pytest.mark.parametrize("action", [Action.CLOSE, Action.DETACH])
@pytest.mark.parametrize("where", ["opened", "data"])
def test_close_and_detach_forget_the_remote(
    poller: str, udp: str, action: Action, where: str
) -> None:
    rec = Recorder()

    def opened(cid: int, info: evio.Info) -> Any:
        rec.add("opened", cid, info)
        return (b"hi", action) if where == "opened" and cid == 1 else None

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return (b"bye", action) if d == b"bye" else d

    ev = udp_events(rec, opened=opened, data=data)
    with running(ev, UDP_FAMILIES[udp][0], poller=poller) as r:
        c = udp_client(r)
        if where == "opened":
            c.sendto(b"first", r.addrs[0])
            assert reply(c, r) == b"hi"
        else:
            assert ask(c, r, b"first") == b"first"
            assert ask(c, r, b"bye") == b"bye"
        wait_for(lambda: rec.of("closed"))
        assert ask(c, r, b"again") == b"again"
        assert ask(c, r, b"and again") == b"and again"
        assert rec.of("closed") == [(1, None)]
        assert r.server is not None and r.server.wake(1) is False
        name = c.getsockname()
    if where == "opened":
        assert rec.kinds(1) == ["opened", "closed"]
    else:
        assert rec.kinds(1) == ["opened", "data", "data", "closed"]
    assert rec.kinds(2) == ["opened", "data", "data", "closed"]
    assert [p for i, p in rec.of("data") if i == 2] == [b"again", b"and again"]
    infos = dict(rec.of("opened"))
    assert infos[1].remote_addr == infos[2].remote_addr == name
    assert rec.of("detached") == []


class Boom(Exception):
    pass


@pytest.mark.rule("UDP-4")
@pytest.mark.parametrize("where", ["opened", "data", "prewrite", "postwrite"])
def test_exception_forgets_the_remote_with_it(
    poller: str, udp: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    boom = Boom(where)

    def maybe(name: str, cid: int) -> None:
        if name == where and cid == 1:
            raise boom

    def opened(cid: int, info: evio.Info) -> None:
        rec.add("opened", cid, info)
        maybe("opened", cid)

    def data(cid: int, d: bytes) -> bytes:
        rec.add("data", cid, d)
        maybe("data", cid)
        return d

    ev = udp_events(
        rec,
        opened=opened,
        data=data,
        prewrite=lambda cid, n: maybe("prewrite", cid),
        postwrite=lambda cid, n, rem: maybe("postwrite", cid),
    )
    with caplog.at_level(logging.ERROR, logger="evio"), running(
        ev, UDP_FAMILIES[udp][0], poller=poller
    ) as r:
        c = udp_client(r)
        c.sendto(b"one", r.addrs[0])
        wait_for(lambda: rec.of("closed"))
        if where == "postwrite":
            assert reply(c, r) == b"one"  # sent: postwrite raised after the send
        assert ask(c, r, b"two") == b"two"
        assert ask(c, r, b"three") == b"three"
    assert rec.of("closed")[0] == (1, boom)
    expected = ["opened", "closed"] if where == "opened" else ["opened", "data", "closed"]
    assert rec.kinds(1) == expected
    assert rec.kinds(2) == ["opened", "data", "data", "closed"]
    assert [i for i, _ in rec.of("closed")] == [1, 2]  # 2 by the shutdown
    assert any(x.levelno == logging.ERROR and x.exc_info and x.exc_info[1] is boom
               for x in caplog.records)


# -------------------------------------------------------------- shutdown


@pytest.mark.rule("UDP-6", "UDP-1")
@pytest.mark.parametrize("udp_first", [False, True], ids=["tcp-udp", "udp-tcp"])
def test_shutdown_closes_remotes_in_id_order_with_streams(
    poller: str, udp: str, udp_first: bool
) -> None:
    rec = Recorder()
    ui, ti = (0, 1) if udp_first else (1, 0)

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return (b"bye", Action.SHUTDOWN) if d == b"stop" else d

    udp_addr, tcp_addr = UDP_FAMILIES[udp]
    addrs = (udp_addr, tcp_addr) if udp_first else (tcp_addr, udp_addr)
    with running(udp_events(rec, data=data), *addrs, poller=poller, stoppable=False) as r:
        t1 = r.connect(ti)
        t1.sendall(b"t1")
        assert recv_exactly(t1, 2) == b"t1"
        u1 = udp_client(r, ui)
        assert ask(u1, r, b"u1", ui) == b"u1"
        u2 = udp_client(r, ui)
        assert ask(u2, r, b"u2", ui) == b"u2"
        t2 = r.connect(ti)
        t2.sendall(b"t2")
        assert recv_exactly(t2, 2) == b"t2"
        u3 = udp_client(r, ui)
        assert ask(u3, r, b"u3", ui) == b"u3"
        assert ask(u1, r, b"stop", ui) == b"bye"
        r.join()
        assert recv_all(t1) == b"" and recv_all(t2) == b""
    infos = dict(rec.of("opened"))
    assert [infos[i].addr_index for i in range(1, 6)] == [ti, ui, ui, ti, ui]
    assert rec.of("closed") == [(i, None) for i in range(1, 6)]


# ---------------------------------------------------------- wake and dial


@pytest.mark.rule("UDP-7")
def test_wake_is_false_and_dial_refuses_udp(poller: str, udp: str) -> None:
    rec = Recorder()
    servers: list[evio.Server] = []
    wakes: list[bool] = []

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        if d == b"wake yourself":
            wakes.append(servers[0].wake(cid))
        return d

    udp_addr, tcp_addr = UDP_FAMILIES[udp]
    ev = udp_events(rec, serving=servers.append, data=data)
    with running(ev, tcp_addr, udp_addr, poller=poller) as r:
        server = servers[0]
        t = r.connect(0)
        t.sendall(b"t")
        assert recv_exactly(t, 1) == b"t"
        u = udp_client(r, 1)
        assert ask(u, r, b"wake yourself", 1) == b"wake yourself"
        assert wakes == [False]  # from the loop's thread
        assert server.wake(2) is False  # and from another
        assert server.wake(1) is True  # a stream id, to show wake works at all
        wait_for(lambda: ("data", 1, None) in rec.log)
        for bad in ("udp://127.0.0.1:9", "udp4://127.0.0.1:9", "udp6://[::1]:9"):
            with pytest.raises(ValueError):
                server.dial(bad)
        assert ask(u, r, b"still served", 1) == b"still served"
    assert ("data", 2, None) not in rec.log
    assert sorted(rec.ids()) == [1, 2]  # the refused dials took no connection


# -------------------------------------------------------------- batching


@pytest.mark.rule("UDP-8")
def test_one_readiness_report_reads_at_most_64_datagrams(poller: str, udp: str) -> None:
    counting = CountingPoller(poller)
    n = 150  # well within a default receive buffer: none is dropped
    clients: list[socket.socket] = []
    seen: list[tuple[str, int, bytes]] = []

    def serving(server: evio.Server) -> None:
        # Queue a tcp request and a flood of datagrams before the first poll.
        tcp = connect_to(server.addrs[1])
        tcp.sendall(b"tcp")
        clients.append(tcp)
        flood = udp_socket(server.addrs[0])
        clients.append(flood)
        for i in range(n):
            flood.sendto(b"%03d" % i, server.addrs[0])
        time.sleep(0.1)  # let loopback deliver every one to the server's socket

    def data(cid: int, d: bytes) -> None:
        seen.append(("udp" if d[:1].isdigit() else "tcp", counting.polls, d))

    udp_addr, tcp_addr = UDP_FAMILIES[udp]
    ev = evio.Events(serving=serving, data=data)
    with running(ev, udp_addr, tcp_addr, poller=counting) as r:
        r.clients.extend(clients)  # closed by the harness
        wait_for(lambda: len(seen) == n + 1)
    datagrams = [(p, d) for kind, p, d in seen if kind == "udp"]
    assert [d for _, d in datagrams] == [b"%03d" % i for i in range(n)]
    per_poll = collections.Counter(p for p, _ in datagrams)
    assert max(per_poll.values()) <= 64, per_poll
    assert per_poll[datagrams[0][0]] == 64  # all were queued: a full batch first
    # The stream request queued before the flood is served before the flood is
    # drained.
    [tcp_poll] = [p for kind, p, _ in seen if kind == "tcp"]
    assert tcp_poll < datagrams[-1][0]


# ------------------------------------------------------- per-remote limits


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
        c = udp_socket(r.addrs[0])
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
        c = udp_socket(r.addrs[0])
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
        cs = [udp_socket(r.addrs[0]) for _ in range(4)]
        r.clients.extend(cs)
        for c in cs[:3]:
            c.sendto(b"hi", r.addrs[0])
            assert c.recv(16) == b"hi"
        cs[0].sendto(b"again", r.addrs[0])  # the first is now the most recent
        assert cs[0].recv(16) == b"again"
        cs[3].sendto(b"hi", r.addrs[0])
        assert cs[3].recv(16) == b"hi"
        assert rec.of("closed") == [(2, None)]  # the second: least recently heard
