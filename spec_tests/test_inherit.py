"""Inherited and pre-bound sockets: socket objects, ``fd://N``, and systemd
socket activation (ADDR-12).

Real descriptors: sockets bound by the test and handed over as objects or
as ``fd://N``, for every family and poller; bad descriptors refused before
anything is touched; and a child process started the way systemd starts
one -- an exec wrapper puts the listening socket at descriptor 3, sets
``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` to its own pid and
execs the server, which serves ``evio.listen_fds()`` with one loop and with
two, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from harness import DEADLINE, Recorder, echo_events, recv_exactly, running
from implementation import evio

pytestmark = pytest.mark.feature("inherited-sockets")

ROOT = Path(__file__).resolve().parent.parent


def _bound(family: str, tmp_path: Path, listening: bool) -> socket.socket:
    if family == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp_path / "pre.sock"))
    elif family == "tcp6":
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
    else:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
    if listening:
        s.listen()
    return s


@pytest.mark.rule("ADDR-12")
@pytest.mark.parametrize("listening", [True, False])
def test_a_bound_socket_object_is_served(poller: str, family: str, tmp_path: Path,
                                         listening: bool) -> None:
    sock = _bound(family, tmp_path, listening)
    where = sock.getsockname()
    rec = Recorder()
    with running(echo_events(rec), sock, poller=poller) as r:  # type: ignore[arg-type]
        assert sock.fileno() == -1, "serve() did not take the socket over"
        assert r.addrs[0] == where
        c = r.connect()
        c.sendall(b"pre-bound")
        assert recv_exactly(c, 9) == b"pre-bound"
    if family == "unix":
        assert (tmp_path / "pre.sock").exists(), "removed a socket file evio did not create"


@pytest.mark.rule("ADDR-12")
def test_an_inherited_descriptor_is_served_as_fd_n(poller: str, tmp_path: Path) -> None:
    tcp = _bound("tcp4", tmp_path, listening=True)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp_fd, udp_fd = tcp.detach(), udp.detach()  # as a parent process would pass them
    rec = Recorder()
    with running(echo_events(rec), f"fd://{tcp_fd}", f"fd://{udp_fd}", poller=poller) as r:
        c = r.connect()
        c.sendall(b"inherited")
        assert recv_exactly(c, 9) == b"inherited"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(DEADLINE)
            u.sendto(b"datagram", r.addrs[1])
            assert u.recvfrom(100)[0] == b"datagram"
    for fd in (tcp_fd, udp_fd):
        with pytest.raises(OSError):
            os.fstat(fd)  # closed by serve()


@pytest.mark.rule("ADDR-12")
def test_bad_inherited_sockets_are_refused_before_anything_is_bound(tmp_path: Path) -> None:
    r, w = os.pipe()
    unbound = socket.socket()
    closed = socket.socket()
    closed.close()
    bound = _bound("tcp4", tmp_path, listening=False)
    try:
        cases = [(f"fd://{r}", "not a socket"), ("fd://987654", "not open"),
                 (f"fd://{unbound.fileno()}", "not bound"), ("fd://x", "descriptor number"),
                 (closed, "closed")]
        for bad, why in cases:
            with pytest.raises(ValueError, match=why):
                evio.serve(evio.Events(), bound, bad)  # type: ignore[arg-type]
            assert bound.fileno() != -1, "taken over though serve() refused to start"
        os.fstat(r)  # still open: serve() refused it without touching it
    finally:
        for fd in (r, w):
            os.close(fd)
        unbound.close()
        bound.close()


_SERVER = textwrap.dedent("""
    import os, sys
    import evio

    def serving(server):
        line = f"serving {os.getpid()} {server.loop_index} {server.addrs}\\n"
        os.write(1, line.encode())  # one write: two loops share the pipe

    def closed(cid, err):
        os.write(1, b"closed %d\\n" % cid)  # one write: two loops share the pipe

    fds = evio.listen_fds(name="web", unset_environment=True)
    print("fds", " ".join(fds), "env", os.environ.get("LISTEN_FDS"), flush=True)
    evio.serve(evio.Events(serving=serving, data=lambda cid, d: d, closed=closed), *fds,
               loops=int(sys.argv[1]))
    print("returned", flush=True)
""")

_WRAPPER = textwrap.dedent("""
    # What systemd does between fork and exec (sd_listen_fds(3)).
    import os, sys
    fd = int(sys.argv[1])
    os.dup2(fd, 3)  # the sockets start at descriptor 3, inheritable
    if fd != 3:
        os.close(fd)
    os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="web", LISTEN_PID=str(os.getpid()))
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[2], sys.argv[3]])
""")


@pytest.mark.timeout(60)
@pytest.mark.rule("ADDR-12", "LOOP-26")
@pytest.mark.parametrize("loops", [1, 2])
def test_a_process_started_the_way_systemd_starts_it(loops: int) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, str(listener.fileno()), _SERVER, str(loops)],
        pass_fds=[listener.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd="/")
    listener.close()  # the child has it now
    lines: list[str] = []
    err = ""
    got: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):  # a line as soon as it is written
            got.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    try:
        while sum(line.startswith("serving") for line in lines) < loops:
            try:
                lines.append(got.get(timeout=DEADLINE))
            except queue.Empty:
                proc.kill()
                raise AssertionError(f"no serving after {DEADLINE}s: {lines} "
                                     f"{proc.stderr.read() if proc.stderr else ''}") from None
        assert lines[0] == "fds fd://3 env None", lines
        assert f"('127.0.0.1', {port})" in lines[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
                   for _ in range(4)]
        for i, c in enumerate(clients):
            c.sendall(b"activated %d" % i)
            assert recv_exactly(c, 11) == b"activated %d" % i
        proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE)
        assert proc.stderr is not None
        err = proc.stderr.read()
        while True:
            try:
                lines.append(got.get(timeout=DEADLINE))
            except queue.Empty:
                break
            if lines[-1] == "returned":
                break
        for c in clients:
            c.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (lines, err)
    assert sum(line.startswith("closed") for line in lines) == 4, lines
    assert lines[-1] == "returned", lines


@pytest.mark.rule("ADDR-12")
def test_listen_fds_reads_the_environment_for_this_process_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "3")
    monkeypatch.setenv("LISTEN_FDNAMES", "web:admin:web")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    assert evio.listen_fds() == []  # meant for another process
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    assert evio.listen_fds() == ["fd://3", "fd://4", "fd://5"]
    assert evio.listen_fds("web") == ["fd://3", "fd://5"]
    assert evio.listen_fds("admin", unset_environment=True) == ["fd://4"]
    assert "LISTEN_FDS" not in os.environ and evio.listen_fds() == []
    monkeypatch.setenv("LISTEN_FDS", "x")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    with pytest.raises(ValueError, match="LISTEN_FDS"):
        evio.listen_fds()


