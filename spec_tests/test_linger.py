"""Lingering close: a reply returned with CLOSE is not cut by a reset.

The peer sends 10 bytes the server never reads while a 200 KB reply that
was returned with ``Action.CLOSE`` is still on its way. Closing a socket
with unread input makes TCP reset the connection and drop the output the
kernel has not transmitted; the lingering close (LOOP-14) shuts the write
side, discards what arrives and closes only once nothing of the reply is
unacknowledged -- so the reply arrives whole, on every poller and TCP
family. A peer that never reads, or never stops sending, holds the socket
for ``Options.linger_timeout`` / ``linger_bytes`` and no longer.
``Action.ABORT`` closes at once with a reset (TIMER-4).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from harness import Recorder, echo_events, read_to_end, running, small_socket, wait_for
from implementation import evio

pytestmark = pytest.mark.feature("linger")

Action = evio.Action

REPLY = bytes(range(256)) * 800  # 204,800 bytes




@pytest.mark.rule("LOOP-14")
@pytest.mark.parametrize("family", ["tcp4", "tcp6"])
def test_a_reply_with_close_arrives_whole_though_the_peer_sent_more(
        poller: str, family: str) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return REPLY, Action.CLOSE

    host = "127.0.0.1" if family == "tcp4" else "[::1]"
    with running(echo_events(rec, data=data), f"{family}://{host}:0", poller=poller) as r:
        for _ in range(3):
            c = small_socket(r.addrs[0])
            r.clients.append(c)
            c.sendall(b"GET")
            first = c.recv(1)  # the reply is on its way: the server reads no more
            c.sendall(b"0123456789")  # 10 bytes it will never read
            time.sleep(0.05)
            rest, was_reset = read_to_end(c)
            got = first + rest
            assert not was_reset, f"reset after {len(got)} of {len(REPLY)} bytes"
            assert got == REPLY, f"{len(got)} of {len(REPLY)} bytes"
        wait_for(lambda: len(rec.of("closed")) == 3, what="closed")
    assert all(err is None for _, err in rec.of("closed"))


@pytest.mark.rule("LOOP-14")
def test_a_peer_that_never_reads_holds_the_socket_only_for_linger_timeout(
        poller: str) -> None:
    rec = Recorder()
    times: dict[str, float] = {}

    def data(cid: int, d: bytes) -> Any:
        times["close"] = time.monotonic()
        return REPLY, Action.CLOSE

    def closed(cid: int, err: BaseException | None) -> None:
        times["closed"] = time.monotonic()
        rec.add("closed", cid, err)

    ev = echo_events(rec, data=data, closed=closed,
                     opened=lambda cid, info: evio.Options(linger_timeout=0.5))
    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = small_socket(r.addrs[0], size=4096)
        r.clients.append(c)
        c.sendall(b"GET")
        wait_for(lambda: "closed" in times, what="closed while the peer never reads")
    took = times["closed"] - times["close"]
    assert 0.4 < took < 8, f"closed {took:.2f} s after CLOSE with linger_timeout=0.5"


@pytest.mark.rule("LOOP-14")
def test_a_peer_that_never_stops_sending_is_cut_off_after_linger_bytes(poller: str) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> Any:
        return b"bye", Action.CLOSE

    ev = echo_events(rec, data=data,
                     opened=lambda cid, info: evio.Options(linger_timeout=60,
                                                           linger_bytes=100_000))
    with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
        c = r.connect()
        c.sendall(b"GET")
        assert c.recv(3) == b"bye"
        started = time.monotonic()
        c.settimeout(0.2)
        sent = 0
        while not rec.of("closed") and time.monotonic() - started < 20:
            try:
                sent += c.send(b"x" * 65536)
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                break  # reset: the server gave up
        wait_for(lambda: rec.of("closed"), what="closed")
    assert time.monotonic() - started < 20
    assert sent > 100_000


@pytest.mark.rule("TIMER-4")
def test_action_abort_drops_the_output_and_resets(poller: str, addr: str) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> Any:
        return b"never sent", Action.ABORT

    with running(echo_events(rec, data=data), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"hi")
        got, was_reset = read_to_end(c)
        wait_for(lambda: rec.of("closed") == [(1, None)], what="closed")
    assert got == b""
    if not addr.startswith("unix"):
        assert was_reset


@pytest.mark.rule("LOOP-14")
@pytest.mark.parametrize("bad", [{"linger_timeout": -1}, {"linger_timeout": float("inf")},
                                 {"linger_bytes": -1}, {"linger_bytes": 1.5},
                                 {"linger_timeout": True}])
def test_bad_linger_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="linger"):
        evio.Options(**bad)
