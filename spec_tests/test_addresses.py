"""Conformance: addresses (docs/spec/addresses.md).

How ``scheme://address?option`` strings are read (ADDR-1 .. ADDR-6) and
what binding them does (ADDR-7 .. ADDR-10). Parsing is checked on
:func:`evio.parse_address` alone; everything else over real loopback
sockets and unix sockets under ``tmp_path``, with every poller.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Running, connect_to, echo_events, open_descriptors, recv_exactly, running
from implementation import evio, hook

Action = evio.Action

STOP_AT_ONCE = evio.Events(serving=lambda server: Action.SHUTDOWN)
"""For ``serve()`` called on the test thread: if it binds when it should
not, it returns at once (and the test fails) instead of serving forever."""


# ---------------------------------------------------------------- helpers


def echo(r: Running, index: int = 0, payload: bytes = b"ping") -> socket.socket:
    """Connect to listener ``index`` and check one echo round trip."""
    c = r.connect(index)
    c.sendall(payload)
    assert recv_exactly(c, len(payload)) == payload
    return c


def connect_host(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A client connected to ``host`` (IPv4 or IPv6 literal), ``port``."""
    return connect_to((host, port, 0, 0) if ":" in host else (host, port), timeout)


def refused(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` is refused."""
    try:
        connect_host(host, port, timeout=2.0).close()
    except ConnectionRefusedError:
        return True
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def nothing_left_bound(*paths: Path) -> Iterator[None]:
    """Check the block opens no lasting descriptor and leaves no unix socket file."""
    before = open_descriptors()
    yield
    assert open_descriptors() == before, "a descriptor was left open"
    for p in paths:
        assert not p.exists(), f"{p} was left behind"


def listener_option(bound: object, level: int, option: int) -> int:
    """``getsockopt`` on this process's listening socket bound to ``bound``."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # closed meanwhile
        with s:
            try:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and (
                    s.getsockname() == bound
                ):
                    return s.getsockopt(level, option)
            except OSError:
                pass
    raise AssertionError(f"no listening socket bound to {bound!r}")


def stale_socket_file(path: Path) -> None:
    """What a crashed server leaves: a socket file nobody listens on."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays


# ----------------------------------------------------------------- syntax


@pytest.mark.rule("ADDR-1")
@pytest.mark.parametrize("bare", [":5000", "127.0.0.1:5000", "[::1]:0", "localhost:80"])
def test_address_without_scheme_is_tcp(bare: str) -> None:
    a, b = evio.parse_address(bare), evio.parse_address("tcp://" + bare)
    assert a.text == bare
    assert (a.network, a.host, a.port, a.reuseport, a.portable) == (
        b.network, b.host, b.port, b.reuseport, b.portable
    )
    assert a.network == "tcp"


@pytest.mark.rule("ADDR-1")
def test_address_without_scheme_is_served_as_tcp(poller: str) -> None:
    with running(echo_events(), "127.0.0.1:0", poller=poller) as r:
        host, port = r.addrs[0]
        assert host == "127.0.0.1" and port != 0
        echo(r)


@pytest.mark.rule("ADDR-2")
@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("tcp://:1", "tcp"),
        ("TCP://:1", "tcp"),
        ("tcp4://127.0.0.1:1", "tcp4"),
        ("Tcp4://127.0.0.1:1", "tcp4"),
        ("tcp6://[::1]:1", "tcp6"),
        ("TCP6://[::1]:1", "tcp6"),
        ("unix:///tmp/x.sock", "unix"),
        ("UNIX:///tmp/x.sock", "unix"),
        ("udp://:53", "udp"),
        ("udp4://127.0.0.1:53", "udp4"),
        ("UDP6://[::1]:53", "udp6"),
    ],
)
def test_schemes_parse_in_any_case(text: str, network: str) -> None:
    a = evio.parse_address(text)
    assert a.network == network
    assert a.is_udp == network.startswith("udp")


@pytest.mark.rule("ADDR-2")
def test_scheme_case_does_not_matter_when_served(poller: str, tmp_path: Path) -> None:
    path = tmp_path / "upper.sock"
    with running(echo_events(), "TCP4://127.0.0.1:0", f"UNIX://{path}", poller=poller) as r:
        echo(r, 0)
        echo(r, 1)


@pytest.mark.rule("ADDR-3")
@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("tcp://[::1]:5000", "::1", 5000),
        ("tcp6://[fe80::1%lo]:7", "fe80::1%lo", 7),
        ("tcp4://127.0.0.1:65535", "127.0.0.1", 65535),
        ("tcp://:0", "", 0),
        ("tcp4://:080", "", 80),
        ("tcp://localhost:1", "localhost", 1),
    ],
)
def test_host_and_port(text: str, host: str, port: int) -> None:
    a = evio.parse_address(text)
    assert (a.host, a.port) == (host, port)


# (scheme, hosts that must accept, hosts that must refuse)
_EMPTY_HOST = [
    pytest.param("tcp", ["127.0.0.1", "::1"], [], id="tcp"),
    pytest.param("tcp4", ["127.0.0.1"], ["::1"], id="tcp4"),
    pytest.param("tcp6", ["::1"], ["127.0.0.1"], id="tcp6"),
]


@pytest.mark.rule("ADDR-3")
@pytest.mark.parametrize(("scheme", "accepts", "refuses"), _EMPTY_HOST)
def test_empty_host_means_every_interface_of_the_family(
    poller: str, scheme: str, accepts: list[str], refuses: list[str]
) -> None:
    with running(echo_events(), f"{scheme}://:0", poller=poller) as r:
        port = r.addrs[0][1]
        for host in accepts:
            c = connect_host(host, port)
            r.clients.append(c)
            c.sendall(host.encode())
            assert recv_exactly(c, len(host)) == host.encode()
        for host in refuses:
            assert refused(host, port), f"{scheme}://:port accepted a connection on {host}"


@pytest.mark.rule("ADDR-3")
def test_host_name_is_resolved(poller: str) -> None:
    want = socket.getaddrinfo("localhost", 0, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    with running(echo_events(), "tcp4://localhost:0", poller=poller) as r:
        assert r.addrs[0][0] == want
        echo(r)


@pytest.mark.rule("ADDR-4")
@pytest.mark.parametrize(
    ("query", "on"),
    [("", False), ("?reuseport=true", True), ("?reuseport=yes", True), ("?reuseport=1", True),
     ("?reuseport=false", False), ("?reuseport=no", False), ("?reuseport=0", False)],
)
def test_reuseport_sets_so_reuseport(poller: evio.PollerName, query: str, on: bool) -> None:
    assert evio.parse_address("tcp4://127.0.0.1:0" + query).reuseport is on
    with running(echo_events(), "tcp4://127.0.0.1:0" + query, poller=poller) as r:
        flag = listener_option(r.addrs[0], socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert bool(flag) is on
        # The effect: a second server may bind the same port only with reuseport.
        same_port = f"tcp4://127.0.0.1:{r.addrs[0][1]}{query}"
        if on:
            evio.serve(STOP_AT_ONCE, same_port, poller=poller)
        else:
            with pytest.raises(OSError) as e:
                evio.serve(STOP_AT_ONCE, same_port, poller=poller)
            assert e.value.errno == errno.EADDRINUSE
        echo(r)


@pytest.mark.rule("ADDR-5")
@pytest.mark.parametrize("choice", [None, "select"])
def test_net_scheme_selects_the_portable_poller(choice: str | None, tmp_path: Path) -> None:
    path = tmp_path / "net.sock"
    before = open_descriptors()
    with running(
        echo_events(), "tcp4://127.0.0.1:0", "tcp-net://127.0.0.1:0", f"unix-net://{path}",
        poller=choice,
    ) as r:
        assert r.server is not None and r.server.poller == "select"
        new = open_descriptors() - before
        assert not any("eventpoll" in target for _, target in new), "an epoll set was made"
        for i in range(3):
            echo(r, i)
    a = evio.parse_address("TCP-NET://127.0.0.1:0")
    assert (a.network, a.portable) == ("tcp", True)


@pytest.mark.rule("ADDR-5", "POLL-6")
def test_net_scheme_accepts_a_select_poller_instance(tmp_path: Path) -> None:
    SelectPoller = hook("poller_classes")["select"]

    with running(echo_events(), "tcp-net://127.0.0.1:0", poller=SelectPoller()) as r:
        assert r.server is not None and r.server.poller == "select"
        echo(r)


@pytest.mark.rule("ADDR-5")
@pytest.mark.parametrize("other", [p for p in evio.available_pollers() if p != "select"])
def test_net_scheme_with_another_poller_is_a_value_error(
    other: evio.PollerName, tmp_path: Path
) -> None:
    path = tmp_path / "a.sock"
    with nothing_left_bound(path), pytest.raises(ValueError):
        evio.serve(STOP_AT_ONCE, f"unix://{path}", "tcp-net://127.0.0.1:0", poller=other)


_MALFORMED = [
    "bogus://127.0.0.1:0",
    "tcpx://127.0.0.1:0",
    "tcp://127.0.0.1",
    "tcp://127.0.0.1:",
    "127.0.0.1",
    "tcp://127.0.0.1:http",
    "tcp://127.0.0.1:-1",
    "tcp://127.0.0.1:+1",
    "tcp://127.0.0.1:1e3",
    "tcp://127.0.0.1:\u0663",  # ARABIC-INDIC DIGIT THREE: a digit, but not decimal ASCII
    "tcp://127.0.0.1:65536",
    "tcp://127.0.0.1:99999999999999999999",
    "tcp://127.0.0.1:" + "9" * 5000,  # past int()'s own digit limit: still this error
    "tcp://[::1]:" + "1" * 5000,
    "unix:///tmp/" + "a" * 200,  # longer than sun_path
    "unix://@" + "a" * 200,
    "tcp://::1:5000",
    "tcp6://fe80::1:5000",
    "tcp://[::1]5000",
    "tcp://[::1:5000",
    "tcp://[]:5000",
    "tcp4://[::1]:5000",
    "udp4://[::1]:53",
    "unix://",
    "unix://?reuseport=true",
    pytest.param("tcp://127.0.0.1:0?backlog=5", marks=pytest.mark.rule("ADDR-4")),
    pytest.param("tcp://127.0.0.1:0?reuseport=maybe", marks=pytest.mark.rule("ADDR-4")),
    pytest.param("tcp://127.0.0.1:0?reuseport", marks=pytest.mark.rule("ADDR-4")),
    pytest.param("tcp://127.0.0.1:0?reuseport=", marks=pytest.mark.rule("ADDR-4")),
    pytest.param("tcp://127.0.0.1:0?reuseport=1&x=1", marks=pytest.mark.rule("ADDR-4")),
    "tcp://127.0.0.1:\\5000",
    "tcp6://127.0.0.1:0",
    "udp6://10.0.0.1:53",
]


@pytest.mark.rule("ADDR-6")
@pytest.mark.parametrize("text", _MALFORMED)
def test_malformed_address_is_a_value_error_naming_it(text: str) -> None:
    with pytest.raises(ValueError) as e:
        evio.parse_address(text)
    assert text in str(e.value)


@pytest.mark.rule("ADDR-6")
def test_the_longest_unix_path_is_accepted_and_one_byte_more_is_not(tmp_path: Path) -> None:
    most = hook("sun_path_max")
    prefix = f"{tmp_path}/"
    fits = prefix + "s" * (most - len(os.fsencode(prefix)))
    assert evio.parse_address(f"unix://{fits}").path == fits
    with pytest.raises(ValueError, match=re.escape(f"unix://{fits}x")):
        evio.parse_address(f"unix://{fits}x")


# (the bad address, what serve() raises)
_REFUSED_BEFORE_BINDING = [
    pytest.param("bogus://x", ValueError, id="unknown-scheme"),
    pytest.param("tcp4://127.0.0.1:99999", ValueError, id="port-range"),
    pytest.param("tcp4://127.0.0.1:0?reuse=1", ValueError, id="option"),
    # Resolution happens before binding too (ADDR-3): ".invalid" never resolves.
    pytest.param("tcp://no-such-host.invalid:0", ValueError, id="unresolvable"),
]


@pytest.mark.rule("ADDR-6", "UDP-10")
@pytest.mark.parametrize("setting", [
    {"udp_idle_timeout": 0}, {"udp_idle_timeout": -1.0}, {"udp_idle_timeout": float("inf")},
    {"udp_idle_timeout": float("nan")}, {"udp_idle_timeout": True},
    {"udp_idle_timeout": "60"}, {"udp_max_remotes": 0}, {"udp_max_remotes": 2.5},
], ids=repr)
def test_a_bad_udp_setting_is_refused_before_binding_any(
    poller: evio.PollerName, tmp_path: Path, setting: dict[str, Any]
) -> None:
    path = tmp_path / "first.sock"
    events = evio.Events(serving=lambda server: Action.SHUTDOWN, **setting)
    with nothing_left_bound(path), pytest.raises(ValueError, match=next(iter(setting))):
        evio.serve(events, f"unix://{path}", "tcp4://127.0.0.1:0", "udp4://127.0.0.1:0",
                   poller=poller)


@pytest.mark.rule("ADDR-2", "ADDR-3", "ADDR-6")
@pytest.mark.parametrize(("bad", "error"), _REFUSED_BEFORE_BINDING)
def test_serve_refuses_a_bad_address_before_binding_any(
    poller: evio.PollerName, tmp_path: Path, bad: str, error: type[Exception]
) -> None:
    path = tmp_path / "first.sock"
    with nothing_left_bound(path), pytest.raises(error, match=re.escape(bad)):
        evio.serve(STOP_AT_ONCE, f"unix://{path}", "tcp4://127.0.0.1:0", bad, poller=poller)


# ---------------------------------------------------------------- binding


# Two ways a port is busy. The test lists the port twice after a unix and a
# port-0 listener: with a foreign listener the first of the two binds fails,
# otherwise the second (evio's own first listener on it holds it).


def _port_held_by_a_plain_listener(stack: contextlib.ExitStack) -> int:
    blocker = stack.enter_context(socket.socket())
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    return int(blocker.getsockname()[1])


def _port_free_until_evio_binds_it(stack: contextlib.ExitStack) -> int:
    return free_port()


@pytest.mark.rule("ADDR-7")
@pytest.mark.parametrize(
    "busy", [_port_held_by_a_plain_listener, _port_free_until_evio_binds_it], ids=["foreign", "own"]
)
def test_failed_bind_leaves_nothing_bound(
    poller: evio.PollerName, tmp_path: Path, busy: Callable[[contextlib.ExitStack], int]
) -> None:
    path = tmp_path / "first.sock"
    with contextlib.ExitStack() as stack:
        port = busy(stack)
        addrs = [f"unix://{path}", "tcp4://127.0.0.1:0", f"tcp4://127.0.0.1:{port}",
                 f"tcp4://127.0.0.1:{port}"]
        with nothing_left_bound(path), pytest.raises(OSError) as e:
            evio.serve(STOP_AT_ONCE, *addrs, poller=poller)
        assert e.value.errno == errno.EADDRINUSE
    # Nothing holds the port any more: a plain socket can listen on it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()


@pytest.mark.rule("ADDR-8", "ADDR-3")
def test_addrs_are_the_real_bound_addresses_in_order(poller: str, tmp_path: Path) -> None:
    path = str(tmp_path / "evio.sock")
    port = free_port()
    given = ["tcp6://[::1]:0", f"unix://{path}", f"tcp4://127.0.0.1:{port}", "tcp4://127.0.0.1:0"]
    with running(echo_events(), *given, poller=poller) as r:
        v6, unix, fixed, v4 = r.addrs
        assert len(v6) == 4 and v6[0] == "::1" and v6[1] != 0
        assert unix == path
        assert fixed == ("127.0.0.1", port)
        assert len(v4) == 2 and v4[0] == "127.0.0.1" and v4[1] not in (0, port)
        for i, bound in enumerate(r.addrs):
            c = echo(r, i, b"to %d" % i)
            assert c.getpeername() == bound


@pytest.mark.rule("ADDR-9")
def test_relative_unix_path_is_relative_to_the_working_directory(
    poller: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with running(echo_events(), "unix://rel.sock", poller=poller) as r:
        assert r.addrs[0] == "rel.sock"
        assert (tmp_path / "rel.sock").is_socket()
        echo(r)
    assert not (tmp_path / "rel.sock").exists()


@pytest.mark.rule("ADDR-9", "ADDR-10")
def test_stale_socket_file_is_replaced(poller: str, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale_socket_file(path)
    assert path.is_socket()
    with running(echo_events(), f"unix://{path}", poller=poller) as r:
        echo(r)
    assert not path.exists()


def _idle_listener(stack: contextlib.ExitStack, path: Path) -> None:
    s = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    s.bind(str(path))
    s.listen()


def _listener_with_full_backlog(stack: contextlib.ExitStack, path: Path) -> None:
    s = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    s.bind(str(path))
    s.listen(0)
    for _ in range(64):  # bounded: a backlog of 0 fills after a connection or two
        c = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        c.setblocking(False)
        try:
            c.connect(str(path))
        except BlockingIOError:
            return
    raise AssertionError("the listener's backlog never filled")


@pytest.mark.rule("ADDR-9")
@pytest.mark.parametrize(
    "live",
    [
        pytest.param(_idle_listener, id="idle"),
        pytest.param(_listener_with_full_backlog, id="busy"),
    ],
)
def test_live_unix_listener_is_left_alone(
    poller: evio.PollerName, tmp_path: Path, live: Callable[[contextlib.ExitStack, Path], None]
) -> None:
    path = tmp_path / "live.sock"
    with contextlib.ExitStack() as stack:
        live(stack, path)
        inode = path.stat().st_ino
        with nothing_left_bound(), pytest.raises(OSError) as e:
            evio.serve(STOP_AT_ONCE, f"unix://{path}", poller=poller)
        assert e.value.errno == errno.EADDRINUSE
        assert path.is_socket() and path.stat().st_ino == inode


def _regular_file(path: Path) -> None:
    path.write_bytes(b"precious\n")


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_bytes(b"precious\n")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.rule("ADDR-9")
@pytest.mark.parametrize(
    "make", [_regular_file, _directory, _fifo], ids=["file", "directory", "fifo"]
)
def test_path_that_is_not_a_socket_is_refused(
    poller: evio.PollerName, tmp_path: Path, make: Callable[[Path], None]
) -> None:
    path = tmp_path / "taken"
    make(path)
    before = path.lstat()
    with nothing_left_bound(), pytest.raises(evio.BindError) as e:
        evio.serve(STOP_AT_ONCE, f"unix://{path}", poller=poller)
    assert e.value.errno == errno.EEXIST
    after = path.lstat()
    assert (after.st_ino, after.st_mode, after.st_size) == (
        before.st_ino, before.st_mode, before.st_size
    )
    if path.is_file():
        assert path.read_bytes() == b"precious\n"


@pytest.mark.rule("ADDR-10")
@pytest.mark.parametrize("how", ["shutdown", "tick-raises"])
def test_unix_socket_file_is_removed_when_serve_returns(
    poller: str, tmp_path: Path, how: str
) -> None:
    path = tmp_path / "gone.sock"
    fail = threading.Event()

    def tick() -> float:
        if fail.is_set():
            raise RuntimeError("tick failed")
        return 0.01

    ev = evio.Events(data=lambda cid, data: Action.SHUTDOWN, tick=tick)
    with running(ev, f"unix://{path}", poller=poller, stoppable=False, expect_error=True) as r:
        assert path.is_socket()
        if how == "shutdown":
            r.connect().sendall(b"stop")
        else:
            fail.set()
        r.join()
    assert not path.exists()
    if how == "shutdown":
        assert r.error is None
    else:
        assert isinstance(r.error, RuntimeError)
