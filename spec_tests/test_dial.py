"""Conformance: dial (docs/spec/dial.md), and the wake of a dial (WAKE-5).

Every peer a dial reaches is a socket this test owns, on loopback or a unix
socket under ``tmp_path``; every failure is made locally too:

* refused: a socket bound but not listening, so nobody accepts on its port;
* unresolvable: a name under ``.invalid``, which never resolves;
* timed out: a tcp listener whose accept queue is full (see
  `unanswered_listener`), so the handshake never completes;
* several addresses, or a slow name: the loop's resolver is replaced by one
  that answers what the test says, when the test says (see `FakeResolver`).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
from harness import (
    DEADLINE,
    Recorder,
    dial_text,
    echo_events,
    pattern,
    recv_all,
    recv_exactly,
    running,
    wait_for,
)
from implementation import evio, hook

Action = evio.Action

MiB = 1 << 20
TCP = ["tcp4", "tcp6"]


def bound_socket(family: str, tmp_path: Path, name: str = "peer.sock") -> socket.socket:
    """A socket of ``family`` bound to an ephemeral loopback address (or a path)."""
    if family == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp_path / name))
    elif family == "tcp6":
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
    s.settimeout(DEADLINE)
    return s


@contextlib.contextmanager
def peer_listener(family: str, tmp_path: Path, name: str = "peer.sock") -> Iterator[socket.socket]:
    """A listening socket the test owns: what the server dials."""
    with bound_socket(family, tmp_path, name) as s:
        s.listen(64)
        yield s


@contextlib.contextmanager
def refusing(family: str, tmp_path: Path) -> Iterator[str]:
    """The dial address of a socket that is bound but not listening: refused."""
    with bound_socket(family, tmp_path, "refusing.sock") as s:
        yield dial_text(s.getsockname())


@contextlib.contextmanager
def unanswered_listener(family: str) -> Iterator[str]:
    """The dial address of a tcp listener whose connects never complete."""
    with harness.unanswered_listener(family) as bound:
        yield dial_text(bound)


def accept(lst: socket.socket, r: Any) -> socket.socket:
    """Accept one connection on a test-owned listener; the harness closes it."""
    conn, _ = lst.accept()
    conn.settimeout(DEADLINE)
    r.clients.append(conn)
    return conn


class FakeResolver:
    """Stands in for the ``resolver`` hook's ``resolve``: the answer and its timing are the test's.

    Each call records the thread it ran on, waits for `gate` (if ``gated``)
    or ``delay`` seconds, then returns ``answer`` (or raises it).
    """

    def __init__(self, answer: Any, delay: float = 0.0, gated: bool = False) -> None:
        self.answer = answer
        self.delay = delay
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.threads: list[str] = []
        self.called = threading.Event()

    def __call__(self, address: evio.Address) -> list[tuple[int, Any]]:
        self.threads.append(threading.current_thread().name)
        self.called.set()
        self.gate.wait(DEADLINE)
        time.sleep(self.delay)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return list(self.answer)


@pytest.fixture
def fake_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Install a `FakeResolver` made by the returned function; release it at the end."""
    made: list[FakeResolver] = []

    def install(answer: Any, delay: float = 0.0, gated: bool = False) -> FakeResolver:
        fake = FakeResolver(answer, delay, gated)
        made.append(fake)
        monkeypatch.setattr(hook("resolver"), "resolve", fake)
        return fake

    yield install
    for fake in made:
        fake.gate.set()


def record_events(rec: Recorder, **extra: Any) -> evio.Events:
    """Records opened/data/closed (with the time of closed); data echoes."""

    def opened(cid: int, info: evio.Info) -> Any:
        rec.add("opened", cid, info)
        return None

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        return d

    def closed(cid: int, err: BaseException | None) -> None:
        rec.add("closed", cid, err)
        rec.add("closed-at", cid, time.monotonic())

    ev = evio.Events(opened=opened, data=data, closed=closed)
    for name, value in extra.items():
        setattr(ev, name, value)
    return ev


def opened_info(rec: Recorder, cid: int) -> evio.Info:
    (info,) = [p for i, p in rec.of("opened") if i == cid]
    assert isinstance(info, evio.Info)
    return info


def closed_err(rec: Recorder, cid: int) -> BaseException | None:
    (err,) = [p for i, p in rec.of("closed") if i == cid]
    assert err is None or isinstance(err, BaseException)
    return err


def lifecycle(rec: Recorder, cid: int) -> list[str]:
    return [k for k in rec.kinds(cid) if k != "closed-at"]


# ------------------------------------------------------- any thread, at once


@pytest.mark.rule("DIAL-1", "DIAL-3")
def test_dial_returns_at_once_and_a_slow_name_never_blocks_the_loop(
    poller: str, addr: str, tmp_path: Path, fake_resolver: Any
) -> None:
    rec = Recorder()
    with peer_listener("tcp4", tmp_path) as lst:
        fake = fake_resolver([(socket.AF_INET, lst.getsockname())], gated=True)
        with running(record_events(rec), addr, poller=poller) as r:
            assert r.server is not None
            client = r.connect()
            t0 = time.monotonic()
            cid = r.server.dial("tcp://slow-name.invalid:1")
            assert time.monotonic() - t0 < 0.5
            assert fake.called.wait(DEADLINE)
            # The name is still being resolved, and the loop serves on.
            for i in range(5):
                client.sendall(b"echo %d" % i)
                assert recv_exactly(client, 6) == b"echo %d" % i
            assert cid not in rec.ids()
            fake.gate.set()
            conn = accept(lst, r)
            wait_for(lambda: cid in rec.ids(), what="opened for the dial")
            conn.sendall(b"over the dial")
            assert recv_exactly(conn, 13) == b"over the dial"
    assert fake.threads and all(name != "evio-serve" for name in fake.threads)
    assert threading.current_thread().name not in fake.threads
    info = opened_info(rec, cid)
    assert info.addr_index == -1 and info.closing is False


@pytest.mark.rule("DIAL-1", "DIAL-3", "DIAL-5")
def test_dial_from_many_threads_at_once(poller: str, family: str, tmp_path: Path) -> None:
    rec = Recorder()
    ids: list[int] = []
    failures: list[BaseException] = []
    with peer_listener(family, tmp_path) as lst, running(
        record_events(rec), "tcp4://127.0.0.1:0", poller=poller
    ) as r:
        server = r.server
        assert server is not None
        go = threading.Barrier(4)

        def dialer() -> None:
            try:
                go.wait(DEADLINE)
                for _ in range(5):
                    ids.append(server.dial(dial_text(lst.getsockname())))
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=dialer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        assert not failures, failures
        peers = [accept(lst, r) for _ in range(20)]
        wait_for(lambda: len(rec.ids()) == 20, what="20 dials opened")
        for i, p in enumerate(peers[:10]):  # half are closed by the peer
            p.sendall(b"%02d" % i)
            assert recv_exactly(p, 2) == b"%02d" % i
            p.close()
        wait_for(lambda: len(rec.of("closed")) == 10, what="10 closed by the peer")
    assert len(set(ids)) == 20 and sorted(ids) == sorted(rec.ids())
    for cid in ids:
        assert lifecycle(rec, cid)[0] == "opened" and lifecycle(rec, cid)[-1] == "closed"
        assert lifecycle(rec, cid).count("opened") == lifecycle(rec, cid).count("closed") == 1
        assert opened_info(rec, cid).addr_index == -1
        assert closed_err(rec, cid) is None


@pytest.mark.rule("DIAL-1", "DIAL-3")
def test_dial_from_inside_callbacks_to_the_servers_own_listener(poller: str, addr: str) -> None:
    rec = Recorder()
    dialed: list[int] = []

    def serving(server: evio.Server) -> None:
        dialed.append(server.dial(dial_text(server.addrs[0])))
        servers.append(server)

    def opened(cid: int, info: evio.Info) -> Any:
        rec.add("opened", cid, info)
        return b"hello from %d" % cid if info.addr_index == -1 else None

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        if d == b"dial again":
            dialed.append(servers[0].dial(dial_text(servers[0].addrs[0])))
            return b"dialing"
        return d if cid not in dialed else None  # accepted ends echo

    servers: list[evio.Server] = []
    ev = echo_events(rec, serving=serving, opened=opened, data=data)
    with running(ev, addr, poller=poller) as r:
        wait_for(lambda: any(i == dialed[0] and d for i, d in rec.of("data")),
                 what="the echo of the first dial's greeting")
        c = r.connect()
        c.sendall(b"dial again")
        assert recv_exactly(c, 7) == b"dialing"
        wait_for(lambda: len(dialed) == 2 and any(i == dialed[1] for i, _ in rec.of("data")),
                 what="the echo of the second dial's greeting")
    infos: dict[int, evio.Info] = dict(rec.of("opened"))
    accepted = {i: info for i, info in infos.items() if info.addr_index == 0}
    assert len(accepted) == len(dialed) + 1  # each dial's other end, and the client
    for cid in dialed:
        info = infos[cid]
        assert info.addr_index == -1 and info.closing is False
        assert info.remote_addr == r.addrs[0]
        assert (cid, b"hello from %d" % cid) in rec.of("data")
        if not isinstance(info.local_addr, str):  # tcp: find the accepted other end
            (other,) = [a for a in accepted.values() if a.remote_addr == info.local_addr]
            assert other.local_addr == info.remote_addr


# ------------------------------------------------------------------ arguments


BAD_ADDRESSES = [
    "udp://127.0.0.1:9",
    "udp4://127.0.0.1:9",
    "udp6://[::1]:9",
    "tcp://:80",
    "tcp4://:80",
    "tcp6://[]:80",
    "tcp://127.0.0.1:0",
    "tcp6://[::1]:0",
    "tcp://127.0.0.1",
    "tcp://127.0.0.1:http",
    "tcp://127.0.0.1:65536",
    "bogus://127.0.0.1:9",
    "tcp://[::1:9",
    "tcp4://[::1]:9",
    "unix://",
    "tcp://127.0.0.1:" + "9" * 5000,
    "unix:///tmp/" + "a" * 200,
]
BAD_TIMEOUTS: list[Any] = [0, 0.0, -1, -0.5, float("nan"), float("inf"), True, False]


@pytest.mark.rule("DIAL-2")
def test_bad_dial_arguments_are_value_errors(poller: str) -> None:
    rec = Recorder()
    with running(record_events(rec), "tcp4://127.0.0.1:0", poller=poller) as r:
        server = r.server
        assert server is not None
        for text in BAD_ADDRESSES:
            with pytest.raises(ValueError) as info:
                server.dial(text)
            assert text in str(info.value), (text, str(info.value))
        for timeout in BAD_TIMEOUTS:
            with pytest.raises(ValueError):
                server.dial(dial_text(r.addrs[0]), timeout=timeout)
        time.sleep(0.05)
        assert rec.log == []  # nothing was dialed
        # A good dial still works, with or without a timeout.
        good = [server.dial(dial_text(r.addrs[0])), server.dial(dial_text(r.addrs[0]), 5)]
        wait_for(lambda: len(rec.ids()) == 4, what="two dials and their accepted ends")
    assert all(opened_info(rec, cid).addr_index == -1 for cid in good)


@pytest.mark.rule("DIAL-2")
@pytest.mark.parametrize("timeout", ["1", [1], 1j], ids=repr)
def test_a_timeout_that_is_not_a_number_is_a_value_error(timeout: Any) -> None:
    with running(evio.Events(), "tcp4://127.0.0.1:0") as r:
        assert r.server is not None
        with pytest.raises(ValueError):
            r.server.dial(dial_text(r.addrs[0]), timeout=timeout)


@pytest.mark.rule("DIAL-2", "DIAL-3")
def test_a_long_timeout_is_a_valid_timeout(poller: str, tmp_path: Path) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return Action.SHUTDOWN if d == b"stop" else d

    # No harness ticker (stoppable=False): its 10 ms ticks would bound every
    # poll and hide what a long deadline does to the poll timeout.
    with peer_listener("tcp4", tmp_path) as lst, running(
        record_events(rec, data=data), "tcp4://127.0.0.1:0", poller=poller, stoppable=False
    ) as r:
        assert r.server is not None
        cid = r.server.dial(dial_text(lst.getsockname()), timeout=1e7)  # about 116 days
        conn = accept(lst, r)
        wait_for(lambda: cid in rec.ids() or r.error, what="opened")
        time.sleep(0.05)
        assert r.error is None, f"serve() died: {r.error!r}"
        conn.sendall(b"long")
        assert recv_exactly(conn, 4) == b"long"
        conn.sendall(b"stop")
        r.join()


# ------------------------------------------------------------ like accepted


@pytest.mark.rule("DIAL-3", "DIAL-5")
def test_a_dialed_connection_behaves_like_an_accepted_one(
    poller: str, family: str, tmp_path: Path
) -> None:
    rec = Recorder()
    writes: list[tuple[int, int]] = []
    servers: list[evio.Server] = []
    payload = pattern(MiB, 4)

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        if d is None:
            return b"<woken>"
        if d.endswith(b"close"):
            return d[:-5] + b"bye", Action.CLOSE
        return d

    ev = record_events(
        rec, data=data, serving=servers.append,
        prewrite=lambda cid, n: writes.append((cid, n)),
    )
    with peer_listener(family, tmp_path) as lst, running(
        ev, "tcp4://127.0.0.1:0", poller=poller
    ) as r:
        cid = servers[0].dial(dial_text(lst.getsockname()))
        conn = accept(lst, r)
        wait_for(lambda: cid in rec.ids(), what="opened")
        info = opened_info(rec, cid)
        assert info.closing is False and info.addr_index == -1
        assert info.local_addr == conn.getpeername()
        assert info.remote_addr == lst.getsockname() == conn.getsockname()
        # data, with partial writes of a large echo
        sender = threading.Thread(target=conn.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(conn, len(payload)) == payload
        sender.join(DEADLINE)
        # wake
        assert servers[0].wake(cid) is True
        assert recv_exactly(conn, 7) == b"<woken>"
        # an action, then closed
        conn.sendall(b"close")
        assert recv_all(conn) == b"bye"
        wait_for(lambda: rec.of("closed"), what="closed")
    assert {c for c, _ in writes} == {cid}
    assert lifecycle(rec, cid)[0] == "opened" and lifecycle(rec, cid)[-1] == "closed"
    assert lifecycle(rec, cid).count("closed") == 1
    assert closed_err(rec, cid) is None


# ------------------------------------------------------------------ failures


def closing_events(rec: Recorder) -> evio.Events:
    """Like `record_events`, but ``opened`` of a failed dial answers things
    that would matter for a real connection: output and SHUTDOWN."""

    def opened(cid: int, info: evio.Info) -> Any:
        rec.add("opened", cid, info)
        return (b"ignored", None, Action.SHUTDOWN) if info.closing else None

    return record_events(rec, opened=opened)


def check_failed_dial(rec: Recorder, cid: int, remote: Any, err_type: type) -> BaseException:
    assert lifecycle(rec, cid) == ["opened", "closed"]
    info = opened_info(rec, cid)
    assert info.closing is True and info.addr_index == -1 and info.local_addr is None
    assert info.remote_addr == remote
    err = closed_err(rec, cid)
    assert isinstance(err, err_type), repr(err)
    assert err is not None
    return err


def still_serving(r: Any) -> None:
    """The server survived: a fresh connection is echoed."""
    c = r.connect()
    c.sendall(b"alive")
    assert recv_exactly(c, 5) == b"alive"


@pytest.mark.rule("DIAL-4", "DIAL-5")
def test_refused_dial(poller: str, family: str, tmp_path: Path) -> None:
    rec = Recorder()
    with refusing(family, tmp_path) as target, running(
        closing_events(rec), "tcp4://127.0.0.1:0", poller=poller
    ) as r:
        assert r.server is not None
        cid = r.server.dial(target)
        wait_for(lambda: rec.of("closed"), what="closed")
        still_serving(r)
    a = evio.parse_address(target)
    remote = a.path if family == "unix" else (a.host, a.port)
    check_failed_dial(rec, cid, remote, ConnectionRefusedError)


@pytest.mark.rule("DIAL-4", "DIAL-5")
def test_dial_to_a_missing_unix_path_reports_the_connect_error(
    poller: str, tmp_path: Path
) -> None:
    rec = Recorder()
    missing = tmp_path / "nobody-here.sock"
    with running(closing_events(rec), "tcp4://127.0.0.1:0", poller=poller) as r:
        assert r.server is not None
        cid = r.server.dial(f"unix://{missing}")
        wait_for(lambda: rec.of("closed"), what="closed")
        still_serving(r)
    err = check_failed_dial(rec, cid, str(missing), FileNotFoundError)
    assert isinstance(err, OSError) and err.errno == errno.ENOENT


@pytest.mark.rule("DIAL-4", "DIAL-5")
@pytest.mark.parametrize("scheme", ["tcp", "tcp4", "tcp6"])
def test_unresolvable_dial(poller: str, scheme: str) -> None:
    rec = Recorder()
    with running(closing_events(rec), "tcp4://127.0.0.1:0", poller=poller) as r:
        assert r.server is not None
        cid = r.server.dial(f"{scheme}://no-such-host.invalid:80")
        wait_for(lambda: rec.of("closed"), what="closed")
        still_serving(r)
    check_failed_dial(rec, cid, ("no-such-host.invalid", 80), socket.gaierror)


@pytest.mark.rule("DIAL-4", "DIAL-5")
@pytest.mark.parametrize("family", TCP)
def test_dial_timeout(poller: str, family: str) -> None:
    rec = Recorder()
    with unanswered_listener(family) as target, running(
        closing_events(rec), "tcp4://127.0.0.1:0", poller=poller
    ) as r:
        assert r.server is not None
        t0 = time.monotonic()
        cid = r.server.dial(target, timeout=0.3)
        wait_for(lambda: rec.of("closed"), what="closed")
        elapsed = next(t for i, t in rec.of("closed-at") if i == cid) - t0
        still_serving(r)
    a = evio.parse_address(target)
    check_failed_dial(rec, cid, (a.host, a.port), TimeoutError)
    assert 0.28 <= elapsed < 3.0, elapsed


@pytest.mark.rule("DIAL-4", "DIAL-5")
def test_every_dial_gets_exactly_one_opened_and_one_closed(
    poller: str, tmp_path: Path
) -> None:
    rec = Recorder()
    expected: dict[int, type | None] = {}
    with peer_listener("tcp4", tmp_path) as lst, refusing(
        "tcp6", tmp_path
    ) as refused, unanswered_listener("tcp4") as hanging, running(
        record_events(rec), "tcp4://127.0.0.1:0", poller=poller
    ) as r:
        server = r.server
        assert server is not None
        kinds: list[tuple[str, float | None, type | None]] = [
            (dial_text(lst.getsockname()), None, None),
            (refused, None, ConnectionRefusedError),
            ("tcp://no-such-host.invalid:80", 5.0, socket.gaierror),
            (hanging, 0.2, TimeoutError),
            (hanging, None, ConnectionAbortedError),  # still dialing at shutdown
        ]

        def dialer(k: int) -> None:
            for i in range(5):
                text, timeout, err = kinds[(i + k) % len(kinds)]
                expected[server.dial(text, timeout)] = err

        threads = [threading.Thread(target=dialer, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        n_ok = sum(1 for e in expected.values() if e is None)
        for _ in range(n_ok):
            accept(lst, r)
        n_done = sum(1 for e in expected.values() if e is not ConnectionAbortedError)
        wait_for(lambda: len(rec.ids()) == n_done, what="every dial but the hanging ones")
        wait_for(lambda: len(rec.of("closed")) == n_done - n_ok, what="the failures closed")
    assert len(expected) == 15
    for cid, err in expected.items():
        assert lifecycle(rec, cid) == ["opened", "closed"], (cid, rec.kinds(cid))
        info = opened_info(rec, cid)
        assert info.addr_index == -1 and info.closing is (err is not None)
        got = closed_err(rec, cid)
        assert (got is None) if err is None else isinstance(got, err), (cid, got)


# ----------------------------------------------------------- several addresses


@pytest.mark.rule("DIAL-6")
def test_localhost_with_several_addresses_connects_where_one_listens(
    poller: str, tmp_path: Path
) -> None:
    infos = socket.getaddrinfo("localhost", 1, socket.AF_UNSPEC, socket.SOCK_STREAM)
    families = list(dict.fromkeys(fam for fam, *_ in infos))
    if len(families) < 2:
        pytest.skip(f"localhost resolves to one family here: {[i[4] for i in infos]}")
    # Listen only on the family the resolver gives last: the first fails.
    last = "tcp6" if families[-1] == socket.AF_INET6 else "tcp4"
    rec = Recorder()
    with peer_listener(last, tmp_path) as lst, running(
        record_events(rec), "tcp4://127.0.0.1:0", poller=poller
    ) as r:
        assert r.server is not None
        where = lst.getsockname()  # read while it is open: the with closes it
        cid = r.server.dial(f"tcp://localhost:{where[1]}")
        conn = accept(lst, r)
        wait_for(lambda: cid in rec.ids(), what="opened")
        conn.sendall(b"found")
        assert recv_exactly(conn, 5) == b"found"
    assert opened_info(rec, cid).remote_addr == where


@pytest.mark.rule("DIAL-6")
def test_targets_are_tried_in_resolver_order_until_one_connects(
    poller: str, tmp_path: Path, fake_resolver: Any
) -> None:
    rec = Recorder()
    with refusing("tcp4", tmp_path) as refused, peer_listener(
        "tcp6", tmp_path
    ) as six, peer_listener("tcp4", tmp_path) as four:
        a = evio.parse_address(refused)
        six_addr = six.getsockname()
        fake_resolver([
            (socket.AF_INET, (a.host, a.port)),
            (socket.AF_INET6, six_addr),
            (socket.AF_INET, four.getsockname()),
        ])
        with running(record_events(rec), "tcp4://127.0.0.1:0", poller=poller) as r:
            assert r.server is not None
            cid = r.server.dial("tcp://several.invalid:80")
            conn = accept(six, r)
            wait_for(lambda: cid in rec.ids(), what="opened")
            conn.sendall(b"six")
            assert recv_exactly(conn, 3) == b"six"
            four.setblocking(False)
            with pytest.raises(BlockingIOError):
                four.accept()  # the third target was never tried
    info = opened_info(rec, cid)
    assert info.closing is False and info.remote_addr == six_addr


@pytest.mark.rule("DIAL-6", "DIAL-4")
@pytest.mark.parametrize("last", ["refused", "missing"])
def test_when_no_target_connects_the_last_error_is_reported(
    poller: str, tmp_path: Path, fake_resolver: Any, last: str
) -> None:
    rec = Recorder()
    with refusing("tcp4", tmp_path) as refused:
        a = evio.parse_address(refused)
        targets = [
            (socket.AF_UNIX, str(tmp_path / "missing.sock")),
            (socket.AF_INET, (a.host, a.port)),
        ]
        fake_resolver(targets if last == "refused" else targets[::-1])
        with running(record_events(rec), "tcp4://127.0.0.1:0", poller=poller) as r:
            assert r.server is not None
            cid = r.server.dial("tcp://nowhere.invalid:80")
            wait_for(lambda: rec.of("closed"), what="closed")
    want = ConnectionRefusedError if last == "refused" else FileNotFoundError
    check_failed_dial(rec, cid, ("nowhere.invalid", 80), want)


@pytest.mark.rule("DIAL-6", "DIAL-4")
@pytest.mark.parametrize(
    ("case", "resolve_delay", "n_targets", "timeout", "low", "high"),
    [
        # Slower to resolve than the whole timeout: it ends during resolution.
        ("resolution", 1.0, 1, 0.1, 0.08, 0.6),
        # Resolution uses part of the timeout; the attempt only the rest
        # (a timeout per step would end at 0.5 + 0.8 = 1.3 s).
        ("resolution-then-attempt", 0.5, 1, 0.8, 0.75, 1.2),
        # Two hanging targets share one timeout (per attempt: 1.0 s).
        ("attempts", 0.0, 2, 0.5, 0.45, 0.9),
    ],
)
def test_the_timeout_covers_resolution_and_every_attempt(
    poller: str, fake_resolver: Any, case: str, resolve_delay: float, n_targets: int,
    timeout: float, low: float, high: float,
) -> None:
    rec = Recorder()
    with unanswered_listener("tcp4") as hanging:
        a = evio.parse_address(hanging)
        fake_resolver([(socket.AF_INET, (a.host, a.port))] * n_targets, delay=resolve_delay)
        with running(record_events(rec), "tcp4://127.0.0.1:0", poller=poller) as r:
            assert r.server is not None
            t0 = time.monotonic()
            cid = r.server.dial("tcp://slow.invalid:80", timeout=timeout)
            wait_for(lambda: rec.of("closed"), what="closed")
            elapsed = next(t for i, t in rec.of("closed-at") if i == cid) - t0
    check_failed_dial(rec, cid, ("slow.invalid", 80), TimeoutError)
    assert low <= elapsed < high, f"{case}: timed out after {elapsed:.3f}s"


# ------------------------------------------------------------------- shutdown


@pytest.mark.rule("DIAL-7", "DIAL-5")
@pytest.mark.parametrize("family", TCP)
def test_shutdown_aborts_a_dial_in_progress_in_id_order(poller: str, family: str) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        return Action.SHUTDOWN if d == b"stop" else d

    with unanswered_listener(family) as hanging, running(
        record_events(rec, data=data), "tcp4://127.0.0.1:0", poller=poller, stoppable=False
    ) as r:
        assert r.server is not None
        first = r.connect()
        wait_for(lambda: rec.ids() == [1], what="opened(1)")
        cid = r.server.dial(hanging)  # no timeout: it would wait for minutes
        last = r.connect()
        wait_for(lambda: rec.ids() == [1, 3], what="opened(3)")
        time.sleep(0.05)  # the dial is well under way
        assert cid == 2 and lifecycle(rec, 2) == []
        first.sendall(b"stop")
        r.join()
        assert recv_all(last) == b""
    closed = rec.of("closed")
    assert [i for i, _ in closed] == [1, 2, 3]
    assert lifecycle(rec, 2) == ["opened", "closed"]
    assert opened_info(rec, 2).closing is True
    assert isinstance(closed_err(rec, 2), ConnectionAbortedError)
    assert closed_err(rec, 1) is None and closed_err(rec, 3) is None


@pytest.mark.rule("DIAL-7", "DIAL-5")
@pytest.mark.parametrize("stage", ["not started", "resolving"])
def test_shutdown_aborts_a_dial_at_any_stage(
    poller: str, fake_resolver: Any, stage: str
) -> None:
    rec = Recorder()
    fake = fake_resolver([(socket.AF_INET, ("127.0.0.1", 9))], gated=True)
    servers: list[evio.Server] = []
    dialed: list[int] = []

    def data(cid: int, d: bytes) -> Any:
        rec.add("data", cid, d)
        if d == b"dial and stop":  # the loop never gets to start this dial
            dialed.append(servers[0].dial("tcp://127.0.0.1:9"))
            return Action.SHUTDOWN
        return Action.SHUTDOWN if d == b"stop" else None

    ev = record_events(rec, data=data, serving=servers.append)
    with running(ev, "tcp4://127.0.0.1:0", poller=poller, stoppable=False) as r:
        c = r.connect()
        wait_for(lambda: rec.ids() == [1], what="opened(1)")
        if stage == "resolving":
            dialed.append(servers[0].dial("tcp://gated.invalid:9"))
            assert fake.called.wait(DEADLINE)
            c.sendall(b"stop")
        else:
            c.sendall(b"dial and stop")
        r.join()
        fake.gate.set()
    (cid,) = dialed
    assert [i for i, _ in rec.of("closed")] == [1, cid]
    assert lifecycle(rec, cid) == ["opened", "closed"]
    assert opened_info(rec, cid).closing is True
    assert isinstance(closed_err(rec, cid), ConnectionAbortedError)


@pytest.mark.rule("DIAL-7")
def test_dial_after_the_server_stopped_raises(poller: str) -> None:
    with running(evio.Events(), "tcp4://127.0.0.1:0", poller=poller) as r:
        server = r.server
        assert server is not None
    with pytest.raises(RuntimeError):
        server.dial("tcp4://127.0.0.1:9")
    with pytest.raises(RuntimeError):
        server.dial("tcp://localhost:9", timeout=1)


# ---------------------------------------------------------- wake while dialing


@pytest.mark.rule("WAKE-5", "WAKE-1", "DIAL-1")
def test_a_wake_made_before_the_dial_connects_follows_opened(
    poller: str, family: str, tmp_path: Path
) -> None:
    # The dial and the wake are made inside a callback: the loop is busy
    # running it, so the dial cannot have connected yet, whatever the family.
    rec = Recorder()
    servers: list[evio.Server] = []
    woke: list[bool] = []

    def opened(cid: int, info: evio.Info) -> Any:
        rec.add("opened", cid, info)
        return b"opened;" if info.addr_index == -1 else None

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        if d is None:
            return b"woken;"
        if d.startswith(b"dial "):
            new = servers[0].dial(d[5:].decode())
            woke.append(servers[0].wake(new))
            return b"%d" % new
        return None

    ev = record_events(rec, opened=opened, data=data, serving=servers.append)
    with peer_listener(family, tmp_path) as lst, running(
        ev, "tcp4://127.0.0.1:0", poller=poller
    ) as r:
        c = r.connect()
        c.sendall(b"dial " + dial_text(lst.getsockname()).encode())
        cid = int(c.recv(16))
        conn = accept(lst, r)
        assert recv_exactly(conn, 13) == b"opened;woken;"
        conn.sendall(b"after")
        wait_for(lambda: (cid, b"after") in rec.of("data"), what="data after the wake")
    assert woke == [True]
    assert lifecycle(rec, cid)[:4] == ["opened", "data", "data", "closed"]
    assert [d for i, d in rec.of("data") if i == cid] == [None, b"after"]


@pytest.mark.rule("WAKE-5", "WAKE-1")
def test_a_wake_from_another_thread_while_resolving_is_kept(
    poller: str, tmp_path: Path, fake_resolver: Any
) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        return b"woken" if d is None else None

    with peer_listener("tcp4", tmp_path) as lst:
        fake = fake_resolver([(socket.AF_INET, lst.getsockname())], gated=True)
        with running(record_events(rec, data=data), "tcp4://127.0.0.1:0", poller=poller) as r:
            assert r.server is not None
            cid = r.server.dial("tcp://gated.invalid:80")
            assert fake.called.wait(DEADLINE)
            assert r.server.wake(cid) is True  # still resolving
            time.sleep(0.05)
            assert lifecycle(rec, cid) == []  # kept, not delivered
            fake.gate.set()
            conn = accept(lst, r)
            assert recv_exactly(conn, 5) == b"woken"
    assert lifecycle(rec, cid) == ["opened", "data", "closed"]
    assert [d for i, d in rec.of("data") if i == cid] == [None]


@pytest.mark.rule("WAKE-5", "WAKE-1", "DIAL-4")
def test_a_wake_for_a_dial_that_fails_is_dropped(
    poller: str, family: str, tmp_path: Path
) -> None:
    rec = Recorder()
    servers: list[evio.Server] = []
    woke: list[tuple[int, bool]] = []

    def data(cid: int, d: bytes | None) -> Any:
        rec.add("data", cid, d)
        if d is not None and d.startswith(b"dial "):
            new = servers[0].dial(d[5:].decode())
            woke.append((new, servers[0].wake(new)))
        return None

    ev = record_events(rec, data=data, serving=servers.append)
    with refusing(family, tmp_path) as target, running(
        ev, "tcp4://127.0.0.1:0", poller=poller
    ) as r:
        c = r.connect()
        c.sendall(b"dial " + target.encode())
        wait_for(lambda: rec.of("closed"), what="the failed dial closed")
        (cid, returned) = woke[0]
        assert returned is True  # a dial still connecting
        assert servers[0].wake(cid) is False  # failed: closed
        time.sleep(0.05)
    assert lifecycle(rec, cid) == ["opened", "closed"]
    assert isinstance(closed_err(rec, cid), ConnectionRefusedError)
