"""The wake, proxy and UDP examples, run as a user runs them.

Each test starts an example as a real process on port 0, reads the port
from its start-up line, talks to it over loopback with plain sockets, then
stops it with SIGTERM and expects a clean exit 0. The proxy is put in front
of an upstream written here with ``socketserver`` (threads, blocking
sockets: nothing evio), so the bytes are checked against code that shares
nothing with the loop.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    POLLERS,
    Lines,
    TCPService,
    connect_to,
    in_thread,
    read_until_eof,
    recv_all,
    recv_exactly,
    unanswered_listener,
)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0  # any one socket operation, and starting or stopping a process
MiB = 1 << 20


# ------------------------------------------------------------- processes


@contextlib.contextmanager
def example(name: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run ``examples/<name> --port 0 ARGS``; yield the process and its port.

    The process is killed on the way out if the test did not stop it.
    """
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / name), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        banner = proc.stdout.readline() if ready else ""
        if "listening on ('127.0.0.1', " not in banner:
            proc.kill()
            _, err = proc.communicate(timeout=TIMEOUT)
            raise AssertionError(f"{name} did not start: {banner!r} {err!r}")
        port = int(banner.split("('127.0.0.1', ")[1].split(")")[0])
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[str, str]:
    """Signal the example and expect a clean exit 0; return (stdout, stderr)."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "stopped" in out, out
    return out, err


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


# ------------------------------------------------------------ wake server


def wake_server(*args: str) -> contextlib.AbstractContextManager[
        tuple[subprocess.Popen[str], int]]:
    return example("wake_server.py", *args)


@pytest.mark.rule("WAKE-2", "WAKE-3")
@pytest.mark.parametrize("poller", POLLERS)
def test_wake_server_exec_answers_later_and_echo_at_once(poller: str) -> None:
    delay = 0.3
    with wake_server("--delay", str(delay), "--poller", poller) as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            lines = Lines(c)
            sent = time.monotonic()
            c.sendall(b"exec\nhello\n")
            assert lines.next() == b"hello\n"  # the echo does not wait for the job
            echoed = time.monotonic()
            assert lines.next() == b"exec done\n"
            answered = time.monotonic()
            assert answered - sent >= delay
            assert echoed - sent < answered - sent
            # The connection is still an ordinary echo after the wake.
            c.sendall(b"after\r\n")
            assert lines.next() == b"after\r\n"
        stop(proc)


@pytest.mark.rule("WAKE-2", "WAKE-3")
def test_wake_server_concurrent_clients_get_their_own_answers() -> None:
    with wake_server("--delay", "0.3") as (proc, port):
        a = connect_to(("127.0.0.1", port), TIMEOUT)
        b = connect_to(("127.0.0.1", port), TIMEOUT)
        with a, b:
            # Both start jobs before either reads; a uses \r\n, b uses \n.
            a.sendall(b"exec a1\r\none\r\nexec a2\r\n")
            b.sendall(b"exec b1\ntwo\nexec b2\nexec b3\n")
            la, lb = Lines(a), Lines(b)
            assert la.next() == b"one\r\n"
            assert lb.next() == b"two\n"
            # The jobs of one client finish in any order among themselves.
            assert {la.next(), la.next()} == {b"exec a1 done\r\n", b"exec a2 done\r\n"}
            assert {lb.next(), lb.next(), lb.next()} == {
                b"exec b1 done\n", b"exec b2 done\n", b"exec b3 done\n"}
            # Nothing else is on the way: the next line is the next echo.
            a.sendall(b"end a\r\n")
            b.sendall(b"end b\n")
            assert la.next() == b"end a\r\n"
            assert lb.next() == b"end b\n"
        stop(proc)


@pytest.mark.rule("EV-15", "WAKE-3")
def test_wake_server_lines_split_and_batched_across_reads() -> None:
    with wake_server("--delay", "0.1") as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            lines = Lines(c)
            for piece in (b"ec", b"ho me\r", b"\nexe", b"c\n"):
                c.sendall(piece)
                time.sleep(0.02)  # encourage separate reads; correctness does not need it
            assert lines.next() == b"echo me\r\n"
            assert lines.next() == b"exec done\n"
            # Many lines in one read, answered in order.
            many = b"".join(b"line %d\n" % i for i in range(2000))
            c.sendall(many)
            assert recv_exactly(c, len(many) - len(lines.buf)) == many[len(lines.buf):]
        stop(proc)


@pytest.mark.rule("LOOP-14")
def test_wake_server_closes_a_line_that_never_ends() -> None:
    with wake_server() as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            c.sendall(b"short\n")
            assert Lines(c).next() == b"short\n"
            join = in_thread(lambda: send_ignoring_reset(c, b"x" * (200 * 1024)))
            # Refused, nothing echoed; a reset (bytes still unread when the
            # server closed) may cut the refusal short.
            got = read_until_eof(c)
            assert b"error: line longer than 65536 bytes\n".startswith(got), got
            join()
        stop(proc)


@pytest.mark.rule("LOOP-17", "LOOP-18")
def test_wake_server_stops_cleanly_with_a_job_running() -> None:
    with wake_server("--delay", "60") as (proc, port), \
            connect_to(("127.0.0.1", port), TIMEOUT) as c:
        c.sendall(b"exec\nping\n")
        assert Lines(c).next() == b"ping\n"
        started = time.monotonic()
        stop(proc, signal.SIGINT)  # the job's thread is left behind
        assert time.monotonic() - started < 10
        assert recv_all(c) == b""  # closed without the job's answer


# ------------------------------------------------------------------ proxy


class Upstream(TCPService):
    """A threaded TCP server standing in for the proxied service.

    Each connection is sent ``greeting`` first; then, if ``close_after_greeting``,
    it is closed. Otherwise what arrives is echoed (``echo=True``) or just
    kept, until end of stream. At end of stream the SHA-256 and length of
    everything received are put on ``ends``.
    """

    def __init__(self, greeting: bytes = b"", echo: bool = True,
                 close_after_greeting: bool = False) -> None:
        self.greeting = greeting
        self.echo = echo
        self.close_after_greeting = close_after_greeting
        self.ends: queue.Queue[tuple[int, str]] = queue.Queue()
        self.accepted = 0
        self.lock = threading.Lock()
        super().__init__()

    def serve_one(self, s: socket.socket) -> None:
        s.settimeout(TIMEOUT)
        with self.lock:
            self.accepted += 1
        if self.greeting:
            s.sendall(self.greeting)
        if self.close_after_greeting:
            s.close()
            return
        digest, n = hashlib.sha256(), 0
        while chunk := s.recv(MiB):
            digest.update(chunk)
            n += len(chunk)
            if self.echo:
                s.sendall(chunk)
        self.ends.put((n, digest.hexdigest()))
        s.close()


def proxy(upstream: str, *args: str) -> contextlib.AbstractContextManager[
        tuple[subprocess.Popen[str], int]]:
    return example("proxy.py", "--upstream", upstream, *args)


def exchange(port: int, payload: bytes) -> float:
    """Send ``payload`` through the proxy while reading its echo; return seconds."""
    with connect_to(("127.0.0.1", port), TIMEOUT) as c:
        started = time.monotonic()
        join = in_thread(lambda: c.sendall(payload))
        got = recv_exactly(c, len(payload))
        join()
        elapsed = time.monotonic() - started
    assert got == payload  # byte for byte (no diff dump of 8 MiB: a bool is enough)
    return elapsed


@pytest.mark.rule("DIAL-3", "LOOP-8", "WAKE-2", "WAKE-3")
@pytest.mark.parametrize("poller", POLLERS)
def test_proxy_relays_8_mib_each_way_at_once(poller: str) -> None:
    payload = os.urandom(8 * MiB)
    with Upstream() as up, proxy(up.address, "--poller", poller) as (proc, port):
        elapsed = exchange(port, payload)
        print(f"proxy ({poller}): 8 MiB each way in {elapsed:.3f}s, "
              f"{8 / elapsed:.0f} MiB/s each way")
        assert up.ends.get(timeout=TIMEOUT) == (len(payload), hashlib.sha256(payload).hexdigest())
        stop(proc)


@pytest.mark.rule("DIAL-3", "LOOP-8", "WAKE-3")
def test_proxy_relays_a_large_greeting_then_echoes() -> None:
    greeting = os.urandom(6 * MiB)
    request = os.urandom(3 * MiB)
    with Upstream(greeting) as up, proxy(up.address) as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            assert recv_exactly(c, len(greeting)) == greeting
            join = in_thread(lambda: c.sendall(request))
            assert recv_exactly(c, len(request)) == request
            join()
        assert up.ends.get(timeout=TIMEOUT)[0] == len(request)
        stop(proc)


@pytest.mark.rule("LOOP-13", "LOOP-14", "EV-7", "WAKE-3")
@pytest.mark.parametrize("poller", POLLERS)
def test_proxy_upstream_closing_after_a_large_reply_delivers_all_of_it(poller: str) -> None:
    greeting = os.urandom(5 * MiB)
    with Upstream(greeting, close_after_greeting=True) as up, \
            proxy(up.address, "--poller", poller) as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            got = recv_all(c)  # every byte, then the end of stream
        assert len(got) == len(greeting) and got == greeting
        stop(proc)


@pytest.mark.rule("DIAL-3", "LOOP-8")
def test_proxy_keeps_concurrent_clients_apart() -> None:
    payloads = [os.urandom(MiB + i * 4097) for i in range(6)]
    with Upstream() as up, proxy(up.address) as (proc, port):
        joins = [in_thread(functools.partial(exchange, port, p)) for p in payloads]
        for join in joins:
            join()
        ends = sorted(up.ends.get(timeout=TIMEOUT) for _ in payloads)
        assert ends == sorted((len(p), hashlib.sha256(p).hexdigest()) for p in payloads)
        assert up.accepted == len(payloads)
        stop(proc)


@pytest.mark.rule("DIAL-4", "DIAL-5")
def test_proxy_closes_the_client_when_the_upstream_refuses() -> None:
    # A port that is bound but not listening refuses connections, and
    # nobody else can take it while we hold it.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port_nobody_listens_on = reserved.getsockname()[1]
        with proxy(f"tcp://127.0.0.1:{port_nobody_listens_on}") as (proc, port):
            for _ in range(3):
                with connect_to(("127.0.0.1", port), TIMEOUT) as c, \
                        contextlib.suppress(ConnectionResetError):  # a reset is closed too
                    assert c.recv(1) == b""  # closed, without a byte
            _, err = stop(proc)
    assert err.count("cannot reach") == 3, err
    assert err.count("ConnectionRefusedError") == 3, err


@pytest.mark.rule("DIAL-7", "REL-21")
def test_proxy_reads_nothing_from_a_client_while_its_upstream_connects() -> None:
    # A listener whose backlog is full: Linux drops further SYNs, so a dial
    # to it stays in progress (the proxy's dial timeout is 10 s).
    with (
        unanswered_listener() as (_, upstream_port),
        proxy(f"tcp://127.0.0.1:{upstream_port}") as (proc, port),
    ):
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            c.setblocking(False)
            sent, end = 0, time.monotonic() + 1.5
            with contextlib.suppress(BlockingIOError):
                while time.monotonic() < end:
                    sent += c.send(bytes(MiB))
            assert sent > 0  # until the kernel's buffers are full: nobody reads it
            c.setblocking(True)
            c.settimeout(0.3)
            with pytest.raises(TimeoutError):  # not closed either: it waits
                c.recv(1)
        # The upstream's dial is still in progress when the proxy
        # stops: it ends as aborted.
        _, err = stop(proc)
    assert "ConnectionAbortedError" in err, err


@pytest.mark.rule("REL-21", "DIAL-3")
def test_proxy_sends_what_a_client_sent_while_dialing_once_the_upstream_connects() -> None:
    payload = os.urandom(MiB)
    with socket.socket() as lst, contextlib.ExitStack() as fillers:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        for _ in range(16):  # fill the accept queue: the proxy's SYN is dropped
            f = fillers.enter_context(socket.socket())
            f.setblocking(False)
            f.connect_ex(lst.getsockname())
            if not select.select([], [f], [], 0.2)[1]:
                break
        with proxy(f"tcp://127.0.0.1:{lst.getsockname()[1]}") as (proc, port), \
                connect_to(("127.0.0.1", port), TIMEOUT) as c:
            def send() -> None:  # then end the stream, as `nc -N` does
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)

            join = in_thread(send)
            time.sleep(0.5)  # the client is sending; its upstream is still dialing
            fillers.close()  # room in the queue: the proxy's next SYN gets in

            def echo_all() -> None:
                lst.settimeout(TIMEOUT)
                while True:
                    conn, _ = lst.accept()
                    with conn:
                        conn.settimeout(TIMEOUT)
                        got = 0
                        with contextlib.suppress(OSError):
                            while chunk := conn.recv(MiB):
                                got += len(chunk)
                                conn.sendall(chunk)
                        if got:
                            return  # the proxy's: every byte echoed, then closed

            upstream = in_thread(echo_all)
            back = read_until_eof(c)
            join()
            upstream()
            assert len(back) == len(payload) and back == payload
            stop(proc)


def send_ignoring_reset(c: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        c.sendall(payload)


@pytest.mark.rule("LOOP-13", "LOOP-14", "EV-7", "WAKE-2")
def test_proxy_client_closing_ends_the_upstream_after_its_bytes() -> None:
    payload = os.urandom(2 * MiB)
    with Upstream(echo=False) as up, proxy(up.address) as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            c.sendall(payload)
        # The upstream gets every byte, then its end of stream.
        assert up.ends.get(timeout=TIMEOUT) == (len(payload), hashlib.sha256(payload).hexdigest())
        # A client that leaves before sending anything (maybe before the
        # upstream has even connected) ends its upstream too.
        connect_to(("127.0.0.1", port), TIMEOUT).close()
        assert up.ends.get(timeout=TIMEOUT) == (0, hashlib.sha256().hexdigest())
        stop(proc)


# --------------------------------------------------------------- UDP echo


def udp_client(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    s.connect(("127.0.0.1", port))  # only the server's datagrams are received
    return s


@pytest.mark.rule("UDP-2", "UDP-3")
@pytest.mark.parametrize("poller", POLLERS)
def test_udp_echo_returns_each_datagram_whole(poller: str) -> None:
    sizes = [1, 2, 7, 512, 1400, 1473, 8192, 9000, 32768, 50000, 60000]
    with example("udp_echo.py", "--poller", poller) as (proc, port):
        with udp_client(port) as s:
            for n in sizes:
                payload = os.urandom(n)
                s.send(payload)
                assert s.recv(65536) == payload, n
            # An empty datagram gets no reply (empty output sends nothing):
            # the next datagram back is the reply to the one sent after it.
            s.send(b"")
            s.send(b"marker")
            assert s.recv(65536) == b"marker"
        stop(proc)


@pytest.mark.rule("UDP-1", "UDP-2")
def test_udp_echo_answers_each_sender() -> None:
    with example("udp_echo.py") as (proc, port):
        a, b = udp_client(port), udp_client(port)
        with a, b:
            for i in range(50):
                a.send(b"a%d" % i)
                b.send(b"b%d" % i)
                assert a.recv(65536) == b"a%d" % i
                assert b.recv(65536) == b"b%d" % i
        stop(proc)


# ------------------------------------------------------------ command lines


@pytest.mark.rule("ADDR-6")
@pytest.mark.parametrize("name,flags", [
    ("wake_server.py", ["--delay", "--poller", "--port", "--host"]),
    ("proxy.py", ["--upstream", "--poller", "--port", "--host"]),
    ("udp_echo.py", ["--poller", "--port", "--host", "--idle-timeout"]),
])
def test_examples_help_and_bad_arguments(name: str, flags: list[str]) -> None:
    help_ = run_example(name, "--help")
    assert help_.returncode == 0
    assert all(f in help_.stdout for f in flags), help_.stdout
    extra = ["--upstream", "tcp://127.0.0.1:1"] if name == "proxy.py" else []
    bad_port = run_example(name, "--port", "70000", *extra)
    assert bad_port.returncode == 1
    assert "70000" in bad_port.stderr and "out of range" in bad_port.stderr
    if name == "wake_server.py":
        assert run_example(name, "--delay", "-1").returncode == 2
    if name == "udp_echo.py":
        zero = run_example(name, "--idle-timeout", "0", "--port", "0")
        assert zero.returncode == 1 and "udp_idle_timeout" in zero.stderr, zero.stderr
    if name == "proxy.py":
        assert run_example(name).returncode == 2  # --upstream is required
        refused = run_example(name, "--upstream", "udp://127.0.0.1:53")
        assert refused.returncode == 2 and "UDP" in refused.stderr
