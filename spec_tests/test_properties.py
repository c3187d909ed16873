"""Properties that hold for any input (hypothesis), over every poller and family.

* any bytes, in any chunking, come back byte for byte (LOOP-8, LOOP-11);
* any pipelining of a line protocol gives the same replies (LOOP-11, EV-15);
* any number of concurrent clients each get exactly their own bytes;
* every connection's events are ``opened data* closed`` (LOOP-4, LOOP-15).
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pytest
from harness import Recorder, Running, echo_events, recv_all, running, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from implementation import evio

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def echo(poller: str, addr: str) -> Iterator[tuple[Running, Recorder]]:
    """One recording echo server for all the examples of a test."""
    rec = Recorder()
    with running(echo_events(rec), addr, poller=poller) as r:
        yield r, rec


def check_event_order(rec: Recorder) -> None:
    """Every connection so far: opened, then data*, then closed."""
    wait_for(lambda: len(rec.of("closed")) == len(rec.of("opened")), what="every closed")
    for cid in rec.ids():
        kinds = rec.kinds(cid)
        assert kinds[0] == "opened" and kinds[-1] == "closed", kinds
        assert set(kinds[1:-1]) <= {"data"}, kinds


def received_by(rec: Recorder, cid: int) -> bytes:
    return b"".join(p for i, p in rec.of("data") if i == cid)


def send_and_finish(c: socket.socket, chunks: list[bytes]) -> bytes:
    for chunk in chunks:
        c.sendall(chunk)
    c.shutdown(socket.SHUT_WR)
    got = recv_all(c)
    c.close()
    return got


@pytest.mark.rule("LOOP-8", "LOOP-11", "LOOP-4", "LOOP-15")
@PROPERTY
@given(chunks=st.lists(st.binary(max_size=4096), max_size=24))
def test_any_bytes_any_chunking(echo: tuple[Running, Recorder], chunks: list[bytes]) -> None:
    r, rec = echo
    c = r.connect()
    r.clients.remove(c)
    assert send_and_finish(c, chunks) == b"".join(chunks)
    check_event_order(rec)
    assert received_by(rec, rec.ids()[-1]) == b"".join(chunks)


def line_server(rec: Recorder) -> evio.Events:
    """Answers each line with its length and its reverse: a toy pipelined protocol."""
    streams: dict[int, evio.InputStream] = {}

    def opened(cid: int, info: evio.Info) -> None:
        streams[cid] = evio.InputStream()
        rec.add("opened", cid)

    def data(cid: int, d: bytes) -> bytes:
        rec.add("data", cid, d)
        buf = streams[cid].begin(d)
        *lines, rest = buf.split(b"\n")
        streams[cid].end(rest)
        return b"".join(b"%d:%s\n" % (len(line), line[::-1]) for line in lines)

    def closed(cid: int, err: BaseException | None) -> None:
        del streams[cid]
        rec.add("closed", cid, err)

    return evio.Events(opened=opened, data=data, closed=closed)


@pytest.fixture
def lines(poller: str, addr: str) -> Iterator[tuple[Running, Recorder]]:
    rec = Recorder()
    with running(line_server(rec), addr, poller=poller) as r:
        yield r, rec


@pytest.mark.rule("LOOP-11", "EV-15")
@PROPERTY
@given(
    msgs=st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=12),
)
def test_any_pipelining(lines: tuple[Running, Recorder], msgs: list[bytes],
                        cuts: list[int]) -> None:
    r, rec = lines
    stream = b"".join(m + b"\n" for m in msgs)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    c = r.connect()
    r.clients.remove(c)
    expected = b"".join(b"%d:%s\n" % (len(m), m[::-1]) for m in msgs)
    assert send_and_finish(c, chunks) == expected
    check_event_order(rec)


@pytest.mark.rule("LOOP-8", "LOOP-15")
@PROPERTY
@given(payloads=st.lists(st.binary(max_size=3000), min_size=1, max_size=24),
       piece=st.integers(min_value=1, max_value=1500))
def test_any_number_of_concurrent_clients(
    echo: tuple[Running, Recorder], payloads: list[bytes], piece: int
) -> None:
    r, rec = echo
    clients = [r.connect() for _ in payloads]
    for c in clients:
        r.clients.remove(c)
    try:
        # Interleave: a piece of each client's payload in turn.
        offset = 0
        while offset < max(len(p) for p in payloads):
            for c, p in zip(clients, payloads, strict=True):
                if offset < len(p):
                    c.sendall(p[offset : offset + piece])
            offset += piece
        for c in clients:
            c.shutdown(socket.SHUT_WR)
        got = [recv_all(c) for c in clients]
    finally:
        for c in clients:
            c.close()
    assert got == payloads
    check_event_order(rec)
