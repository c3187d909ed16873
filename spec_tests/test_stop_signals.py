"""Stop signals: a one-loop server stops cleanly on what a supervisor sends.

Real processes, one per test: a child runs `evio.serve` on the main
thread with one loop, three clients connect (two TCP, one unix socket),
one of them has megabytes of output pending that it reads only after the
signal. SIGTERM and SIGHUP make ``serve()`` return (exit status 0), SIGINT
raises ``KeyboardInterrupt`` after the same shutdown; every ``closed`` is
called, the pending output arrives whole, the unix socket file is gone, the
handlers from before are back (LOOP-26, LOOP-18). ``stop_signals=()``
opts out: SIGTERM kills the process as it always did. A peer that never
reads holds the shutdown for ``stop_timeout`` and no longer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from harness import DEADLINE, connect_to, recv_exactly
from implementation import evio

pytestmark = pytest.mark.feature("stop-signals")

ROOT = Path(__file__).resolve().parent.parent
BIG = 4 * 1024 * 1024

_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import evio

    poller, path, mode, stop_timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    BIG = 4 * 1024 * 1024

    def say(*words):
        print(*words, flush=True)

    def serving(server):
        say("port", server.addrs[0][1])

    def opened(cid, info):
        say("opened", cid)

    def data(cid, d):
        if d == b"big":
            return bytes(range(256)) * (BIG // 256)
        return d

    reported = set()

    def postwrite(cid, n, remaining):
        if remaining and cid not in reported:
            reported.add(cid)
            say("pending", cid)

    def closed(cid, err):
        say("closed", cid, type(err).__name__ if err is not None else "None")

    ev = evio.Events(serving=serving, opened=opened, data=data, postwrite=postwrite,
                     closed=closed)
    kw = {"stop_signals": ()} if mode == "optout" else {}
    started = 0.0
    try:
        evio.serve(ev, "tcp4://127.0.0.1:0", "unix://" + path, poller=poller,
                   stop_timeout=stop_timeout, **kw)
    except KeyboardInterrupt:
        say("KeyboardInterrupt", os.path.exists(path))
    else:
        say("returned", os.path.exists(path))
    say("handlers", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
        signal.getsignal(signal.SIGHUP) is signal.SIG_DFL,
        signal.getsignal(signal.SIGINT) is signal.default_int_handler)
""")


class _Server:
    """The child process, with its stdout read line by line."""

    def __init__(self, poller: str, path: Path, mode: str, stop_timeout: float = 10.0) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, poller, str(path), mode, str(stop_timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []

    def until(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"child ended after {self.lines!r}: "
                                     f"{self.proc.stderr.read() if self.proc.stderr else ''}")
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line.rstrip("\n")

    def finish(self) -> tuple[int, list[str]]:
        out, _ = self.proc.communicate(timeout=DEADLINE)
        self.lines += out.splitlines()
        return self.proc.returncode, self.lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def _clients(srv: _Server, path: Path) -> tuple[list[socket.socket], socket.socket]:
    port = int(srv.until("port").split()[1])
    clients = [connect_to(("127.0.0.1", port)), connect_to(("127.0.0.1", port)),
               connect_to(str(path))]
    for c in clients:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for i in range(3):
        srv.until(f"opened {i + 1}")
    clients[0].sendall(b"hi")
    assert recv_exactly(clients[0], 2) == b"hi"
    big = clients[2]
    big.sendall(b"big")
    srv.until("pending 3")
    return clients, big


@pytest.mark.timeout(60)
@pytest.mark.rule("LOOP-26", "LOOP-18", "LOOP-19")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_stops_one_loop_cleanly(poller: str, tmp_path: Path, sig: str) -> None:
    """SIGTERM / SIGHUP: serve() returns; SIGINT: KeyboardInterrupt, after the
    same shutdown. Every closed called, 4 MiB pending arrive whole, unix file
    removed, the default handlers back, exit status 0."""
    path = tmp_path / "s.sock"
    srv = _Server(poller, path, "default")
    clients: list[socket.socket] = []
    try:
        clients, big = _clients(srv, path)
        srv.proc.send_signal(getattr(signal, sig))
        got = recv_exactly(big, BIG)  # read only now: the flush must wait for us
        assert got == bytes(range(256)) * (BIG // 256)
        code, lines = srv.finish()
    finally:
        for c in clients:
            c.close()
        srv.kill()
    assert code == 0, lines
    closed = sorted(line for line in lines if line.startswith("closed"))
    assert closed == ["closed 1 None", "closed 2 None", "closed 3 None"], lines
    ending = "KeyboardInterrupt" if sig == "SIGINT" else "returned"
    assert f"{ending} False" in lines, lines  # the unix socket file is gone
    assert "handlers True True True" in lines, lines
    assert not path.exists()


@pytest.mark.timeout(60)
@pytest.mark.rule("LOOP-26")
def test_stop_signals_empty_opts_out(poller: str, tmp_path: Path) -> None:
    """``stop_signals=()``: SIGTERM keeps its default action and kills the process."""
    path = tmp_path / "s.sock"
    srv = _Server(poller, path, "optout")
    clients: list[socket.socket] = []
    try:
        clients, _ = _clients(srv, path)
        srv.proc.send_signal(signal.SIGTERM)
        code, lines = srv.finish()
    finally:
        for c in clients:
            c.close()
        srv.kill()
    assert code == -signal.SIGTERM, lines
    assert not any(line.startswith("closed") for line in lines), lines


@pytest.mark.timeout(60)
@pytest.mark.rule("LOOP-18", "LOOP-26")
def test_a_peer_that_never_reads_holds_shutdown_only_for_stop_timeout(
        poller: str, tmp_path: Path) -> None:
    """4 MiB pending to a peer that never reads: serve() returns about
    ``stop_timeout`` (0.5 s) after SIGTERM, the connection closed."""
    path = tmp_path / "s.sock"
    srv = _Server(poller, path, "default", stop_timeout=0.5)
    clients: list[socket.socket] = []
    try:
        clients, _ = _clients(srv, path)
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code, lines = srv.finish()
        took = time.monotonic() - start
    finally:
        for c in clients:
            c.close()
        srv.kill()
    assert code == 0, lines
    assert "closed 3 None" in lines, lines
    assert took < 0.5 + 8, f"shutdown took {took:.1f} s with stop_timeout=0.5"
    assert took >= 0.5, f"shutdown took {took:.2f} s: the flush did not wait for the peer"


@pytest.mark.rule("LOOP-26")
@pytest.mark.parametrize("bad, error", [
    ([signal.SIGKILL], ValueError), ((signal.SIGSTOP,), ValueError), ((99999,), ValueError),
    ("SIGTERM", TypeError), ((1.5,), TypeError), (15, TypeError),
])
def test_bad_stop_signals_are_refused_before_binding(bad: object, error: type) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(error, match="stop_signals"):
        evio.serve(evio.Events(), f"tcp4://127.0.0.1:{port}", stop_signals=bad)  # type: ignore[arg-type]


@pytest.mark.rule("LOOP-18")
@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), "1", True])
def test_bad_stop_timeout_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="stop_timeout"):
        evio.serve(evio.Events(), "tcp4://127.0.0.1:0", stop_timeout=bad)  # type: ignore[arg-type]
