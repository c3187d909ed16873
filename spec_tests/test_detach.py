"""Conformance: detach (docs/spec/detach.md), over every poller and family.

A detached connection belongs to the test once ``detached`` has been called:
each test hands it to an owner thread (or drives it from the test's thread)
and closes it before the ``with`` block ends, so that the harness's
descriptor-leak check covers the hand-over too.  ``DETACH-5`` (UDP) is checked
in ``test_udp.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import DEADLINE, Recorder, Running, pattern, recv_all, recv_exactly, running, wait_for
from implementation import evio

Action = evio.Action

MiB = 1 << 20
NO_FLOW_CONTROL = 1 << 40  # a high-water mark no test reaches


# More than any loopback socket buffers hold: most of it stays pending.
BIG = pattern(16 * MiB, 1)


class Owner:
    """The new owner: records callbacks, keeps every conn, runs ``job`` on a thread."""

    def __init__(self, job: Callable[[evio.DetachedConn], None] | None = None) -> None:
        self.rec = Recorder()
        self.job = job
        self.conns: dict[int, evio.DetachedConn] = {}
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def detached(self, cid: int, conn: Any) -> None:
        self.rec.add("detached", cid, conn)
        self.conns[cid] = conn
        if self.job is not None:
            self.start(self.job, conn)

    def start(self, job: Callable[[evio.DetachedConn], None], conn: evio.DetachedConn) -> None:
        def main() -> None:
            try:
                job(conn)
            except BaseException as e:  # handed to the test thread by join()
                self.errors.append(e)

        t = threading.Thread(target=main, daemon=True, name="detached-owner")
        self.threads.append(t)
        t.start()

    def conn(self, cid: int = 1) -> evio.DetachedConn:
        wait_for(lambda: cid in self.conns, what=f"detached({cid}, ...)")
        return self.conns[cid]

    def join(self) -> None:
        for t in self.threads:
            t.join(DEADLINE)
            assert not t.is_alive(), "the owner thread did not finish"
        if self.errors:
            raise self.errors[0]

    def close_all(self) -> None:
        """Close every conn (bounded: a peer that never reads cannot hang the test)."""
        for conn in self.conns.values():
            if conn.fileno() >= 0:
                conn.settimeout(DEADLINE)
                conn.close()

    def events(self, **extra: Any) -> evio.Events:
        """An echo server that records opened/data/closed and detaches into ``self``."""
        rec = self.rec

        def opened(cid: int, info: evio.Info) -> evio.Options:
            rec.add("opened", cid, info)
            # These tests keep reading while output is pending: no flow control.
            return evio.Options(high_water=NO_FLOW_CONTROL)

        def data(cid: int, d: bytes | None) -> bytes | None:
            rec.add("data", cid, d)
            return d

        def closed(cid: int, err: BaseException | None) -> None:
            rec.add("closed", cid, err)

        ev = evio.Events(opened=opened, data=data, closed=closed, detached=self.detached)
        return dataclasses.replace(ev, **extra)


def server(r: Running) -> evio.Server:
    assert r.server is not None
    return r.server


def upper_echo(conn: evio.DetachedConn) -> None:
    """A blocking owner: echo upper-cased until the peer's end of stream, then close."""
    assert isinstance(conn, evio.DetachedConn)
    assert conn.gettimeout() is None and conn.socket.getblocking()
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            break
        conn.sendall(chunk.upper())
    conn.sendall(b"[eof]")
    conn.close()


# ------------------------------------------------------------ hand-over


@pytest.mark.rule("DETACH-1", "DETACH-3", "DETACH-4")
@pytest.mark.parametrize("with_output", [False, True], ids=["alone", "with-output"])
def test_detach_hands_the_socket_to_a_blocking_owner(
    poller: str, addr: str, with_output: bool
) -> None:
    owner = Owner(upper_echo)
    rec = owner.rec

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        if d == b"switch":
            return (b"ok\n", Action.DETACH) if with_output else Action.DETACH
        return d

    with running(owner.events(data=data), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"hello")
        assert recv_exactly(c, 5) == b"hello"
        assert server(r).wake(1) is True  # before: an open connection
        wait_for(lambda: ("data", 1, None) in rec.log)
        c.sendall(b"switch")
        if with_output:
            assert recv_exactly(c, 3) == b"ok\n"
        owner.conn(1)
        assert server(r).wake(1) is False  # after: not the loop's any more
        for word in (b"abc", b"defgh", b"x" * 10000):
            c.sendall(word)
            assert recv_exactly(c, len(word)) == word.upper()
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b"[eof]"  # the owner saw b"" and stopped
        owner.join()
        assert owner.conns[1].fileno() == -1
    assert rec.kinds(1) == ["opened", "data", "data", "data", "detached"]
    assert rec.of("closed") == []  # not even when the server shut down


@pytest.mark.rule("DETACH-1", "DETACH-2", "DETACH-4")
@pytest.mark.parametrize("shape", ["pair", "triple"])
def test_detach_from_opened(poller: str, addr: str, shape: str) -> None:
    owner = Owner()

    def opened(cid: int, info: evio.Info) -> Any:
        owner.rec.add("opened", cid, info)
        return (b"hi ", Action.DETACH) if shape == "pair" else (b"hi ", None, Action.DETACH)

    def job(conn: evio.DetachedConn) -> None:
        conn.write(b"there\n")
        upper_echo(conn)

    owner.job = job
    with running(owner.events(opened=opened), addr, poller=poller) as r:
        c = r.connect()
        assert recv_exactly(c, 9) == b"hi there\n"
        c.sendall(b"quiet")
        assert recv_exactly(c, 5) == b"QUIET"
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b"[eof]"
        owner.join()
    assert owner.rec.kinds(1) == ["opened", "detached"]


@pytest.mark.rule("DETACH-3")
def test_bytes_the_loop_did_not_read_go_to_the_new_owner(poller: str, addr: str) -> None:
    payload = pattern(2 * MiB, 2)
    kept = bytearray()  # what data() had been given beyond the switch
    received = bytearray()  # what the owner read

    def data(cid: int, d: bytes) -> Any:
        kept.extend(d)
        if len(kept) < 6:
            return None
        assert kept.startswith(b"switch")
        del kept[:6]
        return Action.DETACH

    def job(conn: evio.DetachedConn) -> None:
        while chunk := conn.recv(65536):
            received.extend(chunk)
        conn.sendall(b"done")
        conn.close()

    owner = Owner(job)

    def send(c: socket.socket) -> None:
        c.sendall(b"switch")
        c.sendall(payload)  # at once: part of it may reach data() before the detach
        c.shutdown(socket.SHUT_WR)

    with running(owner.events(data=data), addr, poller=poller) as r:
        c = r.connect()
        sender = threading.Thread(target=send, args=(c,), daemon=True)
        sender.start()
        assert recv_all(c) == b"done"
        sender.join(DEADLINE)
        owner.join()
    assert bytes(kept) + bytes(received) == payload


# ------------------------------------------------------ pending output


def _read_while(c: socket.socket, more: Callable[[], bool]) -> bytes:
    """Read what arrives while ``more()`` (for at most `DEADLINE` seconds)."""
    got = b""
    end = time.monotonic() + DEADLINE
    while more() and time.monotonic() < end:
        chunk = c.recv(256 * 1024)
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.rule("DETACH-2", "DETACH-4")
@pytest.mark.parametrize("how", ["with-detach", "earlier", "from-postwrite", "while-flushing"])
def test_pending_output_goes_first_then_the_owners(poller: str, addr: str, how: str) -> None:
    owner = Owner()
    rec = owner.rec
    tail = b"<returned with DETACH>" if how == "earlier" else b""
    # Closing, the loop flushes while the client reads: more than the
    # kernel's buffers can ever hold, so output is still pending at the detach.
    big = BIG * 4 if how == "while-flushing" else BIG
    posts: list[int] = []

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        if how == "with-detach":
            return big, Action.DETACH
        if how == "while-flushing":
            return big, Action.CLOSE
        if d == b"detach":
            return tail, Action.DETACH
        return big

    def postwrite(cid: int, n: int, remaining: int) -> Any:
        posts.append(remaining)
        if how == "from-postwrite" and remaining:
            return Action.DETACH
        if how == "while-flushing" and len(posts) == 2:
            # The client reads only until this flush before the detach:
            # most of the 64 MiB is still far from sent, and the
            # connection's CLOSE is pending.
            assert remaining > 0
            return Action.DETACH
        return None

    got: list[bytes] = []
    total = len(big) + len(tail) + len(b"<owner>")
    with running(owner.events(data=data, postwrite=postwrite), addr, poller=poller) as r:
        c = r.connect()
        detached = threading.Event()

        def read() -> None:
            first = b""
            if how == "while-flushing":
                # Read until the loop has flushed once more (its second
                # postwrite, which detaches): how much that takes depends on
                # the kernel's buffers, so no fixed amount...
                first = _read_while(c, lambda: len(posts) < 2)
                detached.wait(DEADLINE)  # ...and no more until it has detached
            got.append(first + recv_exactly(c, total - len(first)) + recv_all(c))

        reader = threading.Thread(target=read, daemon=True)
        c.sendall(b"go")
        if how == "earlier":
            wait_for(lambda: rec.of("data"))  # BIG is pending now
            c.sendall(b"detach")
        if how == "while-flushing":
            reader.start()  # the loop flushes only as the client reads
        conn = owner.conn(1)
        detached.set()
        pending = conn.pending
        assert pending > 0
        time.sleep(0.1)
        assert conn.pending == pending  # the loop does not send it
        if how != "while-flushing":
            reader.start()

        def job(conn: evio.DetachedConn) -> None:
            conn.sendall(b"<owner>")
            conn.close()

        owner.start(job, conn)
        reader.join(DEADLINE)
        owner.join()
    assert got == [big + tail + b"<owner>"]
    assert rec.kinds(1)[-1] == "detached"
    assert rec.of("closed") == []


@contextlib.contextmanager
def detached_with_output_pending(
    poller: str, addr: str
) -> Iterator[tuple[Running, socket.socket, evio.DetachedConn]]:
    """An echo server that detaches connection 1 when it sends ``go``,
    returning `BIG` with the ``DETACH``: more than the socket takes, so part
    of it travels with ``conn``. Yields the server, the peer and ``conn``."""
    owner = Owner()
    ev = owner.events(data=lambda cid, d: (BIG, Action.DETACH) if d == b"go" else d)
    with running(ev, addr, poller=poller) as r:
        peer = r.connect()
        peer.sendall(b"go")
        conn = owner.conn(1)
        assert conn.pending > 0
        yield r, peer, conn


@pytest.mark.rule("DETACH-2")
def test_a_peer_that_never_reads_cannot_block_the_loop(poller: str, addr: str) -> None:
    with detached_with_output_pending(poller, addr) as (r, stuck, conn):
        pending = conn.pending
        # Nobody flushes and the peer never reads; the loop serves everyone else.
        for i in range(10):
            c = r.connect()
            start = time.monotonic()
            c.sendall(b"ping %d" % i)
            assert recv_exactly(c, len(b"ping %d" % i)) == b"ping %d" % i
            assert time.monotonic() - start < 1.0
            c.close()
        assert conn.pending == pending
        # A close whose peer has gone does not hang: the rest cannot be delivered.
        stuck.close()
        conn.settimeout(DEADLINE)
        conn.close()
        assert conn.fileno() == -1


@pytest.mark.rule("DETACH-2")
@pytest.mark.parametrize("how", ["SHUT_RD", "SHUT_WR", "SHUT_RDWR"])
def test_a_shutdown_of_either_direction_sends_what_is_pending_first(
    poller: str, addr: str, how: str
) -> None:
    with detached_with_output_pending(poller, addr) as (_, c, conn):
        got = bytearray()
        reader = threading.Thread(target=lambda: got.extend(recv_all(c)), daemon=True)
        reader.start()
        conn.settimeout(DEADLINE)
        conn.shutdown(getattr(socket, how))
        assert conn.pending == 0
        conn.close()
        reader.join(DEADLINE)
    assert bytes(got) == BIG


@pytest.mark.rule("DETACH-2")
def test_output_returned_with_detach_is_sent_or_pending_never_lost(
    poller: str, addr: str
) -> None:
    owner = Owner()
    ev = owner.events(data=lambda cid, d: (b"hello", Action.DETACH))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"x")
        conn = owner.conn(1)
        assert conn.pending in (0, 5)  # the socket took it at once, or it travels with conn
        conn.settimeout(DEADLINE)
        conn.close()
        assert recv_all(c) == b"hello"


@pytest.mark.rule("DETACH-4")
@pytest.mark.parametrize("size", [0, 3, 16 * MiB])
def test_close_sends_what_is_pending_then_ends_the_stream(
    poller: str, addr: str, size: int
) -> None:
    out = BIG[:size]
    owner = Owner(lambda conn: conn.close())
    with running(owner.events(data=lambda cid, d: (out, Action.DETACH)), addr,
                 poller=poller) as r:
        c = r.connect()
        c.sendall(b"x")
        assert recv_all(c) == out
        owner.join()
        assert owner.conns[1].fileno() == -1 and owner.conns[1].pending == 0


@pytest.mark.rule("DETACH-2", "DETACH-3", "DETACH-4")
def test_a_read_sends_what_is_pending_first(poller: str, addr: str) -> None:
    # The peer answers only after it has our reply: a reader that did not
    # flush first would wait for ever.
    got: list[bytes] = []

    def job(conn: evio.DetachedConn) -> None:
        got.append(conn.recv(100))
        conn.send(b"!")
        conn.shutdown(socket.SHUT_WR)
        got.append(conn.recv(100))
        conn.close()

    owner = Owner(job)
    ev = owner.events(data=lambda cid, d: (BIG, Action.DETACH))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"question")
        assert recv_exactly(c, len(BIG)) == BIG
        c.sendall(b"answer")
        assert recv_exactly(c, 1) == b"!"
        assert c.recv(10) == b""  # the owner's shutdown
        c.shutdown(socket.SHUT_WR)
        owner.join()
    assert got == [b"answer", b""]


@pytest.mark.rule("DETACH-2", "DETACH-4")
def test_a_timed_out_flush_does_not_send_twice(poller: str, addr: str) -> None:
    owner = Owner()
    timeouts: list[BaseException] = []

    def impatient(conn: evio.DetachedConn) -> None:
        conn.settimeout(0.5)
        try:
            conn.sendall(b"<owner>")
        except TimeoutError as e:
            timeouts.append(e)

    ev = owner.events(data=lambda cid, d: (BIG, Action.DETACH))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        conn = owner.conn(1)
        before = conn.pending
        owner.start(impatient, conn)
        head = recv_exactly(c, MiB)  # lets the flush make progress, then stalls it
        owner.join()
        assert len(timeouts) == 1
        conn.settimeout(None)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(recv_all(c)), daemon=True)
        reader.start()
        try:
            assert conn.pending < before  # part was sent before the timeout
            conn.sendall(b"<owner>")
        finally:
            conn.close()
            reader.join(DEADLINE)
    assert head + got[0] == BIG + b"<owner>"


# ------------------------------------------------------------ the callback


@pytest.mark.rule("DETACH-1", "EV-22")
def test_detached_raising_is_logged_and_the_socket_closed(
    poller: str, addr: str, caplog: pytest.LogCaptureFixture
) -> None:
    owner = Owner()
    boom = RuntimeError("detached failed")

    def detached(cid: int, conn: Any) -> None:
        owner.detached(cid, conn)
        raise boom

    def data(cid: int, d: bytes) -> Any:
        owner.rec.add("data", cid, d)
        return (b"bye loop\n", Action.DETACH) if d == b"go" else d

    ev = owner.events(data=data, detached=detached)
    with caplog.at_level(logging.ERROR, logger="evio"), running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        # What the loop still held is sent, then the stream ends: nobody owns it.
        assert recv_all(c) == b"bye loop\n"
        other = r.connect()
        other.sendall(b"still served")
        assert recv_exactly(other, 12) == b"still served"
    assert owner.rec.kinds(1) == ["opened", "data", "detached"]
    assert [i for i, _ in owner.rec.of("closed")] == [2]
    assert any(x.levelno == logging.ERROR and x.exc_info and x.exc_info[1] is boom
               for x in caplog.records)


@pytest.mark.rule("DETACH-1")
def test_shutdown_from_detached_leaves_the_conn_to_its_owner(poller: str, addr: str) -> None:
    owner = Owner()

    def detached(cid: int, conn: Any) -> Action:
        owner.detached(cid, conn)
        return Action.SHUTDOWN

    def data(cid: int, d: bytes) -> Any:
        owner.rec.add("data", cid, d)
        return (b"handing over\n", Action.DETACH) if d == b"go" else d

    ev = owner.events(data=data, detached=detached)
    with running(ev, addr, poller=poller, stoppable=False) as r:
        bystander = r.connect()
        bystander.sendall(b"hi")
        assert recv_exactly(bystander, 2) == b"hi"
        c = r.connect()
        c.sendall(b"go")
        r.join()  # the server stopped ...
        assert recv_all(bystander) == b""
        conn = owner.conn(2)
        conn.sendall(b"still mine\n")  # ... and the detached socket is still open
        assert recv_exactly(c, 24) == b"handing over\nstill mine\n"
        c.sendall(b"and yours")
        assert conn.recv(100) == b"and yours"
        conn.close()
        assert recv_all(c) == b""
    assert owner.rec.of("closed") == [(1, None)]
    assert owner.rec.kinds(2) == ["opened", "data", "detached"]
