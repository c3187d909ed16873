"""Errors that name the address: every bind, listen or unix-path failure is
an `evio.BindError` (an ``OSError`` with the system's errno) whose message
names the address as written and, for the common causes, the fix (ADDR-11).

Real sockets and real files: a port held by another socket (the second of
two addresses, so the message must say which), an address no interface
has, a privileged port bound by an unprivileged process (a child process
that drops to ``nobody``), a unix path in a missing directory, a live
server on a unix path, a path that is not a socket. Nothing stays bound.
"""

from __future__ import annotations

import errno
import os
import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import Recorder, echo_events, running
from implementation import evio

pytestmark = pytest.mark.feature("bind-errors")

ROOT = Path(__file__).resolve().parent.parent


def _serve_fails(*addrs: str) -> evio.BindError:
    with pytest.raises(evio.BindError) as e:
        evio.serve(evio.Events(), *addrs)
    assert isinstance(e.value, OSError)
    return e.value


@pytest.mark.rule("ADDR-11")
def test_a_port_in_use_names_the_address_that_failed(poller: evio.PollerName) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        free = "tcp4://127.0.0.1:0"
        taken = f"tcp4://127.0.0.1:{port}"
        with pytest.raises(evio.BindError) as e:
            evio.serve(evio.Events(), free, taken, poller=poller)
        err = e.value
    finally:
        holder.close()
    assert err.errno == errno.EADDRINUSE
    assert err.address == taken
    assert taken in str(err) and "another port" in str(err)
    assert free not in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.errno, str(again), again.address) == (
        evio.BindError, err.errno, str(err), err.address)


@pytest.mark.rule("ADDR-11")
def test_an_address_no_interface_has() -> None:
    err = _serve_fails("tcp4://192.0.2.1:0")  # TEST-NET-1: on no interface
    assert err.errno == errno.EADDRNOTAVAIL
    assert "192.0.2.1" in str(err) and "no network interface" in str(err)


@pytest.mark.rule("ADDR-11")
def test_a_unix_path_in_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "s.sock"
    err = _serve_fails(f"unix://{path}")
    assert err.errno == errno.ENOENT
    assert str(path) in str(err) and "does not exist" in str(err)
    assert str(tmp_path / "missing") in str(err)


@pytest.mark.rule("ADDR-11")
def test_a_live_server_on_the_unix_path(tmp_path: Path, poller: str) -> None:
    path = tmp_path / "s.sock"
    with running(echo_events(Recorder()), f"unix://{path}", poller=poller):
        err = _serve_fails(f"unix://{path}")
        assert path.exists(), "the live server's socket file was removed"
    assert err.errno == errno.EADDRINUSE
    assert "a server is listening there" in str(err)


@pytest.mark.rule("ADDR-11")
def test_a_unix_path_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    err = _serve_fails(f"unix://{path}")
    assert err.errno == errno.EEXIST
    assert "is not a socket" in str(err)
    assert path.read_text() == "keep me"


_PRIVILEGED = textwrap.dedent("""
    import os, sys
    import evio  # and everything it needs, while the files can still be read
    import importlib, pkgutil, selectors, errno, stat, fcntl, termios
    for m in pkgutil.iter_modules(evio.__path__, evio.__name__ + "."):
        importlib.import_module(m.name)  # its own modules too: nobody may not read them
    import encodings.idna, socket
    socket.getaddrinfo("127.0.0.1", 81)  # warms up what resolving needs
    os.setgid(65534)
    os.setuid(65534)  # nobody: no CAP_NET_BIND_SERVICE
    try:
        evio.serve(evio.Events(), "tcp4://127.0.0.1:81")
    except evio.BindError as e:
        print(e.errno, e.address, str(e), sep="\\n")
""")


@pytest.mark.rule("ADDR-11")
def test_a_privileged_port_says_how_to_get_one() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if start.exists() and int(start.read_text()) <= 81:
        pytest.skip("this kernel lets anyone bind port 81")
    out = subprocess.run([sys.executable, "-c", _PRIVILEGED], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60, cwd="/")
    lines = out.stdout.splitlines()
    assert len(lines) == 3, (out.stdout, out.stderr)
    assert int(lines[0]) == errno.EACCES
    assert lines[1] == "tcp4://127.0.0.1:81"
    assert "privileged" in lines[2] and "CAP_NET_BIND_SERVICE" in lines[2]
