"""Conformance: translate and zlib (docs/spec/translate.md), over every poller and family.

A translator sits between a connection's socket and its callbacks. To see
what the loop does with one, these tests use a translator whose every effect
shows on the wire: `Bracket` sends ``HELLO`` as it starts, wraps each
output in ``<...>``, sends ``BYE`` as it closes, and reads three control
bytes -- ``PING`` (answer ``PONG`` at once), ``END`` (the peer ended the
stream) and ``FAIL`` (the peer broke the protocol: leave ``ALERT`` and
raise). It can also record each call it gets, in order.

Rules: the copy `translate` returns (TR-1), who is asked and who is
translated (TR-2, TR-3), the pumping of reads and writes (TR-4), the close
(TR-5, TR-6), translator errors (TR-7), callback errors (TR-8), wakes
(TR-9), no half-close under a translator (TR-10), and `ZlibTranslator`
against a client using the ``zlib`` module (ZLIB-1, ZLIB-2). TLS is in ``test_tls.py``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from functools import cache, partial
from pathlib import Path
from typing import Any

import pytest
from harness import (
    DEADLINE,
    Recorder,
    Running,
    TranslatorBase,
    connect_to,
    data_calls,
    dial_text,
    echo_events,
    errors_of,
    listen_address,
    pattern,
    read_until_eof,
    recv_all,
    recv_exactly,
    running,
    wait_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from implementation import evio

Action = evio.Action

MiB = 1 << 20
PING, END, FAIL = b"\x01", b"\x02", b"\x03"
_CONTROL = re.compile(rb"([\x01-\x03])")

PROPERTY = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# Big enough that the loop cannot send it at once: it is still pending
# when what follows it is queued (checked with postwrite).
BLOB = pattern(16 * MiB, 5)


class ProtocolError(Exception):
    """What the test translators raise when the peer breaks their protocol."""


class Bracket(TranslatorBase):
    """A translator whose every effect is visible on the wire (see the module doc)."""

    def __init__(self, cid: int, calls: Recorder | None = None) -> None:
        self.cid = cid
        self.calls = calls
        self.alert = b""
        self.raised: list[ProtocolError] = []

    def _note(self, kind: str, payload: Any = None) -> None:
        if self.calls is not None:
            self.calls.add(kind, self.cid, payload)

    def _raise(self, why: str) -> None:
        self.alert = b"ALERT"
        e = ProtocolError(why)
        self.raised.append(e)
        raise e

    def start(self) -> bytes:
        self._note("start")
        return b"HELLO"

    def receive(self, wire: bytes) -> tuple[bytes, bytes]:
        self._note("receive", wire)
        plain, reply = bytearray(), bytearray()
        for part in _CONTROL.split(wire):
            if part == PING:
                reply += b"PONG"
            elif part == END:
                self.ended = True
                break
            elif part == FAIL:
                self._raise("the peer sent FAIL")
            else:
                plain += part
        return bytes(plain), bytes(reply)

    def send(self, plain: bytes) -> bytes:
        self._note("send", plain)
        if plain == b"explode":
            self._raise("cannot send 'explode'")
        return b"<" + plain + b">"

    def close(self) -> bytes:
        self._note("close")
        return b"BYE"


def bracketed(rec: Recorder | None = None, calls: Recorder | None = None,
              should: Callable[[int, evio.Info], bool] | None = None,
              made: dict[int, Bracket] | None = None, **extra: Any) -> evio.Events:
    """An echo server (see `echo_events`) translated with `Bracket`."""

    def factory(cid: int, info: evio.Info) -> Bracket:
        tr = Bracket(cid, calls)
        if made is not None:
            made[cid] = tr
        return tr

    return evio.translate(echo_events(rec, **extra), should, factory)


def max_pending(seen: dict[int, int]) -> Callable[[int, int, int], None]:
    """A postwrite that records the most output ever left pending, per id."""

    def postwrite(cid: int, n: int, remaining: int) -> None:
        seen[cid] = max(seen.get(cid, 0), remaining)

    return postwrite


def keep_reading(rec: Recorder) -> Callable[[int, evio.Info], evio.Options]:
    """An opened that records, and lifts the high-water mark (REL-1) so that the loop
    goes on reading while a big answer is pending."""

    def opened(cid: int, info: evio.Info) -> evio.Options:
        rec.add("opened", cid, info)
        return evio.Options(high_water=1 << 30, low_water=0)

    return opened


def has_calls(rec: Recorder, kind: str, n: int) -> bool:
    return len(rec.of(kind)) >= n


def evio_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [x for x in caplog.records if x.name == "evio" and x.levelno >= level]


# ------------------------------------------------------------------ TR-1


@pytest.mark.rule("TR-1")
def test_translate_returns_a_translated_copy_and_leaves_the_original(poller: str) -> None:
    ev = echo_events()
    tev = evio.translate(ev, None, lambda cid, info: Bracket(cid))
    assert isinstance(tev, evio.Events) and tev is not ev
    assert ev.translation is None and tev.translation is not None
    assert (tev.opened, tev.data, tev.closed) == (ev.opened, ev.data, ev.closed)
    for should in (None, lambda cid, info: True):
        with pytest.raises(ValueError):
            evio.translate(tev, should, lambda cid, info: Bracket(cid))
    assert ev.translation is None

    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        c.sendall(b"plain")
        assert recv_exactly(c, 5) == b"plain"
    with running(tev, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        c.sendall(b"plain")
        assert recv_exactly(c, 12) == b"HELLO<plain>"
    # The original can still be translated, on its own terms.
    again = evio.translate(ev, lambda cid, info: False, lambda cid, info: Bracket(cid))
    with running(again, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        c.sendall(b"plain")
        assert recv_exactly(c, 5) == b"plain"


# ------------------------------------------------------------------ TR-2


@pytest.mark.rule("TR-2", "TR-3")
def test_should_once_per_connection_before_opened_and_factory_only_when_chosen(
    poller: str, addr: str
) -> None:
    rec = Recorder()

    def should(cid: int, info: evio.Info) -> bool:
        rec.add("should", cid, info)
        return info.addr_index == 0

    def factory(cid: int, info: evio.Info) -> Bracket:
        rec.add("factory", cid, info)
        return Bracket(cid, rec)

    def opened(cid: int, info: evio.Info) -> bytes:
        rec.add("opened", cid, info)
        return b"greeting"

    ev = evio.translate(echo_events(rec, opened=opened), should, factory)
    with running(ev, addr, "tcp4://127.0.0.1:0", poller=poller) as r:
        a = r.connect(0)
        # start()'s bytes go first, then opened's output through send.
        assert recv_exactly(a, 15) == b"HELLO<greeting>"
        b = r.connect(1)
        assert recv_exactly(b, 8) == b"greeting"
        a.sendall(b"x")
        assert recv_exactly(a, 3) == b"<x>"
        b.sendall(b"y")
        assert recv_exactly(b, 1) == b"y"
        ends = [a.getsockname(), b.getsockname()]
        wait_for(lambda: len(rec.of("data")) == 2, what="both data calls")
        ida, idb = rec.ids()
        a.close()
        b.close()
        wait_for(lambda: len(rec.of("closed")) == 2, what="both closed")

    assert rec.kinds(ida) == ["should", "factory", "start", "opened", "send", "receive",
                              "data", "send", "close", "closed"]
    assert rec.kinds(idb) == ["should", "opened", "data", "closed"]
    for cid, index, remote in ((ida, 0, ends[0]), (idb, 1, ends[1])):
        (asked,) = [i for k, c, i in rec.log if k == "should" and c == cid]
        (told,) = [i for k, c, i in rec.log if k == "opened" and c == cid]
        assert asked == told  # the same Info as opened gets
        assert asked.addr_index == index and asked.closing is False
        assert asked.local_addr == r.addrs[index]
        assert asked.remote_addr == remote
    (made,) = rec.of("factory")
    assert made[0] == ida and made[1].addr_index == 0


@pytest.mark.rule("TR-2", "LOOP-4", "LOOP-15")
def test_a_peer_gone_before_start_is_sent_still_sees_opened_before_closed(
    poller: str, addr: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    held, gate = threading.Event(), threading.Event()

    def data(cid: int, d: bytes) -> bytes | None:
        rec.add("data", cid, d)
        if d == b"hold":
            held.set()
            gate.wait(DEADLINE)  # the loop stands still while the next peer comes and goes
            return None
        return d

    with caplog.at_level(logging.ERROR, logger="evio"), \
            running(bracketed(rec, data=data), addr, poller=poller) as r:
        holder = r.connect()
        assert recv_exactly(holder, 5) == b"HELLO"
        try:
            holder.sendall(b"hold")
            assert held.wait(DEADLINE)
            gone = connect_to(r.addrs[0])  # queued: the loop is busy
            if gone.family != socket.AF_UNIX:
                gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            gone.close()  # a reset (tcp), or a dead peer (unix): start()'s write fails
        finally:
            gate.set()
        wait_for(lambda: rec.of("closed"), what="the gone peer's closed")
        ((cid, err),) = rec.of("closed")
    assert isinstance(err, OSError)  # the failed write: a reset, or a broken pipe
    assert rec.kinds(cid) == ["opened", "closed"]
    assert evio_records(caplog, logging.ERROR) == []  # the peer's doing, not a callback's


@pytest.mark.rule("TR-2")
def test_should_is_asked_for_dialed_connections_too(poller: str, addr: str) -> None:
    rec = Recorder()
    servers: list[evio.Server] = []

    def should(cid: int, info: evio.Info) -> bool:
        rec.add("should", cid, info)
        return info.addr_index == -1

    def opened(cid: int, info: evio.Info) -> bytes | None:
        rec.add("opened", cid, info)
        return b"hi" if info.addr_index == -1 else None

    def data(cid: int, d: bytes) -> None:
        rec.add("data", cid, bytes(d))

    ev = evio.translate(
        evio.Events(serving=servers.append, opened=opened, data=data), should,
        lambda cid, info: Bracket(cid, rec),
    )
    with running(ev, addr, poller=poller) as r:
        dialed = servers[0].dial(dial_text(r.addrs[0]))
        wait_for(lambda: len(rec.of("opened")) == 2, what="both ends opened")
        (accepted,) = [i for i in rec.ids() if i != dialed]
        wait_for(lambda: b"".join(data_calls(rec, accepted)) == b"HELLO<hi>",
                 what="the dialed end's start() and opened output")
    assert rec.kinds(dialed)[:4] == ["should", "start", "opened", "send"]
    assert rec.kinds(accepted)[:2] == ["should", "opened"]
    asked = dict(rec.of("should"))
    assert asked[dialed].addr_index == -1 and asked[accepted].addr_index == 0


@pytest.mark.rule("TR-2")
def test_udp_remotes_are_never_translated(poller: str) -> None:
    rec, calls = Recorder(), Recorder()

    def should(cid: int, info: evio.Info) -> bool:
        calls.add("should", cid, info)
        return True

    ev = evio.translate(echo_events(rec), should, lambda cid, info: Bracket(cid, calls))
    with running(ev, "tcp4://127.0.0.1:0", "udp4://127.0.0.1:0", poller=poller) as r:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.clients.append(u)
        u.settimeout(DEADLINE)
        u.sendto(b"datagram", r.addrs[1])
        assert u.recvfrom(100)[0] == b"datagram"
        t = r.connect(0)
        t.sendall(b"stream")
        assert recv_exactly(t, 13) == b"HELLO<stream>"
        u.sendto(b"again", r.addrs[1])
        assert u.recvfrom(100)[0] == b"again"
    opened = dict(rec.of("opened"))
    (udp_id,) = [i for i, info in opened.items() if info.addr_index == 1]
    (tcp_id,) = [i for i, info in opened.items() if info.addr_index == 0]
    assert [i for i, _ in calls.of("should")] == [tcp_id]
    assert calls.kinds(udp_id) == []
    assert data_calls(rec, udp_id) == [b"datagram", b"again"]


# ------------------------------------------------------------------ TR-3


@pytest.mark.rule("TR-3")
def test_unchosen_connections_echo_raw_bytes_beside_translated_ones(
    poller: str, addr: str
) -> None:
    rec, calls = Recorder(), Recorder()

    def opened(cid: int, info: evio.Info) -> evio.Options:
        rec.add("opened", cid, info)
        return evio.Options(reuse_input_buffer=True)

    def data(cid: int, d: Any) -> bytes:
        rec.add("data", cid, type(d))
        return bytes(d)

    ev = bracketed(rec, calls, should=lambda cid, info: info.addr_index == 1,
                   opened=opened, data=data)
    big = pattern(3 * MiB, 1)
    with running(ev, addr, "tcp4://127.0.0.1:0", poller=poller) as r:
        raw, chosen = r.connect(0), r.connect(1)
        assert recv_exactly(chosen, 5) == b"HELLO"
        for msg in (b"a", b"bc", b"\x01\x02\x03 are just bytes here"):
            raw.sendall(msg)
            assert recv_exactly(raw, len(msg)) == msg
            text = msg.replace(PING, b"").replace(END, b"").replace(FAIL, b"")
            chosen.sendall(text)
            assert recv_exactly(chosen, len(text) + 2) == b"<" + text + b">"

        def send_big() -> None:
            raw.sendall(big)

        t = threading.Thread(target=send_big)
        t.start()
        assert recv_exactly(raw, len(big)) == big
        t.join(DEADLINE)
    opened_ids = dict(rec.of("opened"))
    raw_id = next(i for i, info in opened_ids.items() if info.addr_index == 0)
    chosen_id = next(i for i, info in opened_ids.items() if info.addr_index == 1)
    # The unchosen connection gets the loop's reused view, as without translate.
    assert set(data_calls(rec, raw_id)) == {memoryview}
    assert calls.kinds(raw_id) == []
    assert "receive" in calls.kinds(chosen_id)


# ------------------------------------------------------------------ TR-4


@pytest.mark.rule("TR-4")
def test_receive_reply_is_sent_at_once_and_plain_goes_to_data(poller: str, addr: str) -> None:
    rec, calls = Recorder(), Recorder()
    with running(bracketed(rec, calls), addr, poller=poller) as r:
        c = r.connect()
        assert recv_exactly(c, 5) == b"HELLO"
        c.sendall(PING)
        assert recv_exactly(c, 4) == b"PONG"
        wait_for(lambda: len(calls.of("receive")) == 1, what="receive")
        c.sendall(b"ab" + PING)
        # The reply is written before data's output.
        assert recv_exactly(c, 8) == b"PONG<ab>"
        c.sendall(b"xyz")
        assert recv_exactly(c, 5) == b"<xyz>"
    (cid,) = rec.ids()
    # data is not called for a read that held no plaintext.
    assert data_calls(rec, cid) == [b"ab", b"xyz"]
    assert [w for _, w in calls.of("receive")] == [PING, b"ab" + PING, b"xyz"]


@pytest.mark.rule("TR-4", "TR-9")
def test_outputs_of_opened_data_and_wake_all_go_through_send_in_order(
    poller: str, addr: str
) -> None:
    rec, calls = Recorder(), Recorder()
    servers: list[evio.Server] = []
    woke: list[bool] = []

    def opened(cid: int, info: evio.Info) -> bytes:
        rec.add("opened", cid, info)
        return b"O"

    def data(cid: int, d: bytes | None) -> bytes:
        rec.add("data", cid, d)
        if d is None:
            return b"W"
        if d == b"wake":
            threading.Thread(target=lambda: woke.append(servers[0].wake(cid))).start()
        return b"D" + d

    ev = bracketed(rec, calls, opened=opened, data=data, serving=servers.append)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        assert recv_exactly(c, 8) == b"HELLO<O>"
        c.sendall(b"x")
        assert recv_exactly(c, 4) == b"<Dx>"
        c.sendall(b"wake")
        assert recv_exactly(c, 10) == b"<Dwake><W>"
    (cid,) = rec.ids()
    assert woke == [True]
    assert [p for _, p in calls.of("send")] == [b"O", b"Dx", b"Dwake", b"W"]
    assert data_calls(rec, cid) == [b"x", b"wake", None]


class Holding(Bracket):
    """Holds outputs back (send returns b"") and lets them go three at a time."""

    def __init__(self, cid: int) -> None:
        super().__init__(cid)
        self.held: list[bytes] = []

    def send(self, plain: bytes) -> bytes:
        self.held.append(plain)
        if len(self.held) < 3:
            return b""
        out = b"".join(b"<" + p + b">" for p in self.held)
        self.held.clear()
        return out


@pytest.mark.rule("TR-4")
def test_send_may_hold_output_back_and_order_is_kept(poller: str, addr: str) -> None:
    rec = Recorder()
    ev = evio.translate(echo_events(rec), None, lambda cid, info: Holding(cid))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        assert recv_exactly(c, 5) == b"HELLO"
        for i, msg in enumerate((b"1", b"2", b"3", b"4", b"5", b"6")):
            c.sendall(msg)
            wait_for(partial(has_calls, rec, "data", i + 1), what=f"data call {i + 1}")
        assert recv_exactly(c, 18) == b"<1><2><3><4><5><6>"


# ------------------------------------------------------------------ TR-5


@pytest.mark.rule("TR-5")
def test_close_bytes_follow_pending_output_on_close(poller: str, addr: str) -> None:
    rec = Recorder()
    pending: dict[int, int] = {}

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return BLOB, Action.CLOSE

    ev = bracketed(rec, data=data, postwrite=max_pending(pending))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        wait_for(lambda: rec.of("data"), what="data")
        time.sleep(0.1)  # not reading yet: what the kernel cannot take stays pending
        got = read_until_eof(c)
    (cid,) = rec.ids()
    assert pending[cid] > 0, "the output was never pending: the test proves nothing"
    assert got == b"HELLO<" + BLOB + b">BYE"
    assert errors_of(rec, cid) == [None]


@pytest.mark.rule("TR-5")
def test_close_bytes_follow_output_on_the_peers_end_of_stream(poller: str, addr: str) -> None:
    rec, calls = Recorder(), Recorder()
    with running(bracketed(rec, calls), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"abc")
        c.shutdown(socket.SHUT_WR)
        got = read_until_eof(c)
        wait_for(lambda: rec.of("closed"), what="closed")
    (cid,) = rec.ids()
    assert got == b"HELLO<abc>BYE"
    assert errors_of(rec, cid) == [None]
    assert calls.kinds(cid).count("close") == 1


@pytest.mark.rule("TR-5")
def test_close_bytes_follow_pending_output_when_data_raises(
    poller: str, addr: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    pending: dict[int, int] = {}
    boom = RuntimeError("data failed")

    def data(cid: int, d: bytes) -> bytes:
        rec.add("data", cid, d)
        if d == b"boom":
            raise boom
        return BLOB

    ev = bracketed(rec, data=data, postwrite=max_pending(pending), opened=keep_reading(rec))
    with caplog.at_level(logging.ERROR, logger="evio"), running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"big")
        wait_for(lambda: len(rec.of("data")) == 1, what="the first data")
        c.sendall(b"boom")
        # It raises while the first answer is still pending: we have read nothing yet.
        wait_for(lambda: len(rec.of("data")) == 2, what="the second data")
        got = read_until_eof(c)
    (cid,) = rec.ids()
    assert pending[cid] > 0
    assert got == b"HELLO<" + BLOB + b">BYE"
    assert errors_of(rec, cid) == [boom]
    assert any(x.exc_info and x.exc_info[1] is boom for x in evio_records(caplog, logging.ERROR))


@pytest.mark.rule("TR-5")
def test_close_bytes_go_with_the_last_write_on_shutdown(poller: str, addr: str) -> None:
    rec, calls = Recorder(), Recorder()

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return b"last", Action.SHUTDOWN

    with running(bracketed(rec, calls, data=data), addr, poller=poller, stoppable=False) as r:
        c = r.connect()
        c.sendall(b"stop")
        r.join()
        got = read_until_eof(c)
    (cid,) = rec.ids()
    assert got == b"HELLO<last>BYE"
    assert errors_of(rec, cid) == [None]
    assert calls.kinds(cid).count("close") == 1


# ------------------------------------------------------------------ TR-6


@pytest.mark.rule("TR-6", "TR-5")
def test_ended_finishes_like_close_then_closed_none(poller: str, addr: str) -> None:
    rec, calls = Recorder(), Recorder()
    with running(bracketed(rec, calls), addr, poller=poller) as r:
        other = r.connect()
        c = r.connect()
        c.sendall(b"abc" + END + b"never seen")
        got = read_until_eof(c)
        other.sendall(b"still here")
        assert recv_exactly(other, 17) == b"HELLO<still here>"
        wait_for(lambda: rec.of("closed"), what="closed")
    _, cid = rec.ids()
    assert got == b"HELLO<abc>BYE"
    assert data_calls(rec, cid) == [b"abc"]
    assert errors_of(rec, cid) == [None]
    assert rec.kinds(cid) == ["opened", "data", "closed"]


def _leaves_while_the_loop_stands_still(fam: str, tmp_path: Path, poller: str,
                                        last: bytes) -> tuple[Recorder, int]:
    """A peer of a `Bracket` echo server sends ``last`` and closes while the
    loop stands still (another connection's ``data`` blocks), so the loop
    reads it all at once and finds the peer gone; its end must be clean,
    ``closed(id, None)``. Returns what happened and the leaving peer's id."""
    rec = Recorder()
    held, gate = threading.Event(), threading.Event()

    def data(cid: int, d: bytes) -> bytes | None:
        rec.add("data", cid, d)
        if d == b"hold":
            held.set()
            gate.wait(DEADLINE)  # the loop stands still while the peer leaves
            return None
        return d

    with running(bracketed(rec, data=data), listen_address(fam, tmp_path), poller=poller) as r:
        holder, c = r.connect(), r.connect()
        assert recv_exactly(holder, 5) == b"HELLO" and recv_exactly(c, 5) == b"HELLO"
        try:
            holder.sendall(b"hold")
            assert held.wait(DEADLINE)
            c.sendall(last)
            c.close()  # gone without waiting for the answer, as TLS peers do
        finally:
            gate.set()
        wait_for(lambda: len(rec.of("closed")) == 1, what="closed")
        _, cid = rec.ids()
        assert rec.of("closed") == [(cid, None)]  # before the shutdown closes the holder
    return rec, cid


@pytest.mark.rule("TR-6")
@pytest.mark.parametrize("fam", ["tcp4", "tcp6", "unix"])
def test_ended_with_the_peer_already_gone_is_still_a_clean_end(
    poller: str, fam: str, tmp_path: Path
) -> None:
    _leaves_while_the_loop_stands_still(fam, tmp_path, poller, END)


@pytest.mark.rule("TR-6", "TR-4")
@pytest.mark.parametrize("fam", ["tcp4", "unix"])
def test_the_last_read_of_a_peer_already_gone_still_reaches_data(
    poller: str, fam: str, tmp_path: Path
) -> None:
    # The read that ends the stream carries plaintext and asks for a reply
    # the peer is no longer there to take: data still gets the plaintext,
    # and the end is clean (a TLS 1.3 client that sends its Finished, its
    # data and close_notify at once, then closes, makes the loop do this).
    rec, cid = _leaves_while_the_loop_stands_still(fam, tmp_path, poller,
                                                   b"last words" + PING + END)
    assert (cid, b"last words") in rec.of("data")


@pytest.mark.rule("TR-6", "TR-5", "TLS-4")
@pytest.mark.parametrize("fam", ["tcp4", "tcp6", "unix"])
def test_a_peer_that_closes_without_a_goodbye_is_an_orderly_end(
    poller: str, fam: str, tmp_path: Path
) -> None:
    # Its end of stream finishes the connection; the loop's own goodbye then
    # meets a closed socket (at once on unix): that is not an error either.
    rec = Recorder()
    with running(bracketed(rec), listen_address(fam, tmp_path), poller=poller) as r:
        c = r.connect()
        assert recv_exactly(c, 5) == b"HELLO"
        c.sendall(b"hi")
        assert recv_exactly(c, 4) == b"<hi>"
        c.close()
        wait_for(lambda: rec.of("closed"), what="closed")
    assert rec.of("closed") == [(1, None)]


# ------------------------------------------------------------------ TR-7


@pytest.mark.rule("TR-7")
def test_receive_raising_sends_the_alert_after_pending_output(
    poller: str, addr: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec, calls = Recorder(), Recorder()
    made: dict[int, Bracket] = {}
    pending: dict[int, int] = {}

    def data(cid: int, d: bytes) -> bytes:
        rec.add("data", cid, d)
        return BLOB if d == b"big" else d

    ev = bracketed(rec, calls, made=made, data=data, postwrite=max_pending(pending),
                   opened=keep_reading(rec))
    with caplog.at_level(logging.DEBUG, logger="evio"), running(ev, addr, poller=poller) as r:
        other = r.connect()
        assert recv_exactly(other, 5) == b"HELLO"
        c = r.connect()
        c.sendall(b"big")
        wait_for(lambda: len(rec.of("data")) == 1, what="the first data")
        c.sendall(FAIL)
        # It fails while the answer is still pending: we have read nothing yet.
        wait_for(lambda: len(made) == 2 and made[max(made)].raised, what="the failure")
        got = read_until_eof(c)
        other.sendall(b"fine")
        assert recv_exactly(other, 6) == b"<fine>"
        wait_for(lambda: rec.of("closed"), what="closed")
    _, cid = rec.ids()
    assert pending[cid] > 0
    # The alert follows the pending output; close() is not called after a failure.
    assert got == b"HELLO<" + BLOB + b">ALERT"
    assert "close" not in calls.kinds(cid)
    (err,) = errors_of(rec, cid)
    assert err is made[cid].raised[0]
    assert evio_records(caplog, logging.INFO) == []  # DEBUG only: the peer's doing
    assert any(x.levelno == logging.DEBUG for x in evio_records(caplog, logging.DEBUG))


@pytest.mark.rule("TR-7")
def test_send_raising_sends_the_alert_and_closes_with_it(
    poller: str, addr: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    made: dict[int, Bracket] = {}
    with caplog.at_level(logging.DEBUG, logger="evio"), \
            running(bracketed(rec, made=made), addr, poller=poller) as r:
        c, other = r.connect(), r.connect()
        c.sendall(b"ok")
        assert recv_exactly(c, 9) == b"HELLO<ok>"
        c.sendall(b"explode")
        assert read_until_eof(c) == b"ALERT"
        other.sendall(b"fine")
        assert recv_exactly(other, 11) == b"HELLO<fine>"
        wait_for(lambda: rec.of("closed"), what="closed")
    cid = rec.ids()[0]
    (err,) = errors_of(rec, cid)
    assert isinstance(err, ProtocolError) and err is made[cid].raised[0]
    assert evio_records(caplog, logging.INFO) == []


# ------------------------------------------------------------------ TR-8


@pytest.mark.rule("TR-8", "EV-21")
@pytest.mark.parametrize("where", ["should", "factory"])
def test_should_or_factory_raising_closes_that_connection_unannounced(
    poller: str, addr: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    boom = RuntimeError(f"{where} failed")
    asked: list[int] = []

    def should(cid: int, info: evio.Info) -> bool:
        asked.append(cid)
        if where == "should" and len(asked) == 2:
            raise boom
        return True

    def factory(cid: int, info: evio.Info) -> Bracket:
        if where == "factory" and len(asked) == 2:
            raise boom
        return Bracket(cid)

    ev = evio.translate(echo_events(rec), should, factory)
    with caplog.at_level(logging.ERROR, logger="evio"), running(ev, addr, poller=poller) as r:
        good = r.connect()
        assert recv_exactly(good, 5) == b"HELLO"
        bad = r.connect()
        assert read_until_eof(bad) == b""
        good.sendall(b"fine")
        assert recv_exactly(good, 6) == b"<fine>"
        third = r.connect()
        third.sendall(b"3")
        assert recv_exactly(third, 8) == b"HELLO<3>"
    # opened was never called for the failed one, so closed is not either.
    assert asked[1] not in rec.ids()
    assert asked[1] not in [i for i, _ in rec.of("closed")]
    assert sorted(i for i, _ in rec.of("closed")) == sorted(rec.ids())
    assert any(x.exc_info and x.exc_info[1] is boom for x in evio_records(caplog, logging.ERROR))


@pytest.mark.rule("TR-8")
def test_detach_of_a_translated_connection_is_a_type_error(
    poller: str, addr: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    detached: list[tuple[int, Any]] = []

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return Action.DETACH

    def on_detached(cid: int, conn: Any) -> None:
        detached.append((cid, conn))

    ev = bracketed(rec, should=lambda cid, info: info.addr_index == 0, data=data,
                   detached=on_detached)
    with caplog.at_level(logging.ERROR, logger="evio"), \
            running(ev, addr, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect(0)
        c.sendall(b"detach me")
        assert read_until_eof(c) == b"HELLO" + b"BYE"
        plain = r.connect(1)  # not translated: it detaches
        plain.sendall(b"detach me")
        wait_for(lambda: detached, what="detached")
        with detached[0][1] as conn:
            conn.sendall(b"owned")
            assert recv_exactly(plain, 5) == b"owned"
    tid, pid = rec.ids()
    (err,) = errors_of(rec, tid)
    assert isinstance(err, TypeError)
    assert [cid for cid, _ in detached] == [pid]
    assert any(x.exc_info and x.exc_info[1] is err for x in evio_records(caplog, logging.ERROR))


# ------------------------------------------------------------------ TR-9


@pytest.mark.rule("TR-9")
def test_wake_from_another_thread_goes_through_send(poller: str, addr: str) -> None:
    rec = Recorder()
    servers: list[evio.Server] = []
    returned: list[bool] = []

    def data(cid: int, d: bytes | None) -> bytes | None:
        rec.add("data", cid, d)
        if d is None:
            return b"woken"
        threading.Thread(target=lambda: returned.append(servers[0].wake(cid))).start()
        return None

    with running(bracketed(rec, data=data, serving=servers.append), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"wake me")
        assert recv_exactly(c, 12) == b"HELLO<woken>"
    assert returned == [True]
    assert [d for _, d in rec.of("data")] == [b"wake me", None]


# ------------------------------------------------------------------ TR-10


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


# ------------------------------------------------------------------ ZLIB


class ZlibClient:
    """The peer of a `ZlibTranslator`: the zlib module over a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.c = zlib.compressobj()
        self.d = zlib.decompressobj()
        self.got = bytearray()

    def send(self, plain: bytes) -> None:
        self.sock.sendall(self.c.compress(plain) + self.c.flush(zlib.Z_SYNC_FLUSH))

    def finish(self) -> None:
        self.sock.sendall(self.c.flush(zlib.Z_FINISH))

    def recv(self, n: int) -> bytes:
        """Exactly ``n`` plaintext bytes (each reply decompresses as it comes)."""
        while len(self.got) < n:
            wire = self.sock.recv(1 << 20)
            if not wire:
                raise AssertionError(f"end of stream after {len(self.got)} of {n} bytes")
            self.got += self.d.decompress(wire)
        out = bytes(self.got[:n])
        del self.got[:n]
        return out

    def rest(self) -> bytes:
        """Everything up to the server's end of stream."""
        self.got += self.d.decompress(recv_all(self.sock))
        out = bytes(self.got)
        self.got.clear()
        return out


def zlib_events(rec: Recorder, **kw: Any) -> evio.Events:
    return evio.translate(echo_events(rec, **kw.pop("extra", {})), None,
                          lambda cid, info: evio.ZlibTranslator(**kw))


@pytest.fixture
def zlib_echo(poller: str, addr: str) -> Iterator[tuple[Running, Recorder]]:
    """One zlib echo server for all the examples of a test."""
    rec = Recorder()
    with running(zlib_events(rec), addr, poller=poller) as r:
        yield r, rec


compressible = st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=8),
                         st.integers(1, 40000))


@pytest.mark.rule("ZLIB-1", "TR-6")
@PROPERTY
@given(messages=st.lists(st.one_of(st.binary(min_size=1, max_size=5000), compressible),
                         max_size=8))
def test_zlib_echo_of_any_data(zlib_echo: tuple[Running, Recorder],
                               messages: list[bytes]) -> None:
    r, rec = zlib_echo
    c = ZlibClient(r.connect())
    for msg in messages:
        c.send(msg)
        # Sync-flushed: the reply decompresses as soon as it arrives.
        assert c.recv(len(msg)) == msg
    c.finish()
    assert c.rest() == b""
    assert c.d.eof and c.d.unused_data == b""
    c.sock.close()
    cid = rec.ids()[-1]
    wait_for(lambda: errors_of(rec, cid), what="closed")
    assert errors_of(rec, cid) == [None]
    assert b"".join(data_calls(rec, cid)) == b"".join(messages)


@pytest.mark.rule("ZLIB-1", "TR-6", "TR-5")
def test_zlib_ends_of_stream_both_ways(poller: str, addr: str) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return (b"bye", Action.CLOSE) if d == b"close" else d

    with running(zlib_events(rec, extra={"data": data}), addr, poller=poller) as r:
        # The client ends its stream: the server ends the connection, and its own stream.
        a = ZlibClient(r.connect())
        a.send(b"hello " * 1000)
        assert a.recv(6000) == b"hello " * 1000
        a.finish()
        assert a.rest() == b""
        assert a.d.eof
        # The server closes: close() ends its stream.
        b = ZlibClient(r.connect())
        b.send(b"close")
        assert b.rest() == b"bye"
        assert b.d.eof
        wait_for(lambda: len(rec.of("closed")) == 2, what="both closed")
    assert [e for _, e in rec.of("closed")] == [None, None]


@pytest.mark.rule("ZLIB-2", "TR-7")
def test_zlib_corrupt_input_is_a_translator_error(
    poller: str, addr: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    with caplog.at_level(logging.DEBUG, logger="evio"), \
            running(zlib_events(rec), addr, poller=poller) as r:
        a = r.connect()
        a.sendall(b"this is not a zlib stream")
        assert read_until_eof(a) == b""
        b = ZlibClient(r.connect())
        b.send(b"good")
        assert b.recv(4) == b"good"
        b.sock.sendall(b"\xff" * 64)  # garbage in the middle of a good stream
        assert read_until_eof(b.sock) == b""
        ok = ZlibClient(r.connect())
        ok.send(b"still fine")
        assert ok.recv(10) == b"still fine"
        wait_for(lambda: len(rec.of("closed")) == 2, what="two closed")
    errs = [e for _, e in rec.of("closed")]
    assert len(errs) == 3 and all(isinstance(e, zlib.error) for e in errs[:2])
    assert evio_records(caplog, logging.INFO) == []


@cache
def zip_bomb() -> bytes:
    """64 MiB of zeros, compressed: about 64 KiB on the wire."""
    c = zlib.compressobj(9)
    return c.compress(bytes(64 * MiB)) + c.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.rule("ZLIB-2", "TR-7")
def test_zlib_bomb_is_refused(poller: str) -> None:
    rec = Recorder()
    bomb = zip_bomb()
    sizes: list[int] = []

    def data(cid: int, d: bytes) -> None:
        rec.add("data", cid, None)
        sizes.append(len(d))

    with running(zlib_events(rec, extra={"data": data}), "tcp4://127.0.0.1:0",
                 poller=poller) as r:
        s = r.connect()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            s.sendall(bomb)
        assert read_until_eof(s) == b""
        wait_for(lambda: rec.of("closed"), what="closed")
    ((_, err),) = rec.of("closed")
    assert isinstance(err, ValueError)
    assert all(n <= 16 * MiB for n in sizes)


@pytest.mark.rule("ZLIB-2")
def test_zlib_output_held_back_past_max_plain_is_refused() -> None:
    # All input consumed, one byte more than allowed still inside zlib: the
    # stream is cut just before its sync marker, so nothing is left unread.
    limit = 65536
    c = zlib.compressobj(9)
    wire = (c.compress(b"a" * (limit + 1)) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(zlib.decompressobj().decompress(wire)) == limit + 1
    tr = evio.ZlibTranslator(max_plain=limit)
    with pytest.raises(ValueError, match=str(limit)):
        tr.receive(wire)
    ok = evio.ZlibTranslator(max_plain=limit + 1)
    plain, _ = ok.receive(wire)
    assert len(plain) <= limit + 1


@pytest.mark.rule("ZLIB-2", "ZLIB-1")
def test_zlib_translator_sans_io() -> None:
    # Output is sync-flushed: each piece decompresses on its own.
    tr = evio.ZlibTranslator(level=1)
    d = zlib.decompressobj()
    assert d.decompress(tr.send(b"one")) == b"one"
    assert d.decompress(tr.send(b"two")) == b"two"
    assert d.decompress(tr.close()) == b"" and d.eof
    # Input that expands past max_plain in one read raises.
    c = zlib.compressobj()
    wire = c.compress(bytes(4096)) + c.flush()
    assert evio.ZlibTranslator(max_plain=4096).receive(wire) == (bytes(4096), b"")
    with pytest.raises(ValueError):
        evio.ZlibTranslator(max_plain=4095).receive(wire)
    with pytest.raises(zlib.error):
        evio.ZlibTranslator().receive(b"\x00\x01not zlib")
    tr = evio.ZlibTranslator()
    assert tr.receive(wire[:10])[0] + tr.receive(wire[10:])[0] == bytes(4096)
    assert tr.ended

