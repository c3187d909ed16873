"""Conformance: N loops in N processes under a supervisor (docs/spec/loops.md).

Every server here is a real process tree: ``python -c _SERVER`` calls
``serve(..., loops=N)`` on its main thread and its loops are forked
children. Each loop answers with its pid, so a test can tell which process
served it; the tests find the processes by pid in ``/proc``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
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
import errno, json, os, sys, threading, time
import evio

loops, fail = sys.argv[1], sys.argv[2]
addrs = sys.argv[3:]
state = {}

# While the file EVIO_FORK_FAILS names exists, fork fails as at the process
# limit: the supervisor's real fork, refused with EAGAIN.
flag, real_fork = os.environ.get("EVIO_FORK_FAILS"), os.fork
def failing_fork():
    if os.path.exists(flag):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
    return real_fork()
if flag:
    os.fork = failing_fork

class Custom(Exception):
    pass

if os.environ.get("EVIO_OWN_SIGTERM"):  # a handler of the caller's own: left alone
    import signal
    def own(signum, frame):
        os.write(1, b'{"own": "SIGTERM"}\n')
        raise SystemExit(3)
    signal.signal(signal.SIGTERM, own)

class Unpicklable(Exception):
    def __init__(self, text):
        super().__init__(text)
        self.lock = threading.Lock()  # pickle cannot carry a lock

def say(**kw):  # one write: lines from several processes never interleave
    os.write(1, (json.dumps(kw) + "\n").encode())

def serving(server):
    state["server"] = server
    say(ready=server.loop_index, loops=server.loops, pid=os.getpid(),
        addrs=[list(a) if isinstance(a, tuple) else a for a in server.addrs])
    if fail == "serving" and server.loop_index == 1:
        raise ValueError("serving failed in loop 1")
    if fail == "custom" and server.loop_index == 1:
        raise Custom("custom failed in loop 1")
    if fail == "unpicklable" and server.loop_index == 1:
        raise Unpicklable("unpicklable failed in loop 1")

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
        notes=getattr(e, "__notes__", []), oserror=isinstance(e, OSError),
        errno=getattr(e, "errno", None))
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
                 poller: str | None = None, fork_fails: Path | None = None,
                 own_sigterm: bool = False) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("EVIO_TEST_POLLER", "EVIO_FORK_FAILS", "EVIO_OWN_SIGTERM")}
        if own_sigterm:
            env["EVIO_OWN_SIGTERM"] = "1"
        if poller is not None:
            env["EVIO_TEST_POLLER"] = poller
        if fork_fails is not None:
            env["EVIO_FORK_FAILS"] = str(fork_fails)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(loops), fail, *addrs], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # its own process group, for a Ctrl-C to all of it
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
        if self.proc.poll() is not None:  # it ended: let the readers catch up first
            for r in self.readers:
                r.join(DEADLINE)
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
         poller: str | None = None, fork_fails: Path | None = None,
         own_sigterm: bool = False) -> Iterator[Tree]:
    t = Tree(loops, *addrs, fail=fail, poller=poller, fork_fails=fork_fails,
             own_sigterm=own_sigterm)
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
        # One accept queue, watched by every loop (LOOPS-3): which loop wins a
        # race is the scheduler's, so each loop is shown answering while the
        # other is stopped.
        for paused in sorted(t.pids()):
            (other,) = t.pids() - {paused}
            os.kill(paused, signal.SIGSTOP)
            try:
                answered = collections.Counter(_ask(_addr(t))[0] for _ in range(10))
            finally:
                os.kill(paused, signal.SIGCONT)
            assert {int(p) for p in answered} == {other}, answered


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
def test_a_udp_socket_is_shared_by_every_loop() -> None:
    with tree(2, "udp4://127.0.0.1:0") as t:
        t.ready(2)
        bound = _addr(t)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sleeper, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            sleeper.settimeout(DEADLINE)
            s.settimeout(1.0)
            sleeper.sendto(b"sleep 1.5\n", bound)  # one loop sleeps in data()
            time.sleep(0.2)
            answered = set()
            for _ in range(5):  # the other reads every datagram meanwhile
                s.sendto(b"pid\n", bound)
                answered.add(int(s.recv(100).split()[0]))
            slept = int(sleeper.recv(100).split()[0])
        assert len(answered) == 1 and answered | {slept} == t.pids(), (answered, slept)


def _listening(port: int) -> int:
    """How many TCP sockets listen on ``port`` (``/proc/net/tcp``, state 0A)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for ln in lines
               if ln.split()[1].endswith(f":{port:04X}") and ln.split()[3] == "0A")


@pytest.mark.rule("LOOPS-3")
def test_every_loop_accepts_from_one_socket_bound_once(poller: str) -> None:
    with tree(2, "tcp4://127.0.0.1:0", poller=poller) as t:
        t.ready(2)
        port = _addr(t)[1]
        assert _listening(port) == 1  # not one socket per loop
        # Nobody can join it with SO_REUSEPORT either: the socket does not allow it.
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError) as e:
                s.bind(("127.0.0.1", port))
            assert e.value.errno == errno.EADDRINUSE


@pytest.mark.rule("LOOPS-3")
@pytest.mark.parametrize("scheme", ["tcp4", "udp4"])
@pytest.mark.parametrize("second", [1, 2])
def test_a_second_server_on_the_same_address_fails_to_start(scheme: str, second: int) -> None:
    with tree(2, f"{scheme}://127.0.0.1:0") as first:
        first.ready(2)
        port = _addr(first)[1]
        with tree(second, f"{scheme}://127.0.0.1:{port}") as t:
            end = t.end()
            assert end["end"] == "raised" and end["oserror"], end
            assert end["errno"] == errno.EADDRINUSE, end  # "Address already in use"
            assert not t.seen("ready")  # nothing was started
        assert first.proc.poll() is None  # the first one is unharmed
        if scheme == "tcp4":
            for _ in range(10):
                assert int(_ask(_addr(first))[0]) in first.pids()


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


@pytest.mark.rule("LOOPS-5", "LOOPS-6")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_to_one_loop_stops_every_loop(sig: int) -> None:
    with tree(2, "tcp4://127.0.0.1:0") as t:
        t.ready(2)
        os.kill(t.seen("ready")[1]["pid"], sig)
        assert t.end()["end"] == "returned"
        assert len(t.seen("ready")) == 2  # stopped, not died: nothing was restarted
        _all_gone(t.pids())


@pytest.mark.rule("LOOPS-6")
@pytest.mark.parametrize("group", [False, True], ids=["parent", "process-group"])
@pytest.mark.parametrize("sig, end", [(signal.SIGTERM, "returned"),
                                      (signal.SIGHUP, "returned"),
                                      (signal.SIGINT, "interrupted")])
def test_a_stop_signal_to_the_parent_or_its_group_stops_every_loop(
        tmp_path: Path, poller: str, sig: int, end: str, group: bool) -> None:
    path = tmp_path / "s.sock"
    with tree(2, "tcp4://127.0.0.1:0", f"unix://{path}", poller=poller) as t:
        t.ready(2)
        held = [socket.create_connection(_addr(t), timeout=DEADLINE) for _ in range(4)]
        for s in held:
            s.sendall(b"pid\n")
            s.makefile().readline()
        if group:  # as Ctrl-C in a terminal, or a service manager, signals every process
            os.killpg(t.proc.pid, sig)
        else:
            t.proc.send_signal(sig)
        assert t.end()["end"] == end
        assert t.proc.returncode == 0
        _all_gone(t.pids())
        assert len(t.seen("ready")) == 2  # stopped, not died: nothing was restarted
        assert len(t.seen("closed")) == 4  # every connection got its closed
        for s in held:
            assert s.recv(100) == b""
            s.close()
        assert "Traceback" not in t.stderr and "died" not in t.stderr, t.stderr
    assert not path.exists()


@pytest.mark.rule("LOOPS-6")
def test_a_stop_signal_with_a_handler_of_your_own_is_left_to_it(tmp_path: Path) -> None:
    # The caller's SIGTERM handler raises SystemExit inside serve(): the
    # loops are still stopped cleanly (every connection closed), not killed.
    path = tmp_path / "s.sock"
    with tree(2, "tcp4://127.0.0.1:0", f"unix://{path}", own_sigterm=True) as t:
        t.ready(2)
        held = [socket.create_connection(_addr(t), timeout=DEADLINE) for _ in range(4)]
        for s in held:
            s.sendall(b"pid\n")
            s.makefile().readline()
        t.proc.send_signal(signal.SIGTERM)
        assert t.proc.wait(DEADLINE) == 3
        wait_for(lambda: t.seen("own"), what="the caller's handler to run")
        _all_gone(t.pids())
        wait_for(lambda: len(t.seen("closed")) == 4, what="every connection's closed")
        assert "Traceback" not in t.stderr or "SystemExit" in t.stderr
        for s in held:
            assert s.recv(100) == b""
            s.close()
    assert not path.exists()


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
        # Not a stop signal, and not the parent's handler: SIGUSR1's default ends it.
        os.kill(victim["pid"], signal.SIGUSR1)
        t.ready(3)
        assert "died (killed by SIGUSR1)" in t.stderr
        assert t.seen("ready")[2]["ready"] == victim["ready"]
        assert t.proc.poll() is None and not t.seen("end")


# ------------------------------------------------------------------ LOOPS-7


@pytest.mark.rule("LOOPS-7")
def test_a_killed_loop_is_replaced_and_no_connection_is_refused() -> None:
    with tree(2, "tcp4://127.0.0.1:0") as t:
        t.ready(2)
        victim = t.seen("ready")[1]
        os.kill(victim["pid"], signal.SIGKILL)
        answered: collections.Counter[int] = collections.Counter()
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
def test_a_loop_crashing_again_and_again_strands_no_connection(poller: str) -> None:
    with tree(2, "tcp4://127.0.0.1:0", poller=poller) as t:
        ready = t.ready(2)
        survivor = next(x["pid"] for x in ready if x["ready"] == 0)
        stop = threading.Event()

        def crash_loop() -> None:  # kill loop 1 each time it comes back
            while not stop.is_set():
                for x in t.seen("ready"):
                    if x["ready"] == 1:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(x["pid"], signal.SIGKILL)
                time.sleep(0.002)

        killer = threading.Thread(target=crash_loop)
        killer.start()
        try:
            time.sleep(0.1)
            # Each new client is answered, by the survivor or a short-lived new
            # loop 1; none waits in a queue that nobody accepts from (that one
            # would time out). A client a new loop 1 had accepted when it was
            # killed dies with it: a reset or an end of stream, never a wait.
            answered = 0
            for _ in range(40):
                try:
                    words = _ask(_addr(t), timeout=2.0)
                except ConnectionResetError:
                    continue
                if words:  # a new loop 1 may answer before its ready line is read
                    wait_for(lambda w=int(words[0]): w in t.pids(), what="the answering loop")
                    answered += 1
            assert answered >= 30, f"only {answered} of 40 clients answered"
        finally:
            stop.set()
            killer.join(DEADLINE)
        assert t.proc.poll() is None and _alive(survivor)
        assert "died (killed by SIGKILL)" in t.stderr


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
        assert gaps[2] > gaps[0] and gaps[2] >= 0.15, gaps  # at once, 0.1, 0.2 s
        assert "starting a new one now" in t.stderr
        assert "starting a new one in 0.1 s" in t.stderr
        assert "starting a new one in 0.2 s" in t.stderr


@pytest.mark.rule("LOOPS-7", "LOOPS-11")
def test_while_fork_fails_the_other_loops_serve_and_the_slot_is_filled_later(
        tmp_path: Path, poller: str) -> None:
    flag = tmp_path / "fork-fails"
    with tree(2, "tcp4://127.0.0.1:0", poller=poller, fork_fails=flag) as t:
        ready = t.ready(2)
        victim = next(x for x in ready if x["ready"] == 1)
        survivor = next(x["pid"] for x in ready if x["ready"] == 0)
        flag.touch()
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(lambda: t.stderr.count("fork failed") >= 2, what="two failed forks")
        assert "cannot start loop 1: fork failed" in t.stderr
        assert "1 of 2 loop(s) serving" in t.stderr
        # The survivor takes every new connection; none waits for loop 1.
        for _ in range(30):
            assert int(_ask(_addr(t), timeout=2.0)[0]) == survivor
        assert t.proc.poll() is None and not t.seen("end")
        flag.unlink()
        new = t.ready(3)[2]  # retried with back-off: the slot is filled again
        assert new["ready"] == 1 and new["pid"] != victim["pid"]
        t.proc.send_signal(signal.SIGTERM)
        assert t.end()["end"] == "returned"
        _all_gone(t.pids())


@pytest.mark.rule("LOOPS-11")
@pytest.mark.parametrize("when", ["at-start", "after-every-loop-died"])
def test_when_fork_fails_and_no_loop_is_running_serve_raises(
        tmp_path: Path, when: str) -> None:
    flag = tmp_path / "fork-fails"
    if when == "at-start":
        flag.touch()
    with tree(2, "tcp4://127.0.0.1:0", fork_fails=flag) as t:
        if when == "after-every-loop-died":
            ready = t.ready(2)
            flag.touch()
            for x in ready:
                os.kill(x["pid"], signal.SIGKILL)
        end = t.end()
        assert end["end"] == "raised" and end["type"] == "BlockingIOError", end
        assert any("no loop was running" in n for n in end["notes"]), end
        assert "no loop is running; stopping" in t.stderr
        _all_gone(t.pids())


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


@pytest.mark.rule("LOOPS-8")
def test_an_exception_pickle_can_carry_keeps_its_own_type() -> None:
    with tree(2, "tcp4://127.0.0.1:0", fail="custom") as t:
        end = t.end()
        assert (end["end"], end["type"], end["message"]) == (
            "raised", "Custom", "custom failed in loop 1")
        assert "Traceback" in end["notes"][0]


@pytest.mark.rule("LOOPS-8")
def test_an_exception_pickle_cannot_carry_arrives_with_its_type_name_and_traceback() -> None:
    with tree(2, "tcp4://127.0.0.1:0", fail="unpicklable") as t:
        end = t.end()
        assert end["end"] == "raised" and end["type"] == "RuntimeError", end
        assert "__main__.Unpicklable: unpicklable failed in loop 1" in end["message"]
        assert "raised in loop 1" in end["notes"][0]
        assert "Traceback" in end["notes"][0] and "Unpicklable" in end["notes"][0]
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



@pytest.mark.rule("LOOPS-6", "LOOPS-10")
@pytest.mark.parametrize("script", ["examples/echo_server.py", "examples/http_server.py"])
@pytest.mark.parametrize("how", ["SIGHUP", "SIGINT to the group", "SIGTERM",
                                 "SIGTERM to the group"])
def test_the_examples_with_loops_stop_cleanly_on_every_stop_signal(
        tmp_path: Path, script: str, how: str) -> None:
    sock = tmp_path / "s.sock"
    extra = ["--tlsport", "0"] if "http" in script else ["--quiet"]
    p = subprocess.Popen([sys.executable, script, "--port", "0", "--loops", "2",
                          "--unixsocket", str(sock), *extra], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        assert p.stdout is not None
        stdout, out = p.stdout, list[str]()
        reader = threading.Thread(target=lambda: out.extend(iter(stdout.readline, "")),
                                  daemon=True)
        reader.start()
        wait_for(lambda: "".join(out).count("listening") == 2, what="two loops listening")
        kids = _children(p.pid)
        scratch = [Path(line.split("CA file: ")[1].strip()).parent
                   for line in list(out) if "CA file: " in line]
        assert scratch or "echo" in script
        assert sock.exists()
        sig = getattr(signal, how.split()[0])
        if "group" in how:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        assert p.wait(DEADLINE) == 0
        reader.join(DEADLINE)
        text = "".join(out)
        assert "Traceback" not in text and "died" not in text, text
        assert text.rstrip().endswith("server stopped"), text
        _all_gone(kids)
        assert not sock.exists()
        assert all(not d.exists() for d in scratch)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(DEADLINE)
