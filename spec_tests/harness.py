"""Test harness: run ``evio.serve`` on a thread and talk to it over real sockets.

Every server a test starts goes through :func:`running`, which

* starts ``serve()`` on a thread and waits for ``serving``;
* stops it with `evio.Server.stop` (safe from any thread), unless the
  test stops it itself -- so a server under test has no timer of its own
  and its loop blocks without a timeout, as a real one does;
* closes the test's client sockets, joins the thread, re-raises anything
  ``serve()`` raised, and checks that no socket or poller descriptor opened
  while it ran is still open (rule LOOP-19).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from implementation import evio, hook, not_applicable

POLLERS = evio.available_pollers()
FAMILIES = ["tcp4", "tcp6", "unix"]
DEADLINE = 10.0

# Base classes a test subclasses; at run time ``object`` for a target that
# lacks them (custom pollers, translate), whose tests are then not applicable.
if TYPE_CHECKING:
    PollerBase = evio.Poller
    TranslatorBase = evio.Translator
else:
    PollerBase = getattr(evio, "Poller", object)
    TranslatorBase = getattr(evio, "Translator", object)


def listen_address(family: str, tmp: Path) -> str:
    """An ephemeral listen address of the given family."""
    if family == "tcp4":
        return "tcp4://127.0.0.1:0"
    if family == "tcp6":
        return "tcp6://[::1]:0"
    if family == "unix":
        return f"unix://{tmp / 'evio.sock'}"
    raise ValueError(family)


def connect_to(bound: Any, timeout: float = DEADLINE) -> socket.socket:
    """Connect a blocking client socket to a listener's bound address."""
    if isinstance(bound, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    elif len(bound) == 4:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(bound)
    except BaseException:
        s.close()
        raise
    return s


def wait_for(pred: Callable[..., object], timeout: float = DEADLINE, what: str = "") -> None:
    """Poll ``pred()`` until true; fail the test after ``timeout`` seconds.

    (``pred`` is typed ``Callable[..., object]``, not ``Callable[[], object]``,
    so that a lambda in a loop may bind the loop's variable as a default,
    ``lambda n=n: ...``: mypy cannot infer such a lambda against the latter.)
    """
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or pred}")
        time.sleep(0.002)


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that are not periodic in any small period."""
    block = bytes((i * 7 + seed * 13 + (i >> 8)) & 0xFF for i in range(65521))
    return (block * (n // len(block) + 1))[:n]


def recv_exactly(s: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes (the socket's timeout bounds each read)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise AssertionError(f"end of stream after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_all(s: socket.socket) -> bytes:
    """Read until the server ends the stream."""
    buf = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk


def open_descriptors() -> set[tuple[int, str]]:
    """This process's sockets and poller descriptors, as (fd, target) pairs."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(("socket:", "anon_inode:")):
            out.add((int(name), target))
    return out


class Recorder:
    """Records every callback as ``(kind, id, payload)`` in call order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, Any]] = []
        self.lock = threading.Lock()
        self.threads: set[int] = set()

    def add(self, kind: str, cid: int, payload: Any = None) -> None:
        with self.lock:
            self.threads.add(threading.get_ident())
            self.log.append((kind, cid, payload))

    def kinds(self, cid: int) -> list[str]:
        with self.lock:
            return [k for k, i, _ in self.log if i == cid]

    def of(self, kind: str) -> list[tuple[int, Any]]:
        with self.lock:
            return [(i, p) for k, i, p in self.log if k == kind]

    def ids(self) -> list[int]:
        return [i for i, _ in self.of("opened")]


def echo_events(rec: Recorder | None = None, **extra: Any) -> evio.Events:
    """An echo server that records opened/data/closed if given a recorder."""

    def opened(cid: int, info: evio.Info) -> None:
        if rec:
            rec.add("opened", cid, info)

    def data(cid: int, data: bytes) -> bytes:
        if rec:
            rec.add("data", cid, bytes(data))
        return data

    def closed(cid: int, err: BaseException | None) -> None:
        if rec:
            rec.add("closed", cid, err)

    ev = evio.Events(opened=opened, data=data, closed=closed)
    return dataclasses.replace(ev, **extra)


class Running:
    """A server running on a thread."""

    def __init__(self, events: evio.Events, addrs: tuple[str, ...], poller: Any,
                 stoppable: bool, options: dict[str, Any] | None = None) -> None:
        self.stoppable = stoppable
        self.options = options or {}
        self.ready = threading.Event()
        self.server: evio.Server | None = None
        self.error: BaseException | None = None
        self.clients: list[socket.socket] = []
        self.events = self._wrap(events)
        self.thread = threading.Thread(
            target=self._main, args=(addrs, poller), daemon=True, name="evio-serve"
        )

    def _wrap(self, ev: evio.Events) -> evio.Events:
        user_serving = ev.serving

        def serving(server: evio.Server) -> Any:
            try:
                return user_serving(server) if user_serving else None
            finally:
                self.server = server
                self.ready.set()

        return dataclasses.replace(ev, serving=serving)

    def _main(self, addrs: tuple[str, ...], poller: Any) -> None:
        try:
            evio.serve(self.events, *addrs, poller=poller, **self.options)
        except BaseException as e:  # handed to the test thread
            self.error = e
        finally:
            self.ready.set()

    @property
    def addrs(self) -> tuple[Any, ...]:
        assert self.server is not None
        return self.server.addrs

    def connect(self, index: int = 0) -> socket.socket:
        s = connect_to(self.addrs[index])
        self.clients.append(s)
        return s

    def join(self, timeout: float = DEADLINE) -> None:
        """Wait for ``serve()`` to return by itself."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "serve() did not return"

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        if self.stoppable and self.server is not None:
            self.server.stop()
        self.join()


@contextlib.contextmanager
def running(events: evio.Events, *addrs: str, poller: Any = None, stoppable: bool = True,
            check_fds: bool = True, expect_error: bool = False,
            **options: Any) -> Iterator[Running]:
    """Run a server for the ``with`` block; see the module docstring.

    ``options`` go to ``serve`` as they are (``slow_callback=``, ...).
    """
    before = open_descriptors()
    r = Running(events, addrs, poller, stoppable, options)
    r.thread.start()
    r.ready.wait(DEADLINE)
    if r.server is None:
        r.join()
        if r.error is not None:
            raise r.error
        raise AssertionError("serving was never called")
    try:
        yield r
    finally:
        r.stop()
    if r.error is not None and not expect_error:
        raise r.error
    if check_fds:
        leaked = open_descriptors() - before
        assert not leaked, f"descriptors left open after serve() returned: {leaked}"


class CountingPoller(PollerBase):
    """Wraps a real backend and records what the loop asks of it.

    Needs the implementation's public ``Poller`` base (feature
    ``custom-poller``) and its ``make_poller`` hook; without them the test
    is not applicable.
    """

    def __init__(self, name: str) -> None:
        if not hasattr(evio, "Poller"):
            not_applicable("custom-poller")
        self.inner: evio.Poller = hook("make_poller")(name)
        self.name = name
        self.timeouts: list[float | None] = []
        self.modifies: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def register(self, fd: int, mask: int) -> None:
        self.inner.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        with self.lock:
            self.modifies.append((fd, mask))
        self.inner.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self.inner.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        with self.lock:
            self.timeouts.append(timeout)
        return self.inner.poll(timeout)

    def close(self) -> None:
        self.inner.close()

    @property
    def polls(self) -> int:
        with self.lock:
            return len(self.timeouts)


def server_side_socket(client: socket.socket) -> socket.socket:
    """A duplicate of the server's end of ``client``'s connection (same process).

    Found by scanning /proc/self/fd for a socket whose peer is the client's
    local address. The caller closes the duplicate.
    """
    want = client.getsockname()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if s.family == client.family and s.getpeername() == want:
                return s
        except OSError:
            pass
        s.close()
    raise AssertionError(f"no server-side socket for {want!r}")


def in_thread(fn: Callable[[], object]) -> Callable[[], None]:
    """Run ``fn`` on a thread; the returned ``join`` re-raises what it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()

    def join() -> None:
        t.join(DEADLINE)
        assert not t.is_alive(), "helper thread did not finish"
        if errors:
            raise errors[0]

    return join


class Lines:
    """Read a socket line by line; each line keeps its ending (``end``)."""

    def __init__(self, sock: socket.socket, end: bytes = b"\n") -> None:
        self.sock = sock
        self.end = end
        self.buf = b""

    def next(self) -> bytes:
        while self.end not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"end of stream; partial line {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(self.end)
        return line + self.end


@contextlib.contextmanager
def unanswered_listener(family: str = "tcp4") -> Iterator[tuple[Any, ...]]:
    """The address of a tcp listener whose connects never complete.

    Linux drops a SYN when the listener's accept queue is full, and the
    connecting side keeps retransmitting it for minutes. ``listen(0)`` leaves
    room for one connection: connect until one gets no answer, accept none.
    """
    import select

    fam = socket.AF_INET6 if family == "tcp6" else socket.AF_INET
    host = "::1" if family == "tcp6" else "127.0.0.1"
    with socket.socket(fam, socket.SOCK_STREAM) as lst, contextlib.ExitStack() as fillers:
        lst.bind((host, 0))
        lst.listen(0)
        for _ in range(16):
            c = fillers.enter_context(socket.socket(fam, socket.SOCK_STREAM))
            c.setblocking(False)
            c.connect_ex(lst.getsockname())
            if not select.select([], [c], [], 0.2)[1]:
                break  # this one hangs: the queue is full
        else:
            raise AssertionError("could not fill the listener's accept queue")
        yield lst.getsockname()


def read_until_eof(c: socket.socket) -> bytes:
    """Everything the peer sends until it closes (a reset after it counts as the end)."""
    buf = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while True:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return bytes(buf)


def family_of(bound: Any) -> socket.AddressFamily:
    """The address family of a listener's bound address."""
    if isinstance(bound, str):
        return socket.AF_UNIX
    return socket.AF_INET6 if len(bound) == 4 else socket.AF_INET


def small_socket(bound: Any, size: int = 4096, timeout: float = DEADLINE) -> socket.socket:
    """A client with tiny socket buffers, set before ``connect`` so they hold.

    (On Linux the kernel doubles the value and has a floor of a few KiB.)
    """
    s = socket.socket(family_of(bound), socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        s.settimeout(timeout)
        s.connect(bound)
    except BaseException:
        s.close()
        raise
    return s


def reset(s: socket.socket) -> None:
    """Close with ``SO_LINGER`` 0: the peer gets a reset, not an end of stream."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


@contextlib.contextmanager
def watching_transitions() -> Iterator[set[tuple[Any, Any, Any]]]:
    """Collect every ``(source, event, target)`` the loop moves a connection
    through while the block runs (the ``lifecycle`` hook's ``observe``)."""
    observe = hook("lifecycle").observe
    seen: set[tuple[Any, Any, Any]] = set()
    lock = threading.Lock()

    def note(cid: int, src: Any, on: Any, dst: Any) -> None:
        with lock:
            seen.add((src, on, dst))

    stop = observe(note)
    try:
        yield seen
    finally:
        stop()


class TCPService:
    """A threaded TCP server on 127.0.0.1, port 0, for the tests' own peers
    (an upstream for the proxy, a firehose); subclasses say what to do with
    each connection in `serve_one`. Use it as a context manager."""

    def __init__(self) -> None:
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner.serve_one(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            block_on_close = False
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def address(self) -> str:
        """``tcp://127.0.0.1:PORT``."""
        host, port = self.server.server_address[:2]
        return f"tcp://{host!s}:{port}"

    def serve_one(self, s: socket.socket) -> None:
        raise NotImplementedError

    def stopping(self) -> None:
        """Called first on leaving the ``with`` block."""

    def __enter__(self) -> Any:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(DEADLINE)


def read_to_end(c: socket.socket) -> tuple[bytes, bool]:
    """Everything until the end of stream, and whether it ended in a reset."""
    got = bytearray()
    c.settimeout(10)
    while True:
        try:
            chunk = c.recv(65536)
        except ConnectionResetError:
            return bytes(got), True
        if not chunk:
            return bytes(got), False
        got += chunk


@contextlib.contextmanager
def stopped_by(control: socket.socket) -> Iterator[None]:
    """Stop a server the harness does not stop, when the block fails.

    For a server run with ``stoppable=False`` whose ``data`` shuts it down on
    ``stop``: a failing block sends that on ``control``, so ``serve()`` still
    returns and the test reports its failure rather than a hang.
    """
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            control.sendall(b"stop")
        raise


def dial_text(bound: Any) -> str:
    """The dial address of a bound socket address (as ``getsockname`` gives it)."""
    if isinstance(bound, str):
        return f"unix://{bound}"
    if len(bound) == 4:
        return f"tcp6://[{bound[0]}]:{bound[1]}"
    return f"tcp4://{bound[0]}:{bound[1]}"


# ------------------------------------------------- what a Recorder saw, per id


def data_calls(rec: Recorder, cid: int) -> list[Any]:
    """What each ``data`` call for ``cid`` was given, in order (``None`` for a wake)."""
    return [d for i, d in rec.of("data") if i == cid]


def data_bytes(rec: Recorder, cid: int) -> bytes:
    """Every byte ``data`` was given for ``cid``, joined (wakes give none)."""
    return b"".join(d for d in data_calls(rec, cid) if d is not None)


def errors_of(rec: Recorder, cid: int) -> list[Any]:
    """What each ``closed`` call for ``cid`` was given (one entry, if the rules hold)."""
    return [e for i, e in rec.of("closed") if i == cid]


# ------------------------------------------------------------------ CPU time
#
# Linux's /proc/PID/stat and /proc/self/task/TID/stat: fields 14 and 15
# (utime, stime) in clock ticks. The command name in field 2 may hold spaces
# and parentheses, so the fields are counted from after its last ")".


def _stat_cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, in seconds."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(native_id: int) -> float:
    """User plus system CPU time of one thread of this process, in seconds."""
    return _stat_cpu_seconds(Path(f"/proc/self/task/{native_id}/stat"))


def required_program(name: str, needed_by: str, package: str | None = None) -> str:
    """The path of a client program the tests drive; fail (never skip) without it.

    Looked for on the PATH, then in /usr/bin (which a venv's PATH may lack).
    ``needed_by`` says which tests need it, ``package`` the Debian package
    that brings it (``name`` if not given).
    """
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK)
                                  else None)
    if path is None:
        pytest.fail(f"{name} is not installed, and {needed_by} need it "
                    f"(on Debian: apt-get install {package or name})", pytrace=False)
    return path
