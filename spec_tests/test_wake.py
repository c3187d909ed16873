"""Conformance: wake (docs/spec/wake.md), over every poller and family.

``server.wake(id)`` is the one way another thread gets the loop's attention.
These tests check what it returns (WAKE-1), that a wake that returned
``True`` is never lost (WAKE-2), that what the woken ``data`` returns is
queued behind pending output (WAKE-3), that a connection which stopped
reading is not woken (WAKE-4), and that wakes leave no busy loop behind
(WAKE-6). The wake of a dial still connecting (WAKE-5) is in
``test_dial.py``, beside the other dial tests.
"""

from __future__ import annotations

import itertools
import random
import socket
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from harness import (
    CountingPoller,
    Recorder,
    echo_events,
    pattern,
    recv_all,
    recv_exactly,
    running,
    stopped_by,
    thread_cpu_seconds,
    wait_for,
)
from implementation import evio

Action = evio.Action
# A target without the interest constants (it lacks custom pollers) still collects.
READ, WRITE = getattr(evio, "READ", 1), getattr(evio, "WRITE", 4)

MiB = 1 << 20


BIG = pattern(16 * MiB, 3)


def serve_thread_id(r: Any) -> int:
    """The kernel thread id of the harness's serving thread."""
    tid = r.thread.native_id
    assert tid is not None and r.thread.name == "evio-serve"
    return int(tid)


# ------------------------------------------------------------ return value


@pytest.mark.rule("WAKE-1", "WAKE-2")
def test_wake_from_another_thread_answers_with_data_none(poller: str, addr: str) -> None:
    rec = Recorder()
    results: dict[int, bytes] = {}
    returned: list[bool] = []

    def work(server: evio.Server, cid: int, request: bytes) -> None:
        results[cid] = request.upper()
        returned.append(server.wake(cid))

    servers: list[evio.Server] = []

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        if d is None:
            return results.pop(cid)
        threading.Thread(target=work, args=(servers[0], cid, d)).start()
        return None

    ev = echo_events(rec, data=data, serving=servers.append)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"slow work")
        assert recv_exactly(c, 9) == b"SLOW WORK"
    assert returned == [True]
    assert rec.kinds(1) == ["opened", "data", "data", "closed"]
    assert [d for _, d in rec.of("data")] == [b"slow work", None]


@pytest.mark.rule("WAKE-1", "WAKE-2")
def test_wake_from_the_loop_thread_itself(poller: str, addr: str) -> None:
    rec = Recorder()
    servers: list[evio.Server] = []
    returned: list[tuple[int, bool]] = []

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        server = servers[0]
        if d is None:
            return b"woken %d;" % cid
        if d.startswith(b"wake "):
            target = int(d.split()[1])
            returned.append((target, server.wake(target)))
        return None

    ev = echo_events(rec, data=data, serving=servers.append)
    with running(ev, addr, poller=poller) as r:
        a, b = r.connect(), r.connect()
        wait_for(lambda: len(rec.ids()) == 2, what="both connections opened")
        a.sendall(b"wake 1")  # itself
        assert recv_exactly(a, 8) == b"woken 1;"
        a.sendall(b"wake 2")  # another connection
        assert recv_exactly(b, 8) == b"woken 2;"
    assert returned == [(1, True), (2, True)]
    loop_threads = rec.threads
    assert len(loop_threads) == 1 and threading.get_ident() not in loop_threads


@pytest.mark.rule("WAKE-1")
def test_wake_is_false_for_unknown_and_closed_ids_and_after_stop(
    poller: str, addr: str
) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        return d

    with running(echo_events(rec, data=data), addr, poller=poller) as r:
        server = r.server
        assert server is not None
        assert server.wake(1) is False  # no connection yet
        c = r.connect()
        c.sendall(b"x")
        assert recv_exactly(c, 1) == b"x"
        assert server.wake(1) is True
        wait_for(lambda: (1, None) in rec.of("data"), what="data(1, None)")
        for unknown in (0, -1, 2, 10**9):
            assert server.wake(unknown) is False, unknown
        c.close()
        wait_for(lambda: rec.of("closed"), what="closed")
        assert server.wake(1) is False  # closed
        keep = r.connect()
        keep.sendall(b"y")
        assert recv_exactly(keep, 1) == b"y"
        assert server.wake(2) is True
        wait_for(lambda: (2, None) in rec.of("data"), what="data(2, None)")
    # Stopped: even the id that was open when the server stopped.
    assert server.wake(2) is False
    assert server.wake(1) is False
    assert [d for i, d in rec.of("data") if i == 1] == [b"x", None]


@pytest.mark.rule("WAKE-1", "WAKE-4")
def test_wake_is_false_for_a_detached_connection(poller: str, addr: str) -> None:
    rec = Recorder()
    conns: list[Any] = []

    def detached(cid: int, conn: Any) -> None:
        rec.add("detached", cid)
        conns.append(conn)

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        return (b"bye", Action.DETACH) if d == b"go" else d

    ev = echo_events(rec, data=data, detached=detached)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        wait_for(lambda: conns, what="detached")
        try:
            assert r.server is not None
            assert r.server.wake(1) is False
            conns[0].sendall(b"!")
            assert recv_exactly(c, 4) == b"bye!"
        finally:
            conns[0].close()
        time.sleep(0.05)  # a wrongly kept wake would call data by now
    assert rec.kinds(1) == ["opened", "data", "detached"]


@pytest.mark.rule("WAKE-1")
def test_wake_is_false_for_a_udp_remote(poller: str, tmp_path: Path) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        return d

    ev = echo_events(rec, data=data)
    stream = f"unix://{tmp_path / 's.sock'}"
    with running(ev, stream, "udp4://127.0.0.1:0", poller=poller) as r:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.clients.append(u)  # closed by the harness
        u.settimeout(10)
        u.sendto(b"hello", r.addrs[1])
        assert u.recv(100) == b"hello"
        (cid,) = rec.ids()
        assert r.server is not None
        assert r.server.wake(cid) is False
        u.sendto(b"again", r.addrs[1])
        assert u.recv(100) == b"again"
    assert None not in [d for _, d in rec.of("data")]


# --------------------------------------------------------- never lost


@pytest.mark.rule("WAKE-2")
def test_wakes_while_the_loop_is_busy_fold_but_are_answered(poller: str, addr: str) -> None:
    rec = Recorder()
    busy = threading.Event()
    release = threading.Event()

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        if d == b"block":
            busy.set()
            release.wait(10)  # holds the loop: the wakes below pile up
        return None

    with running(echo_events(rec, data=data), addr, poller=poller) as r:
        blocker = r.connect()
        r.connect()  # id 2, woken below
        wait_for(lambda: len(rec.ids()) == 2, what="both opened")
        blocker.sendall(b"block")
        assert busy.wait(10)
        assert r.server is not None
        results = [r.server.wake(2) for _ in range(100)]
        release.set()
        wait_for(lambda: (2, None) in rec.of("data"), what="data(2, None)")
        time.sleep(0.05)
    assert results == [True] * 100
    calls = [d for i, d in rec.of("data") if i == 2]
    assert 1 <= len(calls) <= 100 and set(calls) == {None}


@pytest.mark.rule("WAKE-2")
def test_a_wake_made_during_data_none_gets_another_call(poller: str, addr: str) -> None:
    rec = Recorder()
    servers: list[evio.Server] = []
    rewake: list[bool] = []

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        if d is None and not rewake:
            # Another thread wakes this id while its wake is being answered.
            t = threading.Thread(target=lambda: rewake.append(servers[0].wake(cid)))
            t.start()
            t.join(10)
            return b"first;"
        if d is None:
            return b"second;"
        return None

    with running(echo_events(rec, data=data, serving=servers.append), addr, poller=poller) as r:
        c = r.connect()
        wait_for(lambda: rec.ids(), what="opened")
        assert servers[0].wake(1) is True
        assert recv_exactly(c, 13) == b"first;second;"
    assert rewake == [True]


@pytest.mark.rule("WAKE-1", "WAKE-2", "WAKE-6")
@pytest.mark.timeout(60)
def test_wake_storm_loses_nothing_and_leaves_the_loop_idle(poller: str, addr: str) -> None:  # noqa: C901 -- one storm, every outcome checked
    """8 threads wake random ids while connections come and go.

    Every wake that returned True must be followed by a ``data(id, None)``
    that started after the wake call began, unless the connection closed
    after it began. A shared counter orders the events across threads:
    ``next()`` on ``itertools.count`` is atomic, and the wake's lock and
    the GIL make a number drawn before ``wake()`` smaller than any drawn by
    the loop after it took that wake.
    """
    seq = itertools.count()
    lock = threading.Lock()
    answered: dict[int, list[int]] = defaultdict(list)  # id -> seq of each data(id, None)
    closed_at: dict[int, int] = {}
    errors: list[BaseException | None] = []
    late: list[int] = []  # data(id, None) after closed(id)
    top = [0]  # highest id opened so far

    def opened(cid: int, info: evio.Info) -> None:
        top[0] = max(top[0], cid)

    def data(cid: int, d: bytes | None) -> Any:
        if d is None:
            n = next(seq)
            with lock:
                answered[cid].append(n)
                if cid in closed_at:
                    late.append(cid)
            return None
        return Action.SHUTDOWN if d == b"stop" else d

    def closed(cid: int, err: BaseException | None) -> None:
        with lock:
            closed_at[cid] = next(seq)
            if err is not None:
                errors.append(err)

    counting = CountingPoller(poller)
    ev = evio.Events(opened=opened, data=data, closed=closed)
    n_threads, per_thread, storm_seconds = 8, 4000, 0.6
    with running(ev, addr, poller=counting, stoppable=False) as r:
        server = r.server
        assert server is not None
        control = r.connect()
        with stopped_by(control):
            steady = [r.connect() for _ in range(10)]
            wait_for(lambda: top[0] >= 11, what="steady connections opened")
            steady_ids = list(range(2, 12))
            stop = threading.Event()
            trues: list[list[tuple[int, int]]] = [[] for _ in range(n_threads)]
            sent = [0] * n_threads
            kinds = [[0, 0, 0] for _ in range(n_threads)]  # true, false <= top id, false > top id
            failures: list[BaseException] = []

            def waker(k: int) -> None:
                rng = random.Random(k)
                end = time.monotonic() + storm_seconds
                try:
                    for i in range(per_thread):
                        if time.monotonic() > end:
                            break
                        # A mix of steady ids, the churning connection of the
                        # moment, any id so far (mostly closed), ids not used
                        # yet and ids never used.
                        hi, pick = top[0], i % 10
                        if pick < 4:
                            cid = rng.choice(steady_ids)
                        elif pick < 6:
                            cid = rng.randint(max(1, hi - 2), hi + 2)
                        elif pick < 9:
                            cid = rng.randint(1, hi)
                        else:
                            cid = rng.randint(hi + 1, 10**6)
                        n = next(seq)
                        if server.wake(cid):
                            trues[k].append((cid, n))
                            kinds[k][0] += 1
                        else:
                            kinds[k][1 if cid <= hi else 2] += 1
                        sent[k] += 1
                        if i % 16 == 15:
                            time.sleep(0.001)  # spread the storm over the churn
                except BaseException as e:
                    failures.append(e)

            churned = [0]

            def churn() -> None:
                try:
                    while not stop.is_set():
                        c = r.connect()
                        r.clients.remove(c)
                        c.sendall(b"ping")
                        assert recv_exactly(c, 4) == b"ping"
                        time.sleep(0.002)  # open for a while: some wakes find it
                        c.close()
                        churned[0] += 1
                except BaseException as e:
                    failures.append(e)

            churner = threading.Thread(target=churn)
            churner.start()
            threads = [threading.Thread(target=waker, args=(k,)) for k in range(n_threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            stop.set()
            churner.join(30)
            assert not failures, failures
            assert not any(t.is_alive() for t in (*threads, churner))

            wakes = [w for ws in trues for w in ws]

            def unanswered() -> list[tuple[int, int]]:
                with lock:
                    last = {cid: max(v) for cid, v in answered.items() if v}
                    return [
                        (cid, n)
                        for cid, n in wakes
                        if not last.get(cid, -1) > n and not closed_at.get(cid, -1) > n
                    ]

            wait_for(lambda: not unanswered(), what="every true wake answered")
            # Idle: nothing to do, so the loop must wait in poll without a timeout.
            time.sleep(0.2)
            tid = serve_thread_id(r)
            polls0, cpu0 = counting.polls, thread_cpu_seconds(tid)
            time.sleep(0.5)
            polls1, cpu1 = counting.polls, thread_cpu_seconds(tid)
            idle_cpu = cpu1 - cpu0
            with counting.lock:
                last_timeout = counting.timeouts[-1]
            for s in steady:  # the steady connections still echo
                s.sendall(b"ok")
                assert recv_exactly(s, 2) == b"ok"
            control.sendall(b"stop")
            r.join()

    with lock:
        calls = sum(len(v) for v in answered.values())
        by_seq = {cid: sorted(v) for cid, v in answered.items()}
    total_sent, total_true = sum(sent), len(wakes)
    to_closed, to_unknown = sum(k[1] for k in kinds), sum(k[2] for k in kinds)
    print(
        f"\nwake storm [{poller} {addr.split(':', 1)[0]}]: wakes sent={total_sent} "
        f"true={total_true} false(closed/unused)={to_closed} false(unknown)={to_unknown} "
        f"data(None) calls={calls} connections churned={churned[0]} "
        f"idle CPU={idle_cpu:.3f}s idle polls={polls1 - polls0}"
    )
    assert total_true > 5000 and churned[0] >= 20, "the storm was too small to mean much"
    assert not late, f"data(id, None) after closed for {sorted(set(late))}"
    assert not errors
    # Every data(id, None) answers some true wake of that id made before it.
    first_true: dict[int, int] = {}
    for cid, n in wakes:
        first_true[cid] = min(n, first_true.get(cid, n))
    for cid, seqs in by_seq.items():
        assert cid in first_true and seqs[0] > first_true[cid], f"spurious data({cid}, None)"
    assert polls1 - polls0 == 0, f"{polls1 - polls0} polls while idle"
    assert last_timeout is None, f"idle poll timeout {last_timeout!r}, not None"
    assert idle_cpu < 0.1, f"serving thread used {idle_cpu:.3f}s CPU in 0.5s of idleness"


# -------------------------------------------------------------- output


@pytest.mark.rule("WAKE-3")
def test_woken_output_is_appended_behind_pending_output(poller: str, addr: str) -> None:
    rec = Recorder()
    pending_at_wake: list[int] = []
    remaining: list[int] = []

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        if d is None:
            pending_at_wake.append(remaining[-1])
            return b"TAIL", Action.CLOSE
        return BIG  # far more than the socket buffers take

    ev = echo_events(rec, data=data, postwrite=lambda cid, n, rem: remaining.append(rem))
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        wait_for(lambda: remaining, what="the first write")  # the client is not reading
        assert r.server is not None
        assert r.server.wake(1) is True
        wait_for(lambda: pending_at_wake, what="data(1, None)")
        got = recv_all(c)  # the CLOSE applies after everything is sent
        wait_for(lambda: rec.of("closed"), what="closed")
    assert pending_at_wake[0] > 0, "the output was not pending when the wake came"
    assert len(got) == len(BIG) + 4
    assert got[-4:] == b"TAIL" and got[:-4] == BIG
    assert rec.kinds(1) == ["opened", "data", "data", "closed"]
    assert rec.of("closed") == [(1, None)]


@pytest.mark.rule("WAKE-3")
def test_woken_output_is_appended_to_output_of_the_same_turn(poller: str, addr: str) -> None:
    # The wake is made from data itself, before data's own output is even
    # written: the woken answer must still come after all of it.
    big = BIG * 4  # more than the kernel's buffers (up to 36 MiB here) can take
    servers: list[evio.Server] = []
    remaining: list[int] = []
    pending_at_wake: list[int] = []

    def data(cid: int, d: bytes | None) -> Any:
        if d is None:
            pending_at_wake.append(remaining[-1])
            return b"<woken>"
        assert servers[0].wake(cid) is True
        return big

    ev = evio.Events(
        data=data, serving=servers.append, postwrite=lambda cid, n, rem: remaining.append(rem)
    )
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"abc")
        got = recv_exactly(c, len(big) + 7)
    assert pending_at_wake[0] > 0
    assert got[-7:] == b"<woken>" and got[:-7] == big


# ------------------------------------------------------- not reading


@pytest.mark.rule("WAKE-4")
def test_wake_after_close_returned_is_dropped(poller: str, addr: str) -> None:
    rec = Recorder()
    remaining: list[int] = []

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        return (BIG, Action.CLOSE) if d == b"go" else None

    ev = echo_events(rec, data=data, postwrite=lambda cid, n, rem: remaining.append(rem))
    with running(ev, addr, poller=poller) as r:
        flushing, sentinel = r.connect(), r.connect()
        wait_for(lambda: len(rec.ids()) == 2, what="both opened")
        flushing.sendall(b"go")
        wait_for(lambda: remaining, what="the first write")
        assert remaining[0] > 0  # still flushing: the client reads nothing yet
        assert r.server is not None
        # Still open (the client has read nothing of BIG), so taken, then dropped.
        assert r.server.wake(1) is True
        assert r.server.wake(2) is True  # taken with, or after, the wake of 1
        wait_for(lambda: (2, None) in rec.of("data"), what="data(2, None)")
        got = recv_all(flushing)
        wait_for(lambda: rec.of("closed"), what="closed(1)")
        assert sentinel.fileno() >= 0
    assert got == BIG
    assert rec.kinds(1) == ["opened", "data", "closed"]
    assert rec.of("closed")[0] == (1, None)


@pytest.mark.rule("WAKE-4")
def test_wake_after_the_peer_ended_its_stream_is_dropped(poller: str, addr: str) -> None:
    rec = Recorder()
    remaining: list[int] = []
    counting = CountingPoller(poller)

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        return BIG if d == b"go" else None

    def opened(cid: int, info: evio.Info) -> evio.Options:
        rec.add("opened", cid, info)
        # The end of stream is read while output is pending: no flow control.
        return evio.Options(high_water=1 << 40)

    ev = echo_events(rec, opened=opened, data=data,
                     postwrite=lambda cid, n, rem: remaining.append(rem))
    with running(ev, addr, poller=counting) as r:
        ending, sentinel = r.connect(), r.connect()
        wait_for(lambda: len(rec.ids()) == 2, what="both opened")
        ending.sendall(b"go")
        wait_for(lambda: remaining, what="the first write")
        assert remaining[0] > 0
        wait_for(lambda: any(m == READ | WRITE for _, m in counting.modifies),
                 what="write interest for the pending output")
        with counting.lock:
            (fd,) = {f for f, m in counting.modifies if m == READ | WRITE}
        ending.shutdown(socket.SHUT_WR)
        # The loop has seen the end of stream when it stops asking to read.
        wait_for(lambda: (fd, WRITE) in counting.modifies, what="reading stopped")
        assert r.server is not None
        # Still open (the client has read nothing of BIG), so taken, then dropped.
        assert r.server.wake(1) is True
        assert r.server.wake(2) is True
        wait_for(lambda: (2, None) in rec.of("data"), what="data(2, None)")
        got = recv_all(ending)
        wait_for(lambda: rec.of("closed"), what="closed(1)")
        assert sentinel.fileno() >= 0
    assert got == BIG
    assert rec.kinds(1) == ["opened", "data", "closed"]
    assert rec.of("closed")[0] == (1, None)


# ---------------------------------------------------------- no spinning


@pytest.mark.rule("WAKE-6")
def test_after_a_wake_the_loop_waits_without_a_timeout(poller: str, addr: str) -> None:
    counting = CountingPoller(poller)
    rec = Recorder()

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        return Action.SHUTDOWN if d == b"stop" else None

    with running(echo_events(rec, data=data), addr, poller=counting, stoppable=False) as r:
        c = r.connect()
        with stopped_by(c):
            wait_for(lambda: rec.ids(), what="opened")
            assert r.server is not None
            for _ in range(3):  # several separate rounds of the doorbell
                before = len(rec.of("data"))
                assert all(r.server.wake(1) for _ in range(50))

                def answered(before: int = before) -> bool:
                    return len(rec.of("data")) > before

                wait_for(answered, what="data(1, None)")
                time.sleep(0.05)
            tid = serve_thread_id(r)
            polls0, cpu0 = counting.polls, thread_cpu_seconds(tid)
            time.sleep(0.5)
            idle_polls = counting.polls - polls0
            idle_cpu = thread_cpu_seconds(tid) - cpu0
            with counting.lock:
                last_timeout = counting.timeouts[-1]
            c.sendall(b"stop")
            r.join()
    assert idle_polls == 0, f"{idle_polls} polls while idle after wakes"
    assert last_timeout is None
    assert idle_cpu < 0.1, f"{idle_cpu:.3f}s CPU while idle"
