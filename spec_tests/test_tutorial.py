"""The tutorial's stages, held to the echo part of the conformance suite.

Each stage in ``tutorial/`` is started as a reader starts it -- a process
with ``--port 0`` that prints the address it bound -- and driven over real
loopback sockets with the checks the suite makes of evio's echo: bytes come
back exactly, payloads far larger than the kernel buffers survive partial
writes, several clients are served at once, a peer's end of stream is
answered with everything pending and then the server's own end, and a
reset client leaves the others alone. The last entry runs the same checks,
unchanged, against evio's own ``examples/echo_server.py``: where the
tutorial ends.

A stage built to lack something is tested for what it does instead, and
the test names the rule it falls short of: stage 1 serves one client at a
time, and stage 2 stalls behind a client that does not read (REL-2).
Stages 4 and 5 are libraries as well as programs; a few tests import them
and run their ``serve`` on a thread, as the harness runs evio's.

Each test names the evio rules whose behaviour it checks in the stages.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from harness import (
    DEADLINE,
    cpu_seconds,
    in_thread,
    pattern,
    read_until_eof,
    recv_exactly,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "tutorial"
MiB = 1 << 20
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


@dataclass(frozen=True)
class Stage:
    path: str  # relative to the repository root
    args: tuple[str, ...] = ()
    concurrent: bool = True  # serves several clients at once
    never_stalls: bool = True  # a client that does not read cannot stall the others
    worker: bool = False  # the echo travels through a worker thread and server.wake

    def __str__(self) -> str:
        return Path(self.path).stem + "".join(a.replace("--", "+") for a in self.args)


STAGE1 = Stage("tutorial/stage1_blocking_echo.py", concurrent=False, never_stalls=False)
STAGE2 = Stage("tutorial/stage2_select_loop.py", never_stalls=False)
STAGE4 = Stage("tutorial/stage4_callbacks.py")
STAGE5 = Stage("tutorial/stage5_timers_wakeups.py")
STAGES = [
    STAGE1,
    STAGE2,
    Stage("tutorial/stage3_pending_output.py"),
    STAGE4,
    STAGE5,
    Stage("tutorial/stage5_timers_wakeups.py", ("--worker",), worker=True),
    Stage("examples/echo_server.py", ("--quiet",)),  # the real thing
]


def stages(pred: Callable[[Stage], bool] = lambda s: True) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("stage", [s for s in STAGES if pred(s)], ids=str)


# ------------------------------------------------------------------ helpers


@dataclass
class Proc:
    """A stage running as a process, and the clients a test opened to it."""

    proc: subprocess.Popen[str]
    port: int
    clients: list[socket.socket] = field(default_factory=list)

    def connect(self, rcvbuf: int | None = None) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.clients.append(s)
        if rcvbuf is not None:  # before connect, so the window starts small
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(DEADLINE)
        s.connect(("127.0.0.1", self.port))
        return s

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)


@contextlib.contextmanager
def started(stage: Stage, *extra: str, expect_exit: bool = False) -> Iterator[Proc]:
    """Start a stage on port 0, read the address it printed, stop it afterwards.

    Unless ``expect_exit``, the process must still be running when the test
    is done with it: no check may crash a stage.
    """
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / stage.path), "--port", "0", *stage.args, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    p: Proc | None = None
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1'?(?::|, )(\d+)", banner)
        assert m, f"no bound address in {banner!r}"
        p = Proc(proc, int(m.group(1)))
        assert p.port != 0
        yield p
        if not expect_exit:
            assert proc.poll() is None, f"the server died: {proc.communicate()[1]}"
    finally:
        for c in p.clients if p else []:
            c.close()
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def exchange(c: socket.socket, payload: bytes) -> None:
    """Send ``payload`` while reading: its echo must come back exactly."""
    join = in_thread(lambda: c.sendall(payload))
    got = recv_exactly(c, len(payload))
    join()
    assert got == payload


def fill(c: socket.socket, quiet: float = 0.5, cap: int = 128 * MiB) -> bytes:
    """Send without reading until the server stops taking bytes; return what was sent.

    The server's echo fills our receive buffer; then either it stops reading
    us (flow control) or it blocks writing to us. Either way our sends stop
    being taken: the socket stays unwritable for ``quiet`` seconds.
    """
    sent = bytearray()
    c.setblocking(False)
    try:
        while len(sent) < cap:
            chunk = pattern(65536, seed=len(sent) // 65536)
            try:
                sent += chunk[:c.send(chunk)]
            except BlockingIOError:
                if not select.select([], [c], [], quiet)[1]:
                    return bytes(sent)
        raise AssertionError(f"the server took {cap} bytes without them being read")
    finally:
        c.settimeout(DEADLINE)


def load_stage(name: str) -> ModuleType:
    """Import a tutorial file as a module (the directory is not a package)."""
    spec = importlib.util.spec_from_file_location(name, TUTORIAL / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


STOP = b"\x00stop\x00"
"""Sent by ``serving_on_a_thread`` to stop a server a test left running."""


@contextlib.contextmanager
def serving_on_a_thread(module: ModuleType,
                        events: Any) -> Iterator[tuple[Any, Callable[[], None]]]:
    """Run ``module.serve(events, 0)`` on a thread; yield (serving's argument, join).

    On the way out, a server still running is sent ``STOP`` (its ``data``
    answers SHUTDOWN) and joined.
    """
    got: list[Any] = []
    ready = threading.Event()
    user_serving, user_data = events.serving, events.data

    def serving(arg: Any) -> None:
        got.append(arg)
        if user_serving:
            user_serving(arg)
        ready.set()

    def data(id: int, d: bytes | None) -> Any:
        return (b"", module.Action.SHUTDOWN) if d == STOP else user_data(id, d)

    events.serving, events.data = serving, data
    done = threading.Event()

    def run() -> None:
        try:
            module.serve(events, 0)
        finally:
            done.set()

    join = in_thread(run)
    assert ready.wait(DEADLINE), "serving was never called"
    try:
        yield got[0], join
    finally:
        if not done.is_set():
            with socket.create_connection(("127.0.0.1", port_of(got[0])), timeout=DEADLINE) as c:
                c.sendall(STOP)
                join()
    join()


def port_of(serving_arg: Any) -> int:
    """Stage 4's ``serving`` gets the address, stage 5's a ``Server`` with ``.addr``."""
    addr = getattr(serving_arg, "addr", serving_arg)
    return int(addr[1])


# ------------------------------------------------------------- every stage


@pytest.mark.rule("ADDR-8")
@stages()
def test_help_and_the_bound_address(stage: Stage) -> None:
    help_ = subprocess.run([sys.executable, str(ROOT / stage.path), "--help"],
                           capture_output=True, text=True, timeout=30)
    assert help_.returncode == 0 and "--port" in help_.stdout
    with started(stage) as p:  # port 0: the banner shows the port the kernel chose
        c = p.connect()
        exchange(c, b"hello")


@pytest.mark.rule("LOOP-8", "LOOP-11")
@stages()
def test_echo_is_byte_for_byte(stage: Stage) -> None:
    with started(stage) as p:
        c = p.connect()
        exchange(c, bytes(range(256)))
        for size in (1, 2, 1000, 65535, 65536, 65537, 300_000):
            exchange(c, pattern(size, seed=size))


@pytest.mark.rule("LOOP-7", "LOOP-8")
@stages()
def test_a_large_payload_survives_partial_writes(stage: Stage) -> None:
    # A small receive window on the client keeps the server's sends partial.
    with started(stage) as p:
        c = p.connect(rcvbuf=16 * 1024)
        exchange(c, pattern(8 * MiB, seed=3))


@pytest.mark.rule("LOOP-3", "LOOP-8")
@stages(lambda s: s.concurrent)
def test_several_clients_at_once(stage: Stage) -> None:
    with started(stage) as p:
        clients = [p.connect() for _ in range(20)]
        for rnd in range(5):
            messages = [pattern(1000 + i, seed=rnd * 20 + i) for i in range(len(clients))]
            for c, m in zip(clients, messages, strict=True):
                c.sendall(m)  # every client has sent before any reads
            for c, m in zip(reversed(clients), reversed(messages), strict=True):
                assert recv_exactly(c, len(m)) == m


@pytest.mark.rule("LOOP-3")
@pytest.mark.stage("stage1_blocking_echo", falls_short=True)
def test_the_blocking_stage_serves_one_client_at_a_time() -> None:
    with started(STAGE1) as p:
        first = p.connect()
        exchange(first, b"first")
        second = p.connect()  # the kernel completes the connect: the backlog
        second.sendall(b"second")
        second.settimeout(0.5)
        with pytest.raises(TimeoutError):
            second.recv(100)  # nobody reads it while the first client stays
        second.settimeout(DEADLINE)
        first.close()
        assert recv_exactly(second, 6) == b"second"


@pytest.mark.rule("LOOP-13")
@stages()
def test_the_peers_end_of_stream_gets_everything_then_the_end(stage: Stage) -> None:
    payload = pattern(2 * MiB, seed=5)
    with started(stage) as p:
        c = p.connect()
        if stage.worker:
            # Bytes still at the worker when the stream ends would be dropped
            # (the loop reads no more, so it calls data no more: WAKE-4); the
            # client takes its echo first, then ends its stream.
            exchange(c, payload)
            c.shutdown(socket.SHUT_WR)
            assert c.recv(1) == b""
            return

        def send_then_end() -> None:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)

        join = in_thread(send_then_end)
        got = read_until_eof(c)
        join()
        assert got == payload


@pytest.mark.rule("LOOP-15", "EV-13")
@stages()
def test_a_reset_mid_write_leaves_the_others_alone(stage: Stage) -> None:
    with started(stage) as p:
        other = p.connect() if stage.concurrent else None
        if other is not None:
            exchange(other, b"before")
        hog = p.connect()
        fill(hog)  # the server now has output for it that it cannot send
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        hog.close()
        if other is not None:
            exchange(other, pattern(100_000, seed=7))
        late = p.connect()
        exchange(late, pattern(100_000, seed=8))


@pytest.mark.rule("REL-1", "REL-2")
@stages(lambda s: s.never_stalls)
def test_a_client_that_does_not_read_cannot_stall_the_others(stage: Stage) -> None:
    with started(stage) as p:
        hog = p.connect()
        sent = fill(hog)
        other = p.connect()
        exchange(other, pattern(200_000, seed=9))  # served while the hog is not reading
        assert recv_exactly(hog, len(sent)) == sent  # and nothing of the hog's was lost


@pytest.mark.rule("REL-2")
@pytest.mark.stage("stage2_select_loop", falls_short=True)
def test_the_select_stage_stalls_behind_a_client_that_does_not_read() -> None:
    with started(STAGE2) as p:
        hog = p.connect()
        # The server is now blocked in sendall to the hog (a longer quiet
        # period, so that a server merely slow to be scheduled is not taken
        # for a stalled one).
        sent = fill(hog, quiet=1.5)
        other = p.connect()
        other.sendall(b"anyone?")
        other.settimeout(0.5)
        with pytest.raises(TimeoutError):
            other.recv(100)
        other.settimeout(DEADLINE)
        assert recv_exactly(hog, len(sent)) == sent  # the hog reads: the loop moves on
        assert recv_exactly(other, 7) == b"anyone?"


@pytest.mark.rule("LOOP-9", "TICK-5", "WAKE-6")
@stages()
def test_an_idle_server_does_not_spin(stage: Stage) -> None:
    with started(stage) as p:
        c = p.connect()
        for _ in range(20):  # with --worker, every echo went through a wake
            exchange(c, b"ping")
        time.sleep(0.2)
        before = p.cpu_seconds()
        time.sleep(1.0)
        used = p.cpu_seconds() - before
    assert used < 0.1, f"{used:.2f} s of CPU in 1 s with one idle client"


# ----------------------------------------------------------- stage 4 and 5


@pytest.mark.rule("LOOP-14", "EV-7")
@pytest.mark.stage("stage4_callbacks")
def test_the_limit_closes_after_the_echo_is_sent() -> None:
    payload = pattern(65536, seed=11)  # not above the high-water mark: all of it is read
    with started(STAGE4, "--limit", str(len(payload))) as p:
        c = p.connect(rcvbuf=4096)  # a small window: most of the echo stays pending
        c.sendall(payload)
        time.sleep(0.2)  # CLOSE is returned while we are not reading
        assert read_until_eof(c) == payload  # the echo, all of it, then the end
        exchange(p.connect(), b"still serving")


@pytest.mark.rule("LOOP-14", "EV-7")
@pytest.mark.parametrize("name", ["stage4_callbacks", "stage5_timers_wakeups"])
def test_close_sends_pending_output_first(name: str) -> None:
    module = load_stage(name)
    big = pattern(16 * MiB, seed=12)  # far more than the kernel buffers take

    def data(id: int, d: bytes | None) -> Any:
        return (big, module.Action.CLOSE) if d else None

    with serving_on_a_thread(module, module.Events(data=data)) as (arg, _), \
            socket.create_connection(("127.0.0.1", port_of(arg)), timeout=DEADLINE) as c:
        c.sendall(b"bye")
        time.sleep(0.1)  # CLOSE is returned while we are not reading
        assert read_until_eof(c) == big


@pytest.mark.rule("LOOP-17", "LOOP-18")
@pytest.mark.parametrize("name", ["stage4_callbacks", "stage5_timers_wakeups"])
def test_shutdown_closes_every_connection(name: str) -> None:
    module = load_stage(name)
    closed: list[int] = []

    def data(id: int, d: bytes | None) -> Any:
        return (b"bye", module.Action.SHUTDOWN) if d == b"stop" else d

    events = module.Events(data=data, closed=closed.append)
    with serving_on_a_thread(module, events) as (arg, join):
        port = port_of(arg)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
                   for _ in range(3)]
        with contextlib.ExitStack() as stack:
            for c in clients:
                stack.enter_context(c)
                exchange(c, b"hi")
            clients[1].sendall(b"stop")
            join()  # serve() returns
            assert read_until_eof(clients[1]) == b"bye"
            assert read_until_eof(clients[0]) == read_until_eof(clients[2]) == b""
    assert sorted(closed) == [1, 2, 3]


@pytest.mark.rule("WAKE-2", "WAKE-3")
@pytest.mark.stage("stage5_timers_wakeups")
def test_woken_output_is_appended_behind_pending_output() -> None:
    module = load_stage("stage5_timers_wakeups")
    big = pattern(8 * MiB, seed=13)
    answered = threading.Event()

    def data(id: int, d: bytes | None) -> Any:
        if d is None:
            return b"TAIL", module.Action.CLOSE
        answered.set()
        return big  # far more than the kernel buffers hold: most of it stays pending

    with serving_on_a_thread(module, module.Events(data=data)) as (server, join):
        with socket.create_connection(("127.0.0.1", server.addr[1]), timeout=DEADLINE) as c:
            try:
                c.sendall(b"go")
                assert answered.wait(DEADLINE)
                time.sleep(0.05)
                assert server.wake(1) is True
                got = read_until_eof(c)  # only now does the client read
            finally:
                server.stop()
        join()
    assert len(got) == len(big) + 4 and got[:-4] == big and got[-4:] == b"TAIL"
    assert server.wake(1) is False  # stopped


@pytest.mark.rule("WAKE-1", "WAKE-2")
@pytest.mark.stage("stage5_timers_wakeups")
def test_wakes_from_many_threads_lose_nothing() -> None:
    module = load_stage("stage5_timers_wakeups")
    lock = threading.Lock()
    ready: dict[int, bytearray] = {}

    def data(id: int, d: bytes | None) -> Any:
        with lock:
            return bytes(ready.pop(id, b""))

    with serving_on_a_thread(module, module.Events(data=data)) as (server, join):
        try:
            with socket.create_connection(("127.0.0.1", server.addr[1]),
                                          timeout=DEADLINE) as c:
                wait_for(lambda: server.wake(1), what="connection 1 open")

                def producer(n: int) -> Callable[[], None]:
                    def run() -> None:
                        for i in range(200):
                            with lock:
                                ready.setdefault(1, bytearray()).extend(b"%d:%d;" % (n, i))
                            assert server.wake(1)
                    return run

                joins = [in_thread(producer(n)) for n in range(4)]
                for j in joins:
                    j()
                expected = sum(len(b"%d:%d;" % (n, i)) for n in range(4) for i in range(200))
                got = recv_exactly(c, expected)
        finally:
            server.stop()
        join()
    for n in range(4):  # each thread's pieces arrive whole and in its order
        assert re.findall(rb"%d:(\d+);" % n, got) == [b"%d" % i for i in range(200)]


@pytest.mark.rule("TICK-1", "TICK-2")
@pytest.mark.stage("stage5_timers_wakeups")
def test_the_ticker_reports_while_serving() -> None:
    with started(STAGE5, "--stats", "0.05") as p:
        assert p.proc.stdout is not None
        first = p.proc.stdout.readline()
        assert first.startswith("stats: 0 open"), first  # the first tick comes at once
        c = p.connect()
        exchange(c, pattern(1000))
        for _ in range(200):  # 10 s of ticks at most
            line = p.proc.stdout.readline()
            if line.strip() == "stats: 1 open, 1000 bytes echoed":
                break
        else:
            raise AssertionError("no tick reported the connection")


@pytest.mark.rule("LOOP-18", "LOOP-19")
@pytest.mark.stage("stage5_timers_wakeups")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_stage5_cleanly(sig: signal.Signals) -> None:
    with started(STAGE5, expect_exit=True) as p:
        clients = [p.connect() for _ in range(3)]
        for c in clients:
            exchange(c, b"x")
        p.proc.send_signal(sig)
        for c in clients:
            assert read_until_eof(c) == b""
        out, err = p.proc.communicate(timeout=DEADLINE)
    assert p.proc.returncode == 0, err
    assert "stage 5 echo server stopped" in out


# ------------------------------------------------------------------- traces


@pytest.mark.rule("DOCS-9")
@stages(lambda s: s.path.startswith("tutorial/stage") and "stage1" not in s.path)
def test_trace_shows_each_turn_and_changes_nothing(stage: Stage) -> None:
    """With ``--trace`` a stage prints its turns, and serves exactly as without it."""
    with started(stage, "--trace", expect_exit=True) as p:
        c = p.connect()
        exchange(c, b"hello\n")
        exchange(c, pattern(300_000, seed=21))  # several turns, partial writes
        c.shutdown(socket.SHUT_WR)
        assert read_until_eof(c) == b""
        c.close()
        p.proc.send_signal(signal.SIGINT)
        out, _ = p.proc.communicate(timeout=DEADLINE)
    # (Stage 5 prints its first turn with the banner, which `started` read.)
    turns = [int(t) for t in re.findall(r"^turn (\d+)", out, re.MULTILINE)]
    assert turns and turns[0] <= 2, out[:500]
    assert turns == list(range(turns[0], turns[0] + len(turns))), out[:500]
    assert re.search(r"recv\(\) -> 6 bytes", out), out[:500]
    assert re.search(r"(sendall\(\) wrote|send\(\) took) 6 bytes", out), out[:500]
    assert re.search(r"recv\(\) -> 0 bytes", out), out[-500:]


@pytest.mark.rule("DOCS-9")
@pytest.mark.stage("stage4_callbacks")
def test_no_trace_without_the_flag() -> None:
    with started(STAGE4, expect_exit=True) as p:
        exchange(p.connect(), b"quiet")
        p.proc.send_signal(signal.SIGINT)
        out, _ = p.proc.communicate(timeout=DEADLINE)
    assert "turn" not in out, out
