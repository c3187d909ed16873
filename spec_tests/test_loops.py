"""Conformance: N loops in N processes under a supervisor (docs/spec/loops.md).

Every server here is a real process tree: ``python -c _SERVER`` calls
``serve(..., loops=N)`` on its main thread and its loops are forked
children. Each loop answers with its pid, so a test can tell which process
served it; the tests find the processes by pid in ``/proc``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import DEADLINE, echo_events, running, wait_for
from implementation import evio, hook

ROOT = Path(__file__).resolve().parent.parent

_SERVER = r"""
import json, os, sys, threading, time
import evio

loops, fail = sys.argv[1], sys.argv[2]
addrs = sys.argv[3:]
state = {}

def say(**kw):  # one write: lines from several processes never interleave
    os.write(1, (json.dumps(kw) + "\n").encode())

def serving(server):
    state["server"] = server
    say(ready=server.loop_index, loops=server.loops, pid=os.getpid(),
        addrs=[list(a) if isinstance(a, tuple) else a for a in server.addrs])
    if fail == "serving" and server.loop_index == 1:
        raise ValueError("serving failed in loop 1")

def tick():
    if fail == "tick" and state["server"].loop_index == 1:
        raise ValueError("tick failed in loop 1")
    return 0.05

def opened(id, info):
    if info.addr_index == -1:
        return f"dialed {os.getpid()}\n".encode(), evio.Action.CLOSE
    return None

def data(id, data):
    server = state["server"]
    me = f"{os.getpid()} {server.loop_index} {id}"
    if data is None:
        return f"woken {me}\n".encode()
    word, _, arg = bytes(data).decode().strip().partition(" ")
    if word == "sleep":
        time.sleep(float(arg))
    elif word == "shutdown":
        return b"", evio.Action.SHUTDOWN
    elif word == "stop":
        server.stop()
        return b""
    elif word == "wake":
        threading.Timer(0.05, server.wake, (id,)).start()
        return b""
    elif word == "dial":
        server.dial(f"tcp://127.0.0.1:{arg}")
    return f"{me}\n".encode()

def closed(id, err):
    say(closed=id, pid=os.getpid())

ev = evio.Events(serving=serving, tick=tick if fail == "tick" else None,
                 opened=opened, data=data, closed=closed)
try:
    evio.serve(ev, *addrs, loops=loops if loops == "auto" else int(loops),
               poller=os.environ.get("EVIO_TEST_POLLER"))
except KeyboardInterrupt:
    say(end="interrupted")
except Exception as e:
    say(end="raised", type=type(e).__name__, message=str(e),
        notes=getattr(e, "__notes__", []))
else:
    say(end="returned")
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid``."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] != "Z":
                    out.add(int(name))
    return out


class Tree:
    """A ``serve(..., loops=N)`` process and what it printed."""

    def __init__(self, loops: int | str, *addrs: str, fail: str = "-",
                 poller: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EVIO_TEST_POLLER"}
        if poller is not None:
            env["EVIO_TEST_POLLER"] = poller
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(loops), fail, *addrs], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self.stderr = ""
        self.lock = threading.Lock()
        self.readers = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._read_err, daemon=True)]
        for r in self.readers:
            r.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.lock:
                self.stderr += line

    def seen(self, key: str) -> list[dict[str, Any]]:
        with self.lock:
            return [x for x in self.lines if key in x]

    def ready(self, n: int) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.seen("ready")) >= n or self.proc.poll() is not None,
                 what=f"{n} loops to call serving")
        ready = self.seen("ready")
        assert len(ready) >= n, (self.lines, self.stderr)
        return ready

    def pids(self) -> set[int]:
        return {x["pid"] for x in self.seen("ready")}

    def end(self) -> dict[str, Any]:
        self.proc.wait(DEADLINE)
        wait_for(lambda: self.seen("end"), what="serve() to end")
        return self.seen("end")[0]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(DEADLINE)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for r in self.readers:  # end of file once every process holding the pipes is gone
            r.join(DEADLINE)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def tree(loops: int | str, *addrs: str, fail: str = "-",
         poller: str | None = None) -> Iterator[Tree]:
    t = Tree(loops, *addrs, fail=fail, poller=poller)
    try:
        yield t
    finally:
        t.kill()


def _ask(bound: Any, what: bytes = b"pid", timeout: float = DEADLINE) -> list[str]:
    """Connect, send one command, return the words of the one-line answer."""
    family = socket.AF_UNIX if isinstance(bound, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(bound if isinstance(bound, str) else tuple(bound))
        s.sendall(what + b"\n")
        return s.makefile().readline().split()


def _addr(t: Tree, index: int = 0) -> Any:
    a = t.seen("ready")[0]["addrs"][index]
    return a if isinstance(a, str) else tuple(a)


def _all_gone(pids: set[int]) -> None:
    wait_for(lambda: not any(_alive(p) for p in pids), what=f"processes {pids} to exit")


# ------------------------------------------------------------------ LOOPS-1


@pytest.mark.rule("LOOPS-1")
@pytest.mark.parametrize("bad", [0, -1, -4, 1.0, 2.5, True, "2", "all", None])
def test_loops_must_be_a_positive_int_or_auto(bad: Any) -> None:
    before = os.listdir("/proc/self/fd")
    with pytest.raises(ValueError, match="loops"):
        evio.serve(echo_events(), "tcp4://127.0.0.1:0", loops=bad)
    assert os.listdir("/proc/self/fd") == before  # nothing was bound


@pytest.mark.rule("LOOPS-1")
def test_a_poller_instance_cannot_serve_several_loops() -> None:
    p = hook("make_poller")(None)
    try:
        with pytest.raises(ValueError, match="Poller instance"):
            evio.serve(echo_events(), "tcp4://127.0.0.1:0", poller=p, loops=2)
    finally:
        p.close()


@pytest.mark.rule("LOOPS-1", "LOOPS-2")
def test_one_loop_runs_in_the_calling_process() -> None:
    before = _children(os.getpid())
    with running(echo_events(), "tcp4://127.0.0.1:0") as r:
        assert r.server is not None
        assert (r.server.loop_index, r.server.loops) == (0, 1)
        assert _children(os.getpid()) == before  # no process was forked


@pytest.mark.rule("LOOPS-1")
def test_auto_is_one_loop_per_cpu_this_process_may_use() -> None:
    cpus = len(os.sched_getaffinity(0))
    with tree("auto", "tcp4://127.0.0.1:0") as t:
        ready = t.ready(cpus)
        assert {x["loops"] for x in ready} == {cpus}
        assert sorted(x["ready"] for x in ready) == list(range(cpus))


# ------------------------------------------------------------------ LOOPS-2/3


@pytest.mark.rule("LOOPS-2", "LOOPS-3")
def test_tcp_connections_are_answered_by_every_loop(tmp_path: Path, poller: str) -> None:
    with tree(2, "tcp4://127.0.0.1:0", f"unix://{tmp_path / 's.sock'}", poller=poller) as t:
        ready = t.ready(2)
        assert sorted(x["ready"] for x in ready) == [0, 1]
        assert {x["loops"] for x in ready} == {2}
        assert len(t.pids()) == 2 and os.getpid() not in t.pids()
        assert _children(t.proc.pid) == t.pids()
        assert len({json.dumps(x["addrs"]) for x in ready}) == 1  # one port for all
        answered = collections.Counter(_ask(_addr(t))[0] for _ in range(60))
        assert {int(p) for p in answered} == t.pids(), answered


@pytest.mark.rule("LOOPS-2", "LOOPS-3")
def test_a_unix_socket_is_served_by_every_loop(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with tree(2, f"unix://{path}") as t:
        t.ready(2)
        # While one loop sleeps in a callback, the other accepts: the socket is shared.
        with socket.socket(socket.AF_UNIX) as busy:
            busy.settimeout(DEADLINE)
            busy.connect(str(path))
            busy.sendall(b"sleep 1.5\n")
            time.sleep(0.2)
            other = int(_ask(str(path), timeout=1.0)[0])
            sleeper = int(busy.makefile().readline().split()[0])
        assert {other, sleeper} == t.pids()
        t.proc.send_signal(signal.SIGTERM)
        assert t.end()["end"] == "returned"
    assert not path.exists()  # removed, once, by the parent


@pytest.mark.rule("LOOPS-2", "LOOPS-3")
def test_udp_remotes_are_spread_over_every_loop() -> None:
    with tree(2, "udp4://127.0.0.1:0") as t:
        t.ready(2)
        bound = _addr(t)
        answered = collections.Counter()
        for _ in range(60):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(DEADLINE)
                s.sendto(b"pid\n", bound)
                answered[int(s.recv(100).split()[0])] += 1
        assert set(answered) == t.pids(), answered


# ------------------------------------------------------------------ LOOPS-4


@pytest.mark.rule("LOOPS-4")
def test_ids_belong_to_their_loop_and_wake_and_dial_act_on_the_calling_loop() -> None:
    with tree(2, "tcp4://127.0.0.1:0") as t, socket.socket() as target:
        t.ready(2)
        firsts: dict[str, str] = {}
        while len(firsts) < 2:
            pid, _, cid = _ask(_addr(t))
            firsts.setdefault(pid, cid)
        assert set(firsts.values()) == {"1"}  # each loop counts its own ids from 1

        woken = _ask(_addr(t), b"wake")
        assert woken[0] == "woken"
        # Whoever answered "wake" also ran the data(id, None) for it.
        target.bind(("127.0.0.1", 0))
        target.listen()
        target.settimeout(DEADLINE)
        asker = _ask(_addr(t), f"dial {target.getsockname()[1]}".encode())
        conn, _ = target.accept()
        with conn:
            conn.settimeout(DEADLINE)
            assert conn.makefile().readline().split() == ["dialed", asker[0]]


@pytest.mark.rule("LOOPS-4")
def test_a_wake_is_delivered_by_the_loop_that_asked() -> None:
    with tree(2, "tcp4://127.0.0.1:0") as t:
        t.ready(2)
        for _ in range(10):
            with socket.create_connection(_addr(t), timeout=DEADLINE) as s:
                s.sendall(b"pid\n")
                f = s.makefile()
                me = f.readline().split()
                s.sendall(b"wake\n")
                assert f.readline().split() == ["woken", *me]


# ------------------------------------------------------------------ LOOPS-5/6


@pytest.mark.rule("LOOPS-5")
@pytest.mark.parametrize("how", [b"shutdown", b"stop"])
def test_shutdown_or_stop_in_one_loop_stops_every_loop(how: bytes) -> None:
    with tree(3, "tcp4://127.0.0.1:0") as t:
        t.ready(3)
        held = [socket.create_connection(_addr(t), timeout=DEADLINE) for _ in range(6)]
        for s in held:
            s.sendall(b"pid\n")
            s.makefile().readline()
        with socket.create_connection(_addr(t), timeout=DEADLINE) as s:
            s.sendall(how + b"\n")
            assert s.recv(100) == b""
        assert t.end()["end"] == "returned"
        assert t.proc.returncode == 0
        _all_gone(t.pids())
        assert len(t.seen("closed")) == 7  # every connection in every loop got closed
        for s in held:
            assert s.recv(100) == b""
            s.close()


@pytest.mark.rule("LOOPS-5")
def test_sigint_to_one_loop_stops_every_loop() -> None:
    with tree(2, "tcp4://127.0.0.1:0") as t:
        t.ready(2)
        os.kill(t.seen("ready")[1]["pid"], signal.SIGINT)
        assert t.end()["end"] == "returned"
        assert len(t.seen("ready")) == 2  # stopped, not died: nothing was restarted
        _all_gone(t.pids())


@pytest.mark.rule("LOOPS-6")
@pytest.mark.parametrize("sig, end", [(signal.SIGTERM, "returned"),
                                      (signal.SIGINT, "interrupted")])
def test_sigint_or_sigterm_to_the_parent_stops_every_loop(sig: int, end: str) -> None:
    with tree(2, "tcp4://127.0.0.1:0") as t:
        t.ready(2)
        held = socket.create_connection(_addr(t), timeout=DEADLINE)
        held.sendall(b"pid\n")
        held.makefile().readline()
        t.proc.send_signal(sig)
        assert t.end()["end"] == end
        _all_gone(t.pids())
        assert len(t.seen("closed")) == 1
        assert held.recv(100) == b""
        held.close()


@pytest.mark.rule("LOOPS-6")
def test_a_loop_that_will_not_stop_is_killed_after_ten_seconds() -> None:
    with tree(2, "tcp4://127.0.0.1:0") as t:
        t.ready(2)
        stuck = socket.create_connection(_addr(t), timeout=DEADLINE)
        stuck.sendall(b"sleep 60\n")
        time.sleep(0.3)  # it is asleep in its callback now
        asked = time.monotonic()
        t.proc.send_signal(signal.SIGTERM)
        t.proc.wait(DEADLINE + 10)
        took = time.monotonic() - asked
        assert 9.5 <= took < 15, took
        assert t.end()["end"] == "returned"
        assert "did not stop in 10 s: killing it" in t.stderr
        _all_gone(t.pids())
        stuck.close()


@pytest.mark.rule("LOOPS-6", "LOOPS-7")
def test_the_loops_keep_the_signal_handlers_from_before_serve() -> None:
    with tree(2, "tcp4://127.0.0.1:0") as t:
        t.ready(2)
        victim = t.seen("ready")[0]
        # Not the parent's handler (which would stop everything): SIGTERM's default.
        os.kill(victim["pid"], signal.SIGTERM)
        t.ready(3)
        assert "died (killed by SIGTERM)" in t.stderr
        assert t.seen("ready")[2]["ready"] == victim["ready"]
        assert t.proc.poll() is None and not t.seen("end")


# ------------------------------------------------------------------ LOOPS-7


@pytest.mark.rule("LOOPS-7")
def test_a_killed_loop_is_replaced_and_no_connection_is_refused() -> None:
    with tree(2, "tcp4://127.0.0.1:0") as t:
        t.ready(2)
        victim = t.seen("ready")[1]
        os.kill(victim["pid"], signal.SIGKILL)
        answered = collections.Counter()
        end = time.monotonic() + DEADLINE
        while len(t.seen("ready")) < 3 or len(answered) < 2:
            assert time.monotonic() < end, (answered, t.lines)
            answered[int(_ask(_addr(t))[0])] += 1  # a refusal would raise here
        new = t.seen("ready")[2]
        assert new["ready"] == victim["ready"] and new["pid"] != victim["pid"]
        assert _children(t.proc.pid) == t.pids() - {victim["pid"]}
        for _ in range(60):
            answered[int(_ask(_addr(t))[0])] += 1
        assert new["pid"] in answered and victim["pid"] not in answered
        assert "died (killed by SIGKILL)" in t.stderr
        t.proc.send_signal(signal.SIGTERM)
        assert t.end()["end"] == "returned"
        _all_gone(t.pids())


@pytest.mark.rule("LOOPS-7")
def test_a_loop_that_keeps_dying_is_restarted_with_growing_delays() -> None:
    with tree(2, "tcp4://127.0.0.1:0") as t:
        t.ready(2)
        starts = [time.monotonic()]
        for n in range(3, 6):
            newest = [x["pid"] for x in t.seen("ready") if x["ready"] == 1][-1]
            os.kill(newest, signal.SIGKILL)
            t.ready(n)
            starts.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps[2] > gaps[0] and gaps[2] >= 0.35, gaps  # 0.1, 0.2, 0.4 s
        assert "starting a new one in 0.4 s" in t.stderr


# ------------------------------------------------------------------ LOOPS-8


@pytest.mark.rule("LOOPS-8")
@pytest.mark.parametrize("where", ["serving", "tick"])
def test_an_exception_in_one_loop_is_raised_by_serve_in_the_parent(where: str) -> None:
    with tree(2, "tcp4://127.0.0.1:0", fail=where) as t:
        t.ready(2)
        end = t.end()
        assert end["end"] == "raised" and end["type"] == "ValueError"
        assert end["message"] == f"{where} failed in loop 1"
        assert "raised in loop 1" in end["notes"][0] and "Traceback" in end["notes"][0]
        assert len(t.seen("ready")) == 2  # the failed loop was not restarted
        _all_gone(t.pids())


# ------------------------------------------------------------------ LOOPS-9


@pytest.mark.rule("LOOPS-9")
def test_the_loops_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    with tree(2, "tcp4://127.0.0.1:0", f"unix://{tmp_path / 's.sock'}") as t:
        t.ready(2)
        held = socket.create_connection(_addr(t), timeout=DEADLINE)
        held.sendall(b"pid\n")
        held.makefile().readline()
        t.proc.kill()
        t.proc.wait(DEADLINE)
        _all_gone(t.pids())
        assert held.recv(100) == b""  # closed by its loop on the way out
        held.close()
        wait_for(lambda: len(t.seen("closed")) == 1, what="closed to be called")


# ------------------------------------------------------------------ LOOPS-10


def _example(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.rule("LOOPS-10")
@pytest.mark.parametrize("script, ask, want", [
    ("examples/echo_server.py", b"hello\n", b"hello\n"),
    ("examples/http_server.py", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
     b"HTTP/1.1 200 OK"),
])
def test_the_echo_and_http_examples_take_loops(script: str, ask: bytes, want: bytes) -> None:
    port = _free_port()
    extra = ["--no-tls"] if "http" in script else ["--quiet"]
    p = _example([script, "--port", str(port), "--loops", "2", *extra])
    try:
        assert p.stdout is not None
        stdout, out = p.stdout, list[str]()
        threading.Thread(target=lambda: out.extend(iter(stdout.readline, "")),
                         daemon=True).start()
        # Each loop prints its line (PYTHONUNBUFFERED may interleave them).
        wait_for(lambda: "".join(out).count("listening") == 2, what="two loops listening")
        wait_for(lambda: len(_children(p.pid)) == 2, what="two loop processes")
        kids = _children(p.pid)
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
                s.sendall(ask)
                assert s.recv(1000).startswith(want)
        p.send_signal(signal.SIGTERM)
        assert p.wait(DEADLINE) == 0
        _all_gone(kids)
    finally:
        p.kill()
        p.wait(DEADLINE)


@pytest.mark.rule("LOOPS-10")
def test_the_redis_clone_keeps_one_loop_and_says_why() -> None:
    out = subprocess.run([sys.executable, "examples/redis_server.py", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=DEADLINE)
    assert "runs one loop" in " ".join(out.stdout.split())
    refused = subprocess.run([sys.executable, "examples/redis_server.py", "--loops", "2"],
                             cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)
    assert refused.returncode == 2 and "unrecognized arguments: --loops" in refused.stderr

