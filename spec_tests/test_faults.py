"""Fault injection: peers that reset, churn, wake storms, signals, EMFILE.

The other conformance files check each rule on a well-behaved peer. This one
checks that the rules still hold when the peer, the process or the system
misbehaves:

* a peer resets while the server is writing a large response (LOOP-15);
* two thousand connections open and close at random, some echoing, some
  resetting (LOOP-15, LOOP-8, LOOP-19);
* threads wake random ids while connections come and go, and through the
  shutdown; afterwards no descriptor is left and the loop is idle
  (WAKE-1, WAKE-2, WAKE-6, LOOP-19);
* SIGINT and SIGTERM arrive while connections hold pending output, both
  through a ticker flag and as ``KeyboardInterrupt`` (LOOP-18, LOOP-19);
* two expected failures, each with its reason: a SIGINT taken while the
  loop is not inside its poll is not seen until some descriptor is ready
  (LOOP-2, LOOP-19), and a ``KeyboardInterrupt`` that lands while the loop
  closes a connection loses that connection's ``closed`` and leaves its
  socket open (LOOP-15, LOOP-19);
* a stateful hypothesis machine drives clients with tiny socket buffers
  through writes, partial reads, half-closes, closes and resets; every byte
  the server accepted reaches a live peer, in order (LOOP-8, LOOP-13,
  LOOP-15, REL-1);
* a server out of descriptors keeps serving large payloads on the
  connections it has, without spinning (LOOP-5).

Everything runs on loopback, port 0, with bounded waits.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import (
    POLLERS,
    CountingPoller,
    Recorder,
    Running,
    cpu_seconds,
    echo_events,
    listen_address,
    open_descriptors,
    pattern,
    recv_all,
    recv_exactly,
    reset,
    running,
    server_side_socket,
    small_socket,
    stopped_by,
    wait_for,
)
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from implementation import evio

Action = evio.Action

MiB = 1 << 20
KiB = 1 << 10
ROOT = Path(__file__).resolve().parent.parent
# A peer that goes away may surface as either, depending on family and timing.
GONE = (ConnectionResetError, BrokenPipeError)


def fd_count() -> int:
    """Every descriptor this process has open, of any kind."""
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def nofile_raised() -> Iterator[int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit, for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield want
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------- reset mid-write


@pytest.mark.rule("LOOP-15", "LOOP-19")
@pytest.mark.parametrize("how", ["reset", "close-unread"])
def test_a_peer_that_goes_away_mid_write_is_closed_once_with_the_error(
    poller: str, addr: str, how: str
) -> None:
    """32 MiB are being written; the peer reads 64 KiB and leaves.

    ``reset`` closes with ``SO_LINGER`` 0; ``close-unread`` closes with
    bytes still unread, which makes the kernel answer further writes with a
    reset (TCP) or ``EPIPE`` (unix). Either way the server's next write
    fails: ``closed`` gets that error, once, and nothing else is disturbed.
    """
    rec = Recorder()
    big = pattern(32 * MiB, 5)
    stalled: list[int] = []

    def data(cid: int, d: bytes) -> bytes:
        rec.add("data", cid, bytes(d))
        return big if d == b"big" else d

    def postwrite(cid: int, n: int, remaining: int) -> None:
        if remaining:
            stalled.append(cid)

    ev = echo_events(rec, data=data, postwrite=postwrite)
    with running(ev, addr, poller=poller) as r:
        bystander = r.connect()
        bystander.sendall(b"before")
        assert recv_exactly(bystander, 6) == b"before"
        victim = small_socket(r.addrs[0])
        r.clients.append(victim)
        victim.sendall(b"big")
        assert recv_exactly(victim, 64 * KiB) == big[: 64 * KiB]
        wait_for(lambda: 2 in stalled, what="output pending for the victim")
        if how == "reset":
            reset(victim)
        else:
            victim.close()
        wait_for(lambda: rec.kinds(2)[-1:] == ["closed"], what="closed(2, ...)")
        time.sleep(0.05)  # a second closed would show now
        bystander.sendall(b"after")
        assert recv_exactly(bystander, 5) == b"after"
    assert rec.kinds(2) == ["opened", "data", "closed"]
    (_cid, err), = [c for c in rec.of("closed") if c[0] == 2]
    assert isinstance(err, GONE), repr(err)
    assert rec.of("closed")[-1] == (1, None)  # the bystander, closed by the harness


# ----------------------------------------------------------------- churn


CHURN_KINDS = ("echo", "echo-half-close", "quiet", "reset", "reset-unread")
ORDERLY = {"echo", "echo-half-close", "quiet"}


@dataclass
class ChurnTally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    kinds: Counter[str] = field(default_factory=Counter)
    by_port: dict[int, list[str]] = field(default_factory=dict)
    echoed: int = 0
    failures: list[BaseException] = field(default_factory=list)


def _churn_client(port: int, rng: random.Random, n: int, tally: ChurnTally) -> None:
    try:
        for _ in range(n):
            kind = rng.choice(CHURN_KINDS)
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            with tally.lock:
                tally.kinds[kind] += 1
                tally.by_port.setdefault(s.getsockname()[1], []).append(kind)
            payload = rng.randbytes(rng.randint(1, 96 * KiB))
            try:
                if kind == "echo":
                    s.sendall(payload)
                    got = recv_exactly(s, len(payload))
                elif kind == "echo-half-close":
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                    got = recv_all(s)
                elif kind == "reset-unread":
                    s.sendall(payload)  # then leave without reading the echo
                if kind.startswith("echo"):
                    assert got == payload, f"{kind}: echo differs ({len(got)} of {len(payload)})"
                    with tally.lock:
                        tally.echoed += len(payload)
            finally:
                if kind.startswith("reset"):
                    reset(s)
                else:
                    s.close()
    except BaseException as e:
        with tally.lock:
            tally.failures.append(e)


@pytest.mark.rule("LOOP-15", "LOOP-8", "LOOP-3", "LOOP-19")
@pytest.mark.timeout(90)
def test_churn_of_two_thousand_connections(poller: str, caplog: pytest.LogCaptureFixture) -> None:
    """8 threads open 2000 connections; each echoes, closes or resets at random."""
    threads_n, per_thread = 8, 250
    rec = Recorder()
    ports: dict[int, int] = {}  # id -> the client's port
    caplog.set_level(logging.WARNING, logger="evio")

    def opened(cid: int, info: evio.Info) -> None:
        rec.add("opened", cid)
        assert isinstance(info.remote_addr, tuple)  # a TCP peer: (host, port)
        ports[cid] = info.remote_addr[1]

    ev = echo_events(rec, opened=opened)
    tally = ChurnTally()
    with nofile_raised():
        before_all, before_sockets = fd_count(), open_descriptors()
        with running(ev, "tcp4://127.0.0.1:0", poller=poller) as r:
            port = r.addrs[0][1]
            threads = [
                threading.Thread(target=_churn_client,
                                 args=(port, random.Random(k), per_thread, tally))
                for k in range(threads_n)
            ]
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not any(t.is_alive() for t in threads), "churn did not finish"
            assert not tally.failures, tally.failures[:3]
            wait_for(lambda: len(rec.of("closed")) == len(rec.of("opened")),
                     what="every opened connection closed")
            elapsed = time.monotonic() - start
        after_all, after_sockets = fd_count(), open_descriptors()

    opened_ids = rec.ids()
    closed = rec.of("closed")
    total = sum(tally.kinds.values())
    errors = Counter(type(err).__name__ for _, err in closed)
    print(f"\nchurn [{poller}]: {total} connections {dict(tally.kinds)} "
          f"opened={len(opened_ids)} closed with {dict(errors)} "
          f"echoed={tally.echoed} B in {elapsed:.2f}s")
    assert total == threads_n * per_thread
    # Every connection that sent something was accepted; one reset before
    # the loop took it may never be (and then never opens).
    assert total - tally.kinds["reset"] <= len(opened_ids) <= total
    assert sorted(i for i, _ in closed) == sorted(opened_ids), "closed exactly once each"
    assert all(err is None or isinstance(err, GONE) for _, err in closed), [
        e for _, e in closed if e is not None and not isinstance(e, GONE)][:3]
    assert errors["ConnectionResetError"] > 0, "no reset reached the server"
    # Where the client's port identifies one connection, the error fits it.
    errs = dict(closed)
    checked = 0
    for cid, p in ports.items():
        kinds = tally.by_port.get(p, [])
        if len(kinds) == 1 and kinds[0] in ORDERLY:
            assert errs[cid] is None, f"{kinds[0]} connection {cid} closed with {errs[cid]!r}"
            checked += 1
    assert checked > total // 4
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert after_sockets == before_sockets
    assert after_all == before_all, f"{after_all - before_all} descriptors more than before"


# ------------------------------------------------------------ wake storm


@pytest.mark.rule("WAKE-1", "WAKE-2", "WAKE-6", "LOOP-19")
@pytest.mark.timeout(60)
def test_after_a_wake_storm_nothing_is_left_and_the_loop_sleeps(poller: str) -> None:  # noqa: C901 -- one storm, every outcome checked
    """Threads wake random ids while connections come and go, then keep
    waking through the shutdown.

    After the storm the process has exactly the descriptors it had before
    it, every open connection still echoes, and the loop polls not once in
    0.3 s of quiet (no timeout, no wake left ringing). Wakes made while and
    after the server stops return False and raise nothing; the harness then
    checks that no descriptor outlived ``serve()``.
    """
    rec = Recorder()
    answered: Counter[int] = Counter()

    def data(cid: int, d: bytes | None) -> Any:
        if d is None:
            answered[cid] += 1
            return None
        return Action.SHUTDOWN if d == b"stop" else d

    counting = CountingPoller(poller)
    ev = echo_events(rec, data=data)
    with running(ev, "tcp4://127.0.0.1:0", poller=counting, stoppable=False) as r:
        server = r.server
        assert server is not None
        control = r.connect()
        with stopped_by(control):
            steady = [r.connect() for _ in range(5)]
            wait_for(lambda: len(rec.ids()) == 6, what="steady connections opened")
            time.sleep(0.05)
            fds_before, sockets_before = fd_count(), open_descriptors()

            stop = threading.Event()
            failures: list[BaseException] = []
            true_after_stop: list[int] = []
            stopped = threading.Event()
            sent = [0]

            def waker(k: int) -> None:
                rng = random.Random(k)
                try:
                    while not stop.is_set():
                        top = max(rec.ids(), default=1)
                        for _ in range(64):
                            cid = rng.randint(1, top + 3)
                            after_stop = stopped.is_set()  # serve() returned before this call
                            if server.wake(cid) and after_stop:
                                true_after_stop.append(cid)
                            sent[0] += 1
                        time.sleep(0.0005)
                except BaseException as e:
                    failures.append(e)

            churned = [0]

            def churn() -> None:
                try:
                    while not stop.is_set():
                        with socket.create_connection(r.addrs[0], timeout=10) as c:
                            c.sendall(b"ping")
                            assert recv_exactly(c, 4) == b"ping"
                            time.sleep(0.002)
                        churned[0] += 1
                except BaseException as e:
                    failures.append(e)

            workers = [threading.Thread(target=waker, args=(k,)) for k in range(6)]
            workers.append(threading.Thread(target=churn))
            for t in workers:
                t.start()
            time.sleep(0.6)
            stop.set()
            for t in workers:
                t.join(20)
            assert not failures, failures
            wait_for(lambda: len(rec.of("closed")) == len(rec.ids()) - 6,
                     what="churned connections closed")
            time.sleep(0.1)  # the last wakes are answered
            fds_after, sockets_after = fd_count(), open_descriptors()
            polls0 = counting.polls
            time.sleep(0.3)
            idle_polls = counting.polls - polls0
            with counting.lock:
                last_timeout = counting.timeouts[-1]
            for s in steady:
                s.sendall(b"ok")
                assert recv_exactly(s, 2) == b"ok"

            # Now wake through the shutdown.
            stop.clear()
            workers = [threading.Thread(target=waker, args=(k,)) for k in range(4)]
            for t in workers:
                t.start()
            time.sleep(0.05)
            control.sendall(b"stop")
            r.join()
            stopped.set()
            time.sleep(0.05)
            stop.set()
            for t in workers:
                t.join(20)
            assert not failures, failures

    print(f"\nwake storm [{poller}]: wakes={sent[0]} data(None)={sum(answered.values())} "
          f"churned={churned[0]} idle polls={idle_polls}")
    assert churned[0] >= 20 and sum(answered.values()) > 100, "the storm was too small"
    assert sockets_after == sockets_before
    assert fds_after == fds_before
    assert idle_polls == 0, f"{idle_polls} polls in 0.3 s of quiet"
    assert last_timeout is None, f"idle poll timeout {last_timeout!r}"
    assert not true_after_stop, "wake() returned True after serve() returned"
    assert all(err is None for _, err in rec.of("closed"))


# --------------------------------------------------------------- signals


_SIGNAL_CHILD = textwrap.dedent("""
    import os, signal, sys
    import evio

    mode, poller, path = sys.argv[1:4]
    BIG = b"x" * (8 << 20)
    stop = []
    stalled = set()

    def say(*words):
        print(*words, flush=True)

    if mode == "flag":
        def on_signal(signum, frame):
            stop.append(signum)  # the next tick returns SHUTDOWN
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def serving(server):
        say("ready", server.addrs[0][1])

    def opened(cid, info):
        say("opened", cid)

    def data(cid, d):
        return BIG  # more than the peer's small buffers take: it stays pending

    def postwrite(cid, n, remaining):
        if remaining and cid not in stalled:
            stalled.add(cid)
            say("pending", cid, remaining)

    def closed(cid, err):
        say("closed", cid, type(err).__name__ if err is not None else "None")

    def tick():
        return evio.Action.SHUTDOWN if stop else 0.05

    ev = evio.Events(serving=serving, opened=opened, data=data, postwrite=postwrite,
                     closed=closed, tick=tick if mode == "flag" else None)

    def leftovers():
        n = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink("/proc/self/fd/" + name)
            except OSError:
                continue
            n += target.startswith(("socket:", "anon_inode:"))
        return n

    try:
        evio.serve(ev, "tcp4://127.0.0.1:0", "unix://" + path, poller=poller)
    except KeyboardInterrupt:
        say("KeyboardInterrupt", leftovers(), os.path.exists(path))
        sys.exit(0)
    say("returned", leftovers(), os.path.exists(path))
""")


class _Child:
    """A server process whose stdout lines arrive on a queue."""

    def __init__(self, script: str, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output

    def until(self, pred: Callable[[list[str]], bool], timeout: float = 10.0) -> list[str]:
        """Collect lines until ``pred(lines so far)`` holds."""
        end = time.monotonic() + timeout
        while not pred(self.seen):
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"child said only {self.seen!r}") from None
            if line is None:
                self.lines.put(None)
                raise AssertionError(f"child ended after {self.seen!r}")
            self.seen.append(line)
        return self.seen

    def stop(self, sig: int | None = None, timeout: float = 10.0) -> tuple[int, list[str], str]:
        """Signal the child (if ``sig``), wait for it; its code, every line, stderr."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.pump.join(timeout)
        while (line := self.lines.get_nowait()) is not None:
            self.seen.append(line)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.proc.returncode, self.seen, err


def _switches(pid: int) -> tuple[str, int]:
    """The main thread's state letter and voluntary context switches so far."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return fields["State"].split()[0], int(fields["voluntary_ctxt_switches"])


def wait_until_asleep(pid: int, quiet: float = 0.2, timeout: float = 10.0) -> None:
    """Wait until a single-threaded process has slept in one system call for ``quiet`` s.

    Each return from a blocking call is a voluntary context switch; when
    their count holds still and the state is S, the loop sits in its poll.
    """
    end = time.monotonic() + timeout
    state, seen = _switches(pid)
    while time.monotonic() < end:
        time.sleep(quiet)
        state, now = _switches(pid)
        if state == "S" and now == seen:
            return
        seen = now
    raise AssertionError(f"process {pid} never settled in its poll (state {state})")


@pytest.mark.rule("LOOP-18", "LOOP-19", "LOOP-24")
@pytest.mark.parametrize("how", ["SIGINT-flag", "SIGTERM-flag", "SIGINT-KeyboardInterrupt"])
def test_a_signal_with_output_pending_closes_everything(
    poller: str, tmp_path: Path, how: str
) -> None:
    """Four connections (two TCP, two unix) hold megabytes of pending output.

    With a handler that sets a flag, the next tick returns SHUTDOWN; with
    Python's default SIGINT handler, ``KeyboardInterrupt`` comes out of the
    poll. Either way every connection gets ``closed(id, None)`` before
    ``serve()`` returns or re-raises, no socket is left, and the unix
    socket file is gone.
    """
    sig = signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGINT
    mode = "flag" if how.endswith("flag") else "default"
    path = tmp_path / "s.sock"
    child = _Child(_SIGNAL_CHILD, mode, poller, str(path))
    clients: list[socket.socket] = []
    try:
        port = int(child.until(lambda lines: bool(lines))[0].split()[1])
        for target in (("127.0.0.1", port), str(path)) * 2:
            c = small_socket(target)
            clients.append(c)
            c.sendall(b"go")
        child.until(lambda lines: sum(x.startswith("pending") for x in lines) == 4)
        if mode == "default":
            # A signal that lands just before the poll blocks is not seen
            # until some descriptor is ready: that race has its own test
            # (test_sigint_while_the_loop_sleeps_is_not_lost). Here the
            # signal comes once the loop sleeps.
            wait_until_asleep(child.proc.pid)
        code, lines, err = child.stop(sig)
    finally:
        for c in clients:
            c.close()
        if child.proc.poll() is None:
            child.stop(signal.SIGKILL)
    assert code == 0, err
    closed = [x.split() for x in lines if x.startswith("closed")]
    assert sorted(int(c[1]) for c in closed) == [1, 2, 3, 4], lines
    assert all(c[2] == "None" for c in closed), closed
    last = lines[-1].split()
    if mode == "flag":
        assert last[0] == "returned", lines
    else:
        assert last[0] == "KeyboardInterrupt", lines
    assert last[1:] == ["0", "False"], f"sockets left / socket file exists: {last}"
    assert not path.exists()


_LOST_SIGINT_CHILD = textwrap.dedent("""
    import signal, socket, sys, threading, time
    import evio

    def serving(server):
        def helper():
            time.sleep(0.3)  # the loop is idle in poll(None) by now
            print("signalled", flush=True)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            time.sleep(float(sys.argv[2]))
            print("poking", flush=True)  # any ready descriptor lets it through
            socket.create_connection(server.addrs[0]).close()
        threading.Thread(target=helper, daemon=True).start()

    try:
        evio.serve(evio.Events(serving=serving), "tcp4://127.0.0.1:0", poller=sys.argv[1])
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
""")


@pytest.mark.rule("LOOP-23", "LOOP-24", "LOOP-19")
def test_sigint_while_the_loop_sleeps_is_not_lost(poller: str) -> None:
    """Python's default SIGINT handler, an idle loop, and the signal taken by
    another thread of the process (as the kernel may choose for ``kill``)."""
    child = _Child(_LOST_SIGINT_CHILD, poller, "1.0")
    try:
        child.until(lambda lines: "signalled" in lines)
        first = child.until(lambda lines: lines[-1] in ("KeyboardInterrupt", "poking"),
                            timeout=5)[-1]
    finally:
        child.stop(signal.SIGKILL)
    assert first == "KeyboardInterrupt", (
        "serve() was still blocked 1 s after SIGINT; it raised only once poked")


class _InterruptingPoller(CountingPoller):
    """Raises ``KeyboardInterrupt`` right after the next real ``unregister``.

    That is what Python's default SIGINT handler does when the signal lands
    while the loop is inside that system call: the handler runs, and
    raises, as soon as the call returns.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.armed = threading.Event()

    def unregister(self, fd: int) -> None:
        super().unregister(fd)
        if self.armed.is_set():
            self.armed.clear()
            raise KeyboardInterrupt


@pytest.mark.rule("LOOP-15", "LOOP-19", "LOOP-24")
def test_keyboard_interrupt_inside_a_close_still_closes_it_once(poller: str) -> None:
    """SIGINT that lands while the loop is closing a connection."""
    rec = Recorder()
    interrupting = _InterruptingPoller(poller)
    before = open_descriptors()
    r: Running | None = None
    try:
        with running(echo_events(rec), "tcp4://127.0.0.1:0", poller=interrupting,
                     stoppable=False, check_fds=False, expect_error=True) as r:
            c = r.connect()
            wait_for(lambda: rec.ids() == [1], what="opened")
            interrupting.armed.set()
            c.close()  # the loop reads the end of stream and closes connection 1
            r.join()
        assert isinstance(r.error, KeyboardInterrupt)
        leaked = open_descriptors() - before
        assert rec.of("closed") == [(1, None)], "closed(1) did not fire"
        assert not leaked, f"descriptors left open after serve() raised: {leaked}"
    finally:
        if r is not None:
            r.error = None  # drop the traceback, and the frames holding the socket
        gc.collect()


@pytest.mark.rule("LOOP-19", "LOOP-24")
def test_keyboard_interrupt_in_one_closed_during_shutdown_still_closes_the_rest(
    poller: str
) -> None:
    """A KeyboardInterrupt (a user's own SIGINT handler, say) raised while the
    shutdown calls ``closed`` for one connection: the others are still
    closed, each once, and nothing is left open; then it propagates."""
    rec = Recorder()

    def closed(cid: int, err: BaseException | None) -> None:
        rec.add("closed", cid, err)
        if cid == 1:
            raise KeyboardInterrupt

    def data(cid: int, d: bytes) -> Any:
        return Action.SHUTDOWN if d == b"stop" else d

    before = open_descriptors()
    r: Running | None = None
    try:
        with running(echo_events(rec, data=data, closed=closed), "tcp4://127.0.0.1:0",
                     poller=poller, stoppable=False, check_fds=False,
                     expect_error=True) as r:
            clients = [r.connect() for _ in range(3)]
            wait_for(lambda: rec.ids() == [1, 2, 3], what="opened")
            clients[2].sendall(b"stop")
            r.join()
        assert isinstance(r.error, KeyboardInterrupt)
        assert sorted(cid for cid, _ in rec.of("closed")) == [1, 2, 3]
        for c in clients:
            c.close()
        leaked = open_descriptors() - before
        assert not leaked, f"descriptors left open after serve() raised: {leaked}"
    finally:
        if r is not None:
            r.error = None
        gc.collect()


# ------------------------------------------------- stateful, tiny buffers


@dataclass
class _Client:
    sock: socket.socket
    cid: int
    sent: bytearray = field(default_factory=bytearray)
    got: bytearray = field(default_factory=bytearray)
    half_closed: bool = False
    eof: bool = False


class TinyBufferEcho(RuleBasedStateMachine):
    """Clients with tiny socket buffers against one echo server.

    Rules open, write (whatever the socket takes), read (whatever has
    arrived), half-close, close and reset clients in any order. Invariant:
    what a client received is a prefix of what it sent, and what the
    server received is a prefix of that too. At the end every client still
    open half-closes and drains: it must then have received exactly what it
    sent, and every connection must have been closed exactly once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()
        self.rec = Recorder()
        self.r: Running | None = None
        self.live: list[_Client] = []
        self.gone: dict[int, str] = {}  # id -> how the client left
        self.family = ""

    @initialize(poller=st.sampled_from(POLLERS), family=st.sampled_from(["tcp4", "unix"]),
                high=st.sampled_from([1024, 65536]), clients=st.integers(1, 3))
    def start(self, poller: str, family: str, high: int, clients: int) -> None:
        tmp = Path(self.stack.enter_context(tempfile.TemporaryDirectory()))
        options = evio.Options(high_water=high, low_water=high // 4)
        ev = echo_events(self.rec, opened=self._opened(options))
        self.r = self.stack.enter_context(
            running(ev, listen_address(family, tmp), poller=poller))
        self.family = family
        event(f"{poller} {family} high_water={high}")
        for _ in range(clients):
            self.open()

    def _opened(self, options: evio.Options) -> Callable[[int, evio.Info], evio.Options]:
        def opened(cid: int, info: evio.Info) -> evio.Options:
            self.rec.add("opened", cid, info)
            return options
        return opened

    def _pick(self, i: int, writable: bool = False) -> _Client:
        pool = [c for c in self.live if not (writable and c.half_closed)]
        return pool[i % len(pool)]

    def _server_got(self, cid: int) -> bytes:
        return b"".join(p for i, p in self.rec.of("data") if i == cid)

    # ---- rules

    @precondition(lambda self: len(self.live) < 6)
    @rule()
    def open(self) -> None:
        assert self.r is not None
        n = len(self.rec.ids())
        s = small_socket(self.r.addrs[0], size=2048)
        wait_for(lambda: len(self.rec.ids()) > n, what="opened")
        cid = self.rec.ids()[-1]
        if self.family == "tcp4":  # the server's end gets tiny buffers too
            with server_side_socket(s) as mine:
                mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2048)
                mine.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.setblocking(False)
        self.live.append(_Client(s, cid))

    @precondition(lambda self: any(not c.half_closed for c in self.live))
    @rule(i=st.integers(0, 5), size=st.integers(1, 4 * KiB), seed=st.integers(0, 255))
    def write_small(self, i: int, size: int, seed: int) -> None:
        self._write(i, size, seed)

    @precondition(lambda self: any(not c.half_closed for c in self.live))
    @rule(i=st.integers(0, 5), size=st.integers(4 * KiB, 300 * KiB), seed=st.integers(0, 255))
    def write_large(self, i: int, size: int, seed: int) -> None:
        self._write(i, size, seed)

    def _write(self, i: int, size: int, seed: int) -> None:
        """Send what the socket takes at once; remember exactly that."""
        c = self._pick(i, writable=True)
        data = memoryview(pattern(size, seed))
        while data:
            try:
                n = c.sock.send(data)
            except BlockingIOError:
                break  # the buffers are full: keep only what was taken
            c.sent += data[:n]
            data = data[n:]

    @precondition(lambda self: bool(self.live))
    @rule(i=st.integers(0, 5), wait=st.sampled_from([0.0, 0.01]))
    def read(self, i: int, wait: float) -> None:
        c = self._pick(i)
        time.sleep(wait)
        while not c.eof:
            try:
                chunk = c.sock.recv(1 << 16)
            except BlockingIOError:
                return
            c.got += chunk
            c.eof = not chunk

    @rule()
    def settle(self) -> None:
        """Let the server catch up, then read whatever every client has."""
        time.sleep(0.01)
        for i in range(len(self.live)):
            self.read(i, 0.0)

    @precondition(lambda self: any(not c.half_closed for c in self.live))
    @rule(i=st.integers(0, 5))
    def half_close(self, i: int) -> None:
        c = self._pick(i, writable=True)
        c.sock.shutdown(socket.SHUT_WR)
        c.half_closed = True

    @precondition(lambda self: bool(self.live))
    @rule(i=st.integers(0, 5), how=st.sampled_from(["close", "reset"]))
    def leave(self, i: int, how: str) -> None:
        c = self._pick(i)
        self.live.remove(c)
        if how == "reset":
            reset(c.sock)
        else:
            c.sock.close()
        self.gone[c.cid] = how

    # ---- invariants

    @invariant()
    def echo_is_a_prefix_in_order(self) -> None:
        for c in self.live:
            assert c.got == c.sent[: len(c.got)], f"connection {c.cid}: echo out of order"
            seen = self._server_got(c.cid)
            assert seen == c.sent[: len(seen)], f"connection {c.cid}: server got other bytes"
            assert not c.eof or c.half_closed, f"connection {c.cid}: closed under a live peer"

    # ---- the end

    def teardown(self) -> None:
        try:
            if self.r is not None:
                self._drain_and_check()
        finally:
            for c in self.live:
                c.sock.close()
            self.stack.close()

    def _drain_and_check(self) -> None:
        most = max((len(c.sent) for c in self.live), default=0)
        event("most echoed on a drained connection: "
              + ("0" if not most else "< 64 KiB" if most < 64 * KiB else ">= 64 KiB"))
        for c in self.live:
            if not c.half_closed:
                c.sock.shutdown(socket.SHUT_WR)
                c.half_closed = True
            c.sock.setblocking(True)
            c.sock.settimeout(10)
            if not c.eof:
                c.got += recv_all(c.sock)
            assert bytes(c.got) == bytes(c.sent), (
                f"connection {c.cid}: sent {len(c.sent)} bytes, got {len(c.got)} back")
        rec = self.rec
        wait_for(lambda: len(rec.of("closed")) == len(rec.ids()), what="every closed")
        errs: dict[int, BaseException | None] = {}
        for cid, err in rec.of("closed"):
            assert cid not in errs, f"closed({cid}) twice"
            errs[cid] = err
        for c in self.live:
            assert errs[c.cid] is None, f"drained connection {c.cid}: {errs[c.cid]!r}"
            assert self._server_got(c.cid) == bytes(c.sent)
        for cid in self.gone:
            assert errs[cid] is None or isinstance(errs[cid], GONE), repr(errs[cid])


MACHINE = settings(
    max_examples=15,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.rule("LOOP-8", "LOOP-13", "LOOP-15", "REL-1")
class TestTinyBufferEcho(TinyBufferEcho.TestCase):  # type: ignore[misc, valid-type]
    """Runs the machine above: 15 runs of up to 30 steps, over the pollers drawn."""

    settings = MACHINE


# ---------------------------------------------------------------- EMFILE


_EMFILE_CHILD = textwrap.dedent("""
    import logging, resource, sys, evio
    logging.basicConfig(level=logging.WARNING)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), hard))

    def serving(server):
        print(server.addrs[0][1], flush=True)

    evio.serve(evio.Events(serving=serving, data=lambda i, d: d),
               "tcp4://127.0.0.1:0", poller=sys.argv[1])
""")


def _echo_concurrently(clients: list[socket.socket], payloads: list[bytes]) -> list[bytes]:
    """Send each payload on its client from a thread while reading the echo."""
    senders = [threading.Thread(target=c.sendall, args=(p,), daemon=True)
               for c, p in zip(clients, payloads, strict=True)]
    for t in senders:
        t.start()
    got = [recv_exactly(c, len(p)) for c, p in zip(clients, payloads, strict=True)]
    for t in senders:
        t.join(10)
    return got


@pytest.mark.rule("LOOP-5", "LOOP-8")
@pytest.mark.timeout(60)
def test_at_emfile_open_connections_keep_echoing_megabytes(poller: str) -> None:
    """Five connections echo 1 MiB each, several times, while every accept fails."""
    child = _Child(_EMFILE_CHILD, poller, "40")
    early: list[socket.socket] = []
    flood: list[socket.socket] = []
    try:
        port = int(child.until(lambda lines: bool(lines))[0])
        for _ in range(5):
            c = small_socket(("127.0.0.1", port), size=64 * KiB)
            early.append(c)
            c.sendall(b"hi")
            assert recv_exactly(c, 2) == b"hi"  # accepted and served
        for _ in range(60):  # more than the child has descriptors for
            flood.append(small_socket(("127.0.0.1", port)))
        time.sleep(0.5)
        cpu0 = cpu_seconds(child.proc.pid)
        time.sleep(1.0)
        quiet_cpu = cpu_seconds(child.proc.pid) - cpu0
        # Out of descriptors: the newest connection waits in the backlog.
        flood[-1].sendall(b"late")
        flood[-1].settimeout(0.3)
        with pytest.raises(TimeoutError):
            flood[-1].recv(4)
        flood[-1].settimeout(10)
        t0 = time.monotonic()
        for round_ in range(3):
            payloads = [pattern(MiB, 10 * round_ + k) for k in range(len(early))]
            assert _echo_concurrently(early, payloads) == payloads
        echo_seconds = time.monotonic() - t0
        cpu1 = cpu_seconds(child.proc.pid)
        time.sleep(1.0)
        quiet_cpu_after = cpu_seconds(child.proc.pid) - cpu1
        assert child.proc.poll() is None, "the server died at EMFILE"
        for c in flood[:-1]:  # free descriptors: the last one is accepted
            c.close()
        assert recv_exactly(flood[-1], 4) == b"late"
    finally:
        for c in early + flood:
            c.close()
        _, _, err = child.stop(signal.SIGKILL)
    print(f"\nEMFILE [{poller}]: CPU {quiet_cpu:.2f}s / {quiet_cpu_after:.2f}s in 1 s of "
          f"quiet before / after echoing 3 x 5 x 1 MiB in {echo_seconds:.2f}s")
    assert quiet_cpu < 0.3, f"the loop spun at EMFILE: {quiet_cpu:.2f}s CPU in 1s"
    assert quiet_cpu_after < 0.3, f"spinning after the echoes: {quiet_cpu_after:.2f}s in 1s"
    assert "not accepting" in err
