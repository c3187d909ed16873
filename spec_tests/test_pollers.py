"""Conformance: pollers (docs/spec/pollers.md).

The interface (POLL-1 .. POLL-4) is driven directly, through
the ``make_poller`` conformance hook, with socket pairs whose readiness the test
controls; how ``serve()`` chooses and uses a backend (POLL-5 .. POLL-7) is
checked over real connections. Every test runs against every backend this
machine has.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    POLLERS,
    CountingPoller,
    PollerBase,
    Recorder,
    echo_events,
    open_descriptors,
    recv_exactly,
    running,
    wait_for,
)
from implementation import evio, hook

Action = evio.Action
# A target without the interest constants (it lacks custom pollers) still collects.
READ, WRITE = getattr(evio, "READ", 1), getattr(evio, "WRITE", 4)
Poller = PollerBase  # object: a target lacking custom pollers

FD_SETSIZE = 1024
"""The C library's limit on descriptor numbers ``select`` can watch (Linux, macOS)."""


def make_poller(name: str | None) -> Any:
    """A bare backend, from the implementation's ``make_poller`` hook."""
    return hook("make_poller")(name)

ALL_BACKENDS = ["epoll", "kqueue", "poll", "select"]
"""Every backend evio knows, best first."""

Sockets = list[socket.socket]


# ---------------------------------------------------------------- helpers


@pytest.fixture
def backend(poller: str) -> Iterator[Poller]:
    """A fresh poller of the backend under test, closed afterwards."""
    p = make_poller(poller)
    yield p
    p.close()


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    """Sockets a test makes; all closed afterwards."""
    made: Sockets = []
    yield made
    for s in made:
        s.close()


def pair(made: Sockets) -> tuple[socket.socket, socket.socket]:
    """A connected unix socket pair."""
    a, b = socket.socketpair()
    made += [a, b]
    return a, b


def tcp_pair(made: Sockets) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair over 127.0.0.1."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        a = socket.create_connection(listener.getsockname())
        made.append(a)
        b, _ = listener.accept()
        made.append(b)
    return a, b


def reset(s: socket.socket) -> None:
    """Close ``s`` so that its TCP peer is reset (RST), not shut down (FIN)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def end_of_stream(s: socket.socket) -> bool:
    """Whether the peer closed ``s``: end of stream, or a reset."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def epoll_sets(descriptors: set[tuple[int, str]]) -> int:
    """How many of ``descriptors`` are epoll sets."""
    return sum("eventpoll" in target for _, target in descriptors)


# ---------------------------------------------------------- the interface


@pytest.mark.rule("POLL-1")
def test_interface_has_five_methods_and_two_bits(backend: Poller) -> None:
    assert isinstance(backend, Poller)
    for method in ("register", "modify", "unregister", "poll", "close"):
        assert callable(getattr(backend, method))
    assert READ & WRITE == 0 and READ and WRITE


@pytest.mark.rule("POLL-1")
def test_poll_names_each_ready_descriptor_once(backend: Poller, sockets: Sockets) -> None:
    both, read_only, write_only, idle = (pair(sockets) for _ in range(4))
    for _, peer in (both, read_only, write_only):
        peer.send(b"x")  # everything but `idle` is readable; all are writable
    backend.register(both[0].fileno(), READ | WRITE)
    backend.register(read_only[0].fileno(), READ)
    backend.register(write_only[0].fileno(), WRITE)
    backend.register(idle[0].fileno(), READ)
    ready = backend.poll(1.0)
    assert isinstance(ready, list)
    assert sorted(ready) == sorted(
        [(both[0].fileno(), READ | WRITE), (read_only[0].fileno(), READ),
         (write_only[0].fileno(), WRITE)]
    )


@pytest.mark.rule("POLL-1")
def test_modify_replaces_and_unregister_removes(backend: Poller, sockets: Sockets) -> None:
    a, b = pair(sockets)
    fd = a.fileno()
    backend.register(fd, READ)
    assert backend.poll(0) == []  # nothing to read yet
    backend.modify(fd, WRITE)
    assert backend.poll(0) == [(fd, WRITE)]
    b.send(b"x")
    backend.modify(fd, READ)
    assert backend.poll(0) == [(fd, READ)]
    backend.modify(fd, READ | WRITE)
    assert backend.poll(0) == [(fd, READ | WRITE)]
    backend.unregister(fd)
    assert backend.poll(0.01) == []


@pytest.mark.rule("POLL-1")
def test_poll_with_a_timeout_waits_that_long(backend: Poller, sockets: Sockets) -> None:
    a, _ = pair(sockets)
    backend.register(a.fileno(), READ)
    start = time.monotonic()
    assert backend.poll(0.1) == []
    assert 0.09 <= time.monotonic() - start < 2.0


@pytest.mark.rule("POLL-1")
def test_poll_none_waits_without_limit(backend: Poller, sockets: Sockets) -> None:
    a, b = pair(sockets)
    backend.register(a.fileno(), READ)
    later = threading.Timer(0.2, b.send, (b"x",))
    later.start()
    try:
        start = time.monotonic()
        ready = backend.poll(None)
        waited = time.monotonic() - start
    finally:
        later.join()
    assert ready == [(a.fileno(), READ)]
    assert waited >= 0.15


@pytest.mark.rule("POLL-1")
def test_close_releases_the_backend(poller: str) -> None:
    before = open_descriptors()
    p = make_poller(poller)
    p.close()
    assert open_descriptors() == before


def _peer_reset(made: Sockets) -> socket.socket:
    a, b = tcp_pair(made)
    reset(b)
    return a


def _peer_closed(made: Sockets) -> socket.socket:
    a, b = pair(made)
    b.close()
    return a


def _pending_error(made: Sockets) -> socket.socket:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    made.append(a)
    a.connect(("127.0.0.1", port))
    a.send(b"x")  # the ICMP port-unreachable leaves ECONNREFUSED pending on `a`
    return a


_CONDITIONS: dict[str, Callable[[Sockets], socket.socket]] = {
    "reset": _peer_reset,  # hang-up and error
    "hang-up": _peer_closed,
    "error": _pending_error,
}

@pytest.mark.rule("POLL-2", "POLL-8")
@pytest.mark.parametrize("condition", list(_CONDITIONS))
@pytest.mark.parametrize("mask", [READ, WRITE], ids=["read-only", "write-only"])
def test_hang_up_and_error_wake_both_directions(
    backend: Poller, sockets: Sockets, condition: str, mask: int
) -> None:
    s = _CONDITIONS[condition](sockets)
    native = select.poll()
    native.register(s, 0)  # hang-up and error are reported without asking
    assert native.poll(5000), f"the {condition} never arrived"
    backend.register(s.fileno(), mask)
    # select has no hang-up report: it shows the direction watched (POLL-8).
    expected = mask if backend.name == "select" else READ | WRITE
    assert backend.poll(1.0) == [(s.fileno(), expected)]


@pytest.mark.rule("POLL-9")
def test_the_waiter_answers_as_poll_does(backend: Poller, sockets: Sockets) -> None:
    both, read_only, write_only, idle = (pair(sockets) for _ in range(4))
    for _, peer in (both, read_only, write_only):
        peer.send(b"x")
    backend.register(both[0].fileno(), READ | WRITE)
    backend.register(read_only[0].fileno(), READ)
    backend.register(write_only[0].fileno(), WRITE)
    backend.register(idle[0].fileno(), READ)
    wait = backend.waiter()
    ready = wait(1.0)
    assert isinstance(ready, list)
    # Plain readiness carries no other bit.
    assert sorted(ready) == sorted(
        [(both[0].fileno(), READ | WRITE), (read_only[0].fileno(), READ),
         (write_only[0].fileno(), WRITE)]
    )
    backend.unregister(both[0].fileno())
    backend.unregister(read_only[0].fileno())
    backend.unregister(write_only[0].fileno())
    assert wait(0) == [] and wait(0.0) == []


@pytest.mark.rule("POLL-9", "POLL-2")
@pytest.mark.parametrize("condition", list(_CONDITIONS))
def test_the_waiter_marks_a_hang_up_or_error_as_both_or_above(
    backend: Poller, sockets: Sockets, condition: str
) -> None:
    s = _CONDITIONS[condition](sockets)
    native = select.poll()
    native.register(s, 0)
    assert native.poll(5000), f"the {condition} never arrived"
    backend.register(s.fileno(), READ)
    ((fd, mask),) = backend.waiter()(1.0)
    assert fd == s.fileno()
    # What the loop makes of it: any bit above READ | WRITE means both.
    seen = READ | WRITE if mask > READ | WRITE else mask
    assert seen == (READ if backend.name == "select" else READ | WRITE)


@pytest.mark.rule("POLL-2")
def test_reset_while_only_writing_closes_with_the_error(poller: str, addr: str) -> None:
    """The reason for POLL-2: a connection flushing before close is watched for
    WRITE only; its peer's reset must still end it, with the error."""
    rec = Recorder()
    remaining: list[int] = []
    big = b"x" * (32 << 20)  # far more than the socket buffers hold

    def data(cid: int, data: bytes) -> tuple[bytes, Action]:
        return big, Action.CLOSE

    def postwrite(cid: int, n: int, left: int) -> None:
        remaining.append(left)

    ev = echo_events(rec, data=data, postwrite=postwrite)
    with running(ev, addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"go")
        wait_for(lambda: remaining, what="the first write")
        assert remaining[-1] > 0, "the reply did not stay pending"
        if c.family == socket.AF_UNIX:
            c.close()  # no reset on unix sockets: the server's next send gets EPIPE
        else:
            reset(c)
        wait_for(lambda: rec.of("closed"), what="closed")
    [(_, err)] = rec.of("closed")
    assert isinstance(err, OSError) and err.errno in (errno.ECONNRESET, errno.EPIPE), err


@pytest.mark.rule("POLL-3")
def test_unregister_unknown_or_closed_descriptor_does_nothing(
    backend: Poller, sockets: Sockets
) -> None:
    a, b = pair(sockets)
    backend.unregister(a.fileno())  # open, never registered
    c, _ = pair(sockets)
    backend.register(c.fileno(), READ)
    backend.unregister(c.fileno())
    backend.unregister(c.fileno())  # again
    d, _ = pair(sockets)
    fd = d.fileno()
    backend.register(fd, READ | WRITE)
    d.close()
    backend.unregister(fd)  # registered, then closed
    e, _ = pair(sockets)
    number = e.fileno()
    e.close()
    backend.unregister(number)  # not open at all
    # The poller still works, and none of those descriptors is reported.
    backend.register(a.fileno(), READ)
    b.send(b"x")
    assert backend.poll(1.0) == [(a.fileno(), READ)]


@pytest.mark.rule("POLL-4")
@pytest.mark.parametrize("watching", [False, True], ids=["nothing-registered", "idle-socket"])
def test_sub_millisecond_timeout_is_not_rounded_down(
    backend: Poller, sockets: Sockets, watching: bool
) -> None:
    if watching:
        a, _ = pair(sockets)
        backend.register(a.fileno(), READ)
    timeout, calls = 0.0004, 50
    waits = []
    for _ in range(calls):
        start = time.monotonic()
        assert backend.poll(timeout) == []
        waits.append(time.monotonic() - start)
    assert sum(waits) >= calls * timeout * 0.9, f"polls returned early: {sum(waits):.4f}s"
    assert min(waits) >= timeout * 0.5, f"a poll returned at once: {min(waits) * 1e6:.0f}µs"


# ------------------------------------------------------------ the backends


@pytest.mark.rule("POLL-5")
def test_available_pollers_best_first() -> None:
    names = evio.available_pollers()
    assert names == [n for n in ALL_BACKENDS if n in names], "unknown, repeated or out of order"
    native = {n for n in ALL_BACKENDS if hasattr(select, n)}
    if sys.platform == "darwin":
        native.discard("poll")
    assert set(names) == native
    assert names[-1] == "select"
    for name in names:
        make_poller(name).close()


@pytest.mark.rule("POLL-5", "POLL-6")
@pytest.mark.parametrize("choice", [None, *POLLERS])
def test_serve_uses_the_backend_chosen_or_the_best(choice: str | None) -> None:
    expected = choice or evio.available_pollers()[0]
    before = open_descriptors()
    with running(echo_events(), "tcp4://127.0.0.1:0", poller=choice) as r:
        assert r.server is not None and r.server.poller == expected
        assert epoll_sets(open_descriptors() - before) == (expected == "epoll")
        c = r.connect()
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"


@pytest.mark.rule("POLL-6")
@pytest.mark.parametrize(
    "name", ["nosuch", "", *(n for n in ALL_BACKENDS if n not in POLLERS)]
)
def test_unknown_or_missing_backend_is_refused_before_binding(
    name: str, tmp_path: Path
) -> None:
    path = tmp_path / "never.sock"
    ev = evio.Events(serving=lambda server: Action.SHUTDOWN)
    before = open_descriptors()
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        evio.serve(ev, f"unix://{path}", "tcp4://127.0.0.1:0",
                   poller=name)  # type: ignore[arg-type]  # not a name serve accepts: the test
    assert open_descriptors() == before
    assert not path.exists()


class ObservingPoller(CountingPoller):
    """A user-supplied backend: wraps a real one and counts what it is asked."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = f"observing-{name}"
        self.registered: list[int] = []
        self.unregistered: list[int] = []
        self.closes = 0

    def register(self, fd: int, mask: int) -> None:
        with self.lock:
            self.registered.append(fd)
        super().register(fd, mask)

    def unregister(self, fd: int) -> None:
        with self.lock:
            self.unregistered.append(fd)
        super().unregister(fd)

    def close(self) -> None:
        self.closes += 1
        super().close()


@pytest.mark.rule("POLL-6", "LOOP-19")
@pytest.mark.parametrize(("addrs", "loops"), [
    (("bogus://x",), 1),  # a bad address
    (("tcp-net://127.0.0.1:0",), 1),  # a -net address with a poller not select
    (("tcp4://127.0.0.1:0",), 2),  # several loops cannot share one instance
], ids=["bad-address", "net-mismatch", "loops"])
def test_a_poller_instance_is_closed_when_serve_refuses_to_start(
    poller: str, addrs: tuple[str, ...], loops: int
) -> None:
    observer = ObservingPoller(poller)  # named "observing-...": never what -net asks for
    with pytest.raises(ValueError):
        evio.serve(evio.Events(), *addrs, poller=observer, loops=loops)
    assert observer.closes == 1


@pytest.mark.rule("POLL-6")
def test_serve_takes_a_poller_instance(poller: str, addr: str) -> None:
    observer = ObservingPoller(poller)
    rec = Recorder()
    with running(echo_events(rec), addr, poller=observer) as r:
        assert r.server is not None and r.server.poller == observer.name
        c = r.connect()
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
        c.close()
        wait_for(lambda: rec.of("closed"))
    assert observer.polls > 0
    assert len(observer.registered) >= 2  # the listener and the connection
    assert set(observer.registered) <= set(observer.unregistered)
    assert observer.closes == 1


@pytest.mark.rule("POLL-7")
def test_select_refuses_descriptors_from_fd_setsize() -> None:
    p = hook("poller_classes")["select"]()
    try:
        for fd in (FD_SETSIZE, FD_SETSIZE + 1, 10 * FD_SETSIZE):
            with pytest.raises(ValueError):
                p.register(fd, READ)
            with pytest.raises(ValueError):
                p.modify(fd, READ | WRITE)
        p.register(FD_SETSIZE - 1, READ)  # the last one it can watch
        p.unregister(FD_SETSIZE - 1)
    finally:
        p.close()


def occupy_descriptors_below(limit: int) -> list[int]:
    """Open /dev/null until every descriptor number below ``limit`` is taken."""
    dummies: list[int] = []
    try:
        while not dummies or dummies[-1] < limit - 1:
            if len(dummies) > limit:
                raise AssertionError("could not fill the descriptor table")
            dummies.append(os.open(os.devnull, os.O_RDONLY))
    except BaseException:
        release(dummies)
        raise
    return dummies


def release(dummies: list[int]) -> None:
    for fd in dummies:
        os.close(fd)
    dummies.clear()


@pytest.fixture
def room_for_high_descriptors() -> Iterator[None]:
    """Make sure descriptors numbered FD_SETSIZE and above can be opened."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FD_SETSIZE + 64
    if soft >= need:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.rule("POLL-7")
@pytest.mark.usefixtures("room_for_high_descriptors")
def test_connection_select_cannot_watch_is_closed_unseen(poller: str, addr: str) -> None:
    rec = Recorder()
    with running(echo_events(rec), addr, poller=poller) as r:
        dummies = occupy_descriptors_below(FD_SETSIZE)
        try:
            high = r.connect()
            # Every lower number is taken, so the server's end is numbered higher still.
            assert high.fileno() >= FD_SETSIZE
            if poller == "select":
                assert end_of_stream(high), "select served a descriptor above FD_SETSIZE"
                assert rec.log == [], "opened or closed was called for it"
            else:
                high.sendall(b"high")
                assert recv_exactly(high, 4) == b"high"
        finally:
            release(dummies)
        # The loop goes on: a connection it can watch is served.
        c = r.connect()
        c.sendall(b"low")
        assert recv_exactly(c, 3) == b"low"
    served = 1 if poller == "select" else 2
    assert len(rec.of("opened")) == served
