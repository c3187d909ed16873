"""The examples under attack: the proxy, the Redis clone, UDP, HTTP and
the echo, wake and TLS echo servers, run as real processes and measured
from /proc (docs/spec/reliability.md, *Examples under attack*). Bounds,
not timings: each attack runs for a fixed time or a fixed amount of data,
then the server's resident memory (``VmRSS``, peak ``VmHWM``) is read from
``/proc/<pid>/status``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Any

import pytest
from harness import TCPService, connect_to, read_until_eof, recv_exactly, unanswered_listener
from test_examples_more import TIMEOUT, Upstream, example, proxy, stop

MiB = 1 << 20


def memory(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


class Firehose(TCPService):
    """A threaded TCP server that either streams zeros at whoever connects
    and never reads (``stream=True``, like ``socat ... OPEN:/dev/zero``), or
    reads nothing and sends nothing (``stream=False``)."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.stop = threading.Event()
        super().__init__()

    def serve_one(self, s: socket.socket) -> None:
        s.settimeout(0.2)
        zeros = bytes(MiB)
        while not self.stop.is_set():
            try:
                if self.stream:
                    s.send(zeros)
                else:
                    time.sleep(0.05)
            except TimeoutError:
                continue
            except OSError:
                return

    def stopping(self) -> None:
        self.stop.set()


def _flood(s: socket.socket, seconds: float) -> int:
    """Send zeros without blocking for ``seconds``; return how many went."""
    s.setblocking(False)
    zeros, sent, end = bytes(MiB), 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sent += s.send(zeros)
        except BlockingIOError:
            time.sleep(0.01)
    return sent


# ---------------------------------------------------------------- proxy


@pytest.mark.rule("REL-14", "REL-7", "REL-8")
@pytest.mark.parametrize("direction", ["client-never-reads", "upstream-never-reads"])
def test_proxy_memory_is_bounded_whoever_does_not_read(poller: str, direction: str) -> None:
    streaming = direction == "client-never-reads"
    with Firehose(stream=streaming) as up, proxy(up.address, "--poller", poller) as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as warm:  # imports, first dial
            warm.sendall(b"x")
            time.sleep(0.3)
        before = memory(proc.pid)["VmRSS"]
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            if streaming:
                time.sleep(3.0)  # the upstream streams; the client reads nothing
            else:
                assert _flood(c, 3.0) > 0  # the client streams; the upstream reads nothing
            grown = memory(proc.pid)["VmRSS"] - before
        print(f"proxy ({poller}, {direction}): grew {grown / MiB:.1f} MiB in 3 s")
        assert grown < 10 * MiB
        stop(proc)


@pytest.mark.rule("REL-21")
def test_proxy_memory_stays_flat_while_many_clients_send_to_an_upstream_still_dialing(
        poller: str) -> None:
    with unanswered_listener() as (_, upstream_port), \
            proxy(f"tcp://127.0.0.1:{upstream_port}", "--poller", poller) as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as warm:  # imports, first dial
            warm.sendall(b"x")
            time.sleep(0.3)
        before = memory(proc.pid)["VmRSS"]
        clients = [connect_to(("127.0.0.1", port), TIMEOUT) for _ in range(50)]
        try:
            sent = [0] * len(clients)

            def flood(i: int) -> None:  # each tries to send 4 MiB
                c = clients[i]
                c.setblocking(False)
                end = time.monotonic() + 2.0
                while sent[i] < 4 * MiB and time.monotonic() < end:
                    try:
                        sent[i] += c.send(bytes(min(MiB, 4 * MiB - sent[i])))
                    except BlockingIOError:
                        time.sleep(0.02)

            threads = [threading.Thread(target=flood, args=(i,)) for i in range(len(clients))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(TIMEOUT)
            grown = memory(proc.pid)["VmRSS"] - before
        finally:
            for c in clients:
                c.close()
        print(f"proxy ({poller}): 50 clients sending while dialing: grew {grown / MiB:.1f} MiB")
        assert grown < 10 * MiB  # what was sent waits in the kernel's buffers
        assert sum(sent) > 0
        stop(proc)


@pytest.mark.rule("REL-15", "REL-11", "REL-12")
def test_proxy_passes_half_close_through_every_byte_comes_back(poller: str) -> None:
    payload = os.urandom(MiB)
    with Upstream() as up, proxy(up.address, "--poller", poller) as (proc, port):
        for _ in range(3):
            with connect_to(("127.0.0.1", port), TIMEOUT) as c:  # what `nc -N` does
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                got = read_until_eof(c)
            assert len(got) == len(payload) and got == payload
        stop(proc)


# ---------------------------------------------------------- Redis clone


def _command(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def _set_bigkey(port: int, size: int) -> None:
    with connect_to(("127.0.0.1", port), TIMEOUT) as s:
        s.sendall(_command(b"SET", b"bigkey", b"v" * size))
        assert recv_exactly(s, 5) == b"+OK\r\n"


def _ping_times(port: int, n: int = 20) -> list[float]:
    times = []
    with connect_to(("127.0.0.1", port), TIMEOUT) as s:
        for _ in range(n):
            started = time.monotonic()
            s.sendall(b"PING\r\n")
            assert recv_exactly(s, 7) == b"+PONG\r\n"
            times.append(time.monotonic() - started)
            time.sleep(0.05)
    return times


def _send_all_without_reading(s: socket.socket, data: bytes, seconds: float) -> int:
    s.setblocking(False)
    sent, end = 0, time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < end:
        try:
            sent += s.send(data[sent:])
        except BlockingIOError:
            time.sleep(0.01)
    return sent


@pytest.mark.rule("REL-16", "REL-8")
def test_redis_pipelined_big_gets_from_a_client_that_never_reads(poller: str) -> None:
    with example("redis_server.py", "--poller", poller) as (proc, port):
        _set_bigkey(port, MiB)
        with connect_to(("127.0.0.1", port), TIMEOUT) as attacker:
            attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            gets = _command(b"GET", b"bigkey") * 2600
            sent = _send_all_without_reading(attacker, gets, 3.0)
            times = _ping_times(port)
            hwm = memory(proc.pid)["VmHWM"]
            print(f"redis ({poller}): {sent} of {len(gets)} bytes of GETs taken; "
                  f"peak RSS {hwm / MiB:.1f} MiB; PING max {max(times) * 1000:.1f} ms")
            assert hwm < 100 * MiB
            assert max(times) < 0.1
            attacker.setblocking(True)
            attacker.settimeout(TIMEOUT)
            head = recv_exactly(attacker, 3 * (MiB + 12))  # the replies are all there, in order
            assert head == (b"$1048576\r\n" + b"v" * MiB + b"\r\n") * 3
        stop(proc)


@pytest.mark.rule("REL-20")
@pytest.mark.parametrize("command", [b"SET", b"UNKNOWN"])
def test_redis_one_large_command_costs_at_most_three_times_its_size(
        poller: str, command: bytes) -> None:
    # The documented bound for the one request being run: its reads, the
    # joined request and its arguments, each at most once.
    size = 24 * MiB
    value = bytes(size)
    request = _command(command, b"k", value) if command == b"SET" else _command(value)
    with example("redis_server.py", "--poller", poller) as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as warm:  # the parser's paths, once
            warm.sendall(_command(b"SET", b"w", bytes(MiB)) + b"PING\r\n")
            assert recv_exactly(warm, 12) == b"+OK\r\n+PONG\r\n"
        before = memory(proc.pid)["VmHWM"]
        with connect_to(("127.0.0.1", port), TIMEOUT) as s:
            s.sendall(request)
            reply = s.recv(64)
            if command == b"SET":
                assert reply == b"+OK\r\n"
                s.sendall(b"EXISTS k\r\n")
                assert recv_exactly(s, 4) == b":1\r\n"
            else:
                assert reply.startswith(b"-ERR unknown command")
        grown = memory(proc.pid)["VmHWM"] - before
        print(f"redis ({poller}): a {size // MiB} MiB {command.decode()} raised the peak by "
              f"{grown / MiB:.0f} MiB")
        assert grown < 3 * size + SLACK
        stop(proc)


@pytest.mark.rule("REL-17", "REL-4", "REL-10")
def test_redis_timeout_and_max_output(poller: str) -> None:
    with example("redis_server.py", "--poller", poller, "--timeout", "0.5",
                 "--max-output", str(MiB)) as (proc, port):
        _set_bigkey(port, 16 * MiB)
        with connect_to(("127.0.0.1", port), TIMEOUT) as idle, \
                connect_to(("127.0.0.1", port), TIMEOUT) as greedy:
            greedy.sendall(_command(b"GET", b"bigkey"))  # and do not read, for now
            started = time.monotonic()
            assert read_until_eof(idle) == b""  # closed for idling
            assert 0.4 < time.monotonic() - started < 5
            # closed over the output limit: what the kernel had taken, then the end
            assert len(read_until_eof(greedy)) < 16 * MiB
            assert max(_ping_times(port, 3)) < 1.0  # the server goes on
        stop(proc)


# ------------------------------------------------------------------ UDP

_UDP_SERVER = """
import signal, sys
import evio
counts = {"opened": 0, "closed": 0}
def serving(server):
    signal.signal(signal.SIGTERM, lambda *a: server.stop())
    print("listening on", server.addrs[0], flush=True)
def opened(id, info):
    counts["opened"] += 1
def closed(id, err):
    counts["closed"] += 1
def tick():
    print(counts["opened"], counts["closed"], flush=True)
    return 0.2
evio.serve(evio.Events(serving=serving, opened=opened, closed=closed, tick=tick,
                       data=lambda id, d: None, udp_idle_timeout=float(sys.argv[1])),
           "udp://127.0.0.1:0", poller=sys.argv[2])
"""


def _udp_flood(port: int, sources: int) -> None:
    """One datagram to ``port`` from each of ``sources`` loopback addresses."""
    for i in range(sources):
        ip = f"127.{1 + (i >> 16) % 250}.{(i >> 8) & 255}.{i & 255 or 1}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
            s.sendto(b"x", ("127.0.0.1", port))
        if i % 2000 == 0:
            time.sleep(0.002)  # let the server keep up: drops make no remotes


@pytest.mark.rule("REL-18", "REL-20", "UDP-10")
def test_the_udp_example_gives_a_floods_memory_back(poller: str) -> None:
    # The example has no tick and no state of its own: what is left after
    # the flood is what the loop keeps.
    with example("udp_echo.py", "--poller", poller, "--idle-timeout", "1") as (proc, port):
        time.sleep(0.3)
        before = memory(proc.pid)["VmRSS"]
        _udp_flood(port, 300_000)
        peak = memory(proc.pid)["VmRSS"]
        assert peak - before > 10 * MiB  # the flood did make remotes
        # Forgotten a second after the last datagram (UDP-10) and given back
        # on the turn after; a loaded machine may take longer to get there,
        # so wait for it (up to TIMEOUT), not for a fixed time.
        end = time.monotonic() + TIMEOUT
        last = peak
        while last - before >= 3 * MiB and time.monotonic() < end:
            time.sleep(0.25)
            last = memory(proc.pid)["VmRSS"]
        print(f"udp_echo ({poller}): RSS {before / MiB:.1f} MiB before, {peak / MiB:.1f} at "
              f"the end of the flood, {last / MiB:.1f} once idle")
        # Measured +0.6 to +1.7 MiB; before the loop stopped keeping its
        # last clock reading and list of reports from the flood, +2.7 to
        # +4.7 MiB.
        assert last - before < 3 * MiB
        stop(proc)


@pytest.mark.rule("REL-18", "UDP-10", "UDP-11")
def test_udp_remotes_from_300k_sources_are_forgotten(poller: str) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _UDP_SERVER, "1.0", poller],
                            stdout=subprocess.PIPE, text=True)
    try:
        stdout = proc.stdout
        assert stdout is not None
        banner = stdout.readline()
        port = int(banner.split(", ")[1].split(")")[0])
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")),
                                  daemon=True)
        reader.start()

        def counts() -> tuple[int, int]:
            opened, closed = lines[-1].split() if lines else ("0", "0")
            return int(opened), int(closed)

        # A fresh server, one flood, no warm-up: what is measured is what a
        # real server keeps after its first flood.
        while not lines:
            time.sleep(0.05)
        before = memory(proc.pid)["VmRSS"]
        _udp_flood(port, 300_000)
        peak = memory(proc.pid)
        end = time.monotonic() + TIMEOUT
        while counts()[1] < counts()[0]:
            assert time.monotonic() < end, f"remotes never forgotten: {counts()}"
            time.sleep(0.1)
        time.sleep(0.5)  # the memory is given back on the turn after the last sweep
        after = memory(proc.pid)["VmRSS"]
        opened, _ = counts()
        print(f"udp ({poller}): {opened} remotes; RSS {before / MiB:.1f} MiB before, "
              f"{peak['VmRSS'] / MiB:.1f} at the end of the flood, {after / MiB:.1f} once idle")
        assert opened > 100_000  # the rest were dropped by the kernel: no remote
        # What stays is a few arenas of CPython's allocator (1 MiB each) that
        # a live object allocated during the flood keeps: the loop's next
        # timer entry, this server's counters (measured +3 to +5 MiB; without
        # evio._reclaim's give-back, +12 to +18 MiB).
        assert after - before < 8 * MiB
    finally:
        proc.terminate()
        proc.communicate(timeout=TIMEOUT)


# ------------------------------------------------- HTTP and TLS examples


def _closed_after(port: int, trickle: bytes = b"") -> float:
    """Connect; send ``trickle`` a byte every 0.1 s (nothing if empty) and
    read nothing else; return the seconds until the server closed."""
    with connect_to(("127.0.0.1", port), TIMEOUT) as s:
        started = time.monotonic()
        s.settimeout(0.1)
        i = 0
        while time.monotonic() - started < TIMEOUT:
            try:
                if not s.recv(65536):
                    return time.monotonic() - started
            except TimeoutError:
                if i < len(trickle):
                    s.send(trickle[i:i + 1])
                    i += 1
            except ConnectionResetError:
                return time.monotonic() - started
    raise AssertionError("never closed")


# The start of a TLS ClientHello record, sent a byte at a time: never complete.
_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64))


def _pipeline_without_reading(socks: list[socket.socket], request: bytes, pid: int,
                              seconds: float) -> tuple[int, int]:
    """Send ``request`` over and over on every socket, whole requests in
    order (a partial send goes on where it stopped), never reading, for
    ``seconds``; return the bytes sent and the server's highest ``VmRSS``."""
    view = memoryview(request)
    at = [0] * len(socks)
    sent, peak, end = 0, 0, time.monotonic() + seconds
    for s in socks:
        s.setblocking(False)
    while time.monotonic() < end and socks:
        moved = False
        for i, s in enumerate(socks):
            try:
                n = s.send(view[at[i]:])
            except BlockingIOError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return sent, max(peak, memory(pid)["VmRSS"])  # closed: the test fails on it
            at[i] = (at[i] + n) % len(request)
            sent += n
            moved = True
        if not moved:
            peak = max(peak, memory(pid)["VmRSS"])
            time.sleep(0.02)
    return sent, max(peak, memory(pid)["VmRSS"])


@pytest.mark.rule("REL-20")
@pytest.mark.parametrize("kind", ["echo-bodies", "refused"])
def test_http_example_holds_clients_that_pipeline_megabytes_and_never_read(
        poller: str, kind: str) -> None:
    # "echo-bodies": 1 MiB POST /echo requests, whole; "refused": the same
    # request with a bad header after the first, so each connection ends
    # with a 400 while its 1 MiB response is still unread.
    conns, per_conn = 16, 3 * MiB  # the bound the example states
    body = bytes(MiB)
    good = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (MiB, body)
    request = good if kind == "echo-bodies" else good + b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"
    with example("http_server.py", "--poller", poller, "--no-tls") as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as warm:  # each path once
            warm.sendall(good)
            head = b""
            while b"\r\n\r\n" not in head:
                head += warm.recv(65536)
        before = memory(proc.pid)["VmRSS"]
        socks = [_non_reader(port) for _ in range(conns)]
        try:
            sent, peak = _pipeline_without_reading(socks, request, proc.pid, 4.0)
        finally:
            for s in socks:
                s.close()
        grown = peak - before
        print(f"http ({poller}, {kind}): {sent / MiB:.0f} MiB sent on {conns} connections; "
              f"RSS grew {grown / MiB:.1f} MiB at most ({grown / conns / MiB:.2f} per connection, "
              f"bound {per_conn // MiB} MiB each + slack)")
        assert sent > conns * MiB
        assert grown < conns * per_conn + SLACK
        stop(proc)


@pytest.mark.rule("REL-19", "REL-4", "TR-7")
def test_http_example_idle_and_handshake_timeouts_and_400_on_the_https_port(
        poller: str) -> None:
    with example("http_server.py", "--poller", poller, "--tlsport", "0",
                 "--idle-timeout", "0.5", "--handshake-timeout", "1.0") as (proc, port):
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("https on"), line
        tls_port = int(line.split(", ")[1].split(")")[0])
        with connect_to(("127.0.0.1", tls_port), TIMEOUT) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = read_until_eof(s)
        assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n"), answer
        assert b"HTTP request to an HTTPS server" in answer
        assert 0.4 < _closed_after(port) < 5  # idle on the plain port
        assert 0.4 < _closed_after(tls_port) < 5  # idle before the handshake
        # Trickling a handshake keeps it from idling, not from its deadline.
        assert 0.9 < _closed_after(tls_port, _HELLO_START) < 5
        stop(proc)


class _Trickler:
    """A client that sends ``text`` one byte per ``step`` and never stops,
    and notes what the server answers and when it closes."""

    def __init__(self, s: Any, text: bytes) -> None:
        self.s, self.text, self.at = s, text, 0
        self.got = b""
        self.closed_at: float | None = None
        s.setblocking(False)

    def step(self) -> None:
        import ssl

        if self.closed_at is not None:
            return
        try:
            while chunk := self.s.recv(65536):
                self.got += chunk
            self.closed_at = time.monotonic()
            return
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError:  # reset: closed too
            self.closed_at = time.monotonic()
            return
        with contextlib.suppress(BlockingIOError, ssl.SSLWantReadError,
                                 ssl.SSLWantWriteError):
            self.s.send(self.text[self.at % len(self.text):][:1])
            self.at += 1


def _tls_client(port: int) -> Any:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(connect_to(("127.0.0.1", port), TIMEOUT))
    return s


@pytest.mark.rule("HTTP-19", "REL-4")
def test_http_example_closes_tricklers_within_the_header_and_body_timeouts(
        poller: str) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 4000
    body = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    with example("http_server.py", "--poller", poller, "--tlsport", "0",
                 "--header-timeout", "1", "--body-timeout", "1.5",
                 "--idle-timeout", "30") as (proc, port):
        assert proc.stdout is not None
        line = proc.stdout.readline()
        tls_port = int(line.split(", ")[1].split(")")[0])
        started = time.monotonic()
        heads = [_Trickler(connect_to(("127.0.0.1", port), TIMEOUT), head)
                 for _ in range(40)]
        heads += [_Trickler(_tls_client(tls_port), head) for _ in range(5)]
        bodies = []
        for _ in range(5):
            b = _Trickler(connect_to(("127.0.0.1", port), TIMEOUT), b"x")
            b.s.sendall(body)  # the head at once; then a body byte at a time
            bodies.append(b)
        everyone = heads + bodies
        answered, slowest = 0, 0.0
        try:
            while time.monotonic() - started < 6 and any(
                    t.closed_at is None for t in everyone):
                for t in everyone:
                    t.step()
                # Meanwhile a normal client is answered at once.
                asked = time.monotonic()
                with connect_to(("127.0.0.1", port), TIMEOUT) as c:
                    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    assert read_until_eof(c).startswith(b"HTTP/1.1 200 OK")
                answered += 1
                slowest = max(slowest, time.monotonic() - asked)
                time.sleep(0.1)
        finally:
            for t in everyone:
                t.s.close()
        print(f"http ({poller}): 50 tricklers; {answered} normal requests answered, "
              f"slowest {slowest * 1000:.0f} ms")
        for t in heads:
            assert t.closed_at is not None and t.closed_at - started < 1 + 2.5
            assert t.got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), t.got[:80]
        for t in bodies:
            assert t.closed_at is not None and t.closed_at - started < 1.5 + 2.5
            assert t.got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), t.got[:80]
            assert b"request body not received within 1.5 s" in t.got
        assert answered >= 5
        stop(proc)


@pytest.mark.rule("HTTP-19")
def test_http_example_times_each_request_not_the_connection(poller: str) -> None:
    # Requests in two halves, 0.3 s apart, for 3 s on one connection: each
    # head is whole well within the 1 s bound, so none is timed out.
    with example("http_server.py", "--poller", poller, "--no-tls",
                 "--header-timeout", "1", "--idle-timeout", "30") as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            f = c.makefile("rb")
            for _ in range(6):
                c.sendall(b"GET / HTTP/1.1\r\nHo")
                time.sleep(0.25)
                c.sendall(b"st: x\r\n\r\nGET / HT")  # and the start of the next
                time.sleep(0.25)
                c.sendall(b"TP/1.1\r\nHost: x\r\n\r\n")
                for _ in range(2):
                    assert f.readline() == b"HTTP/1.1 200 OK\r\n"
                    length = 0
                    while (line := f.readline()) != b"\r\n":
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    assert f.read(length).startswith(b"Hello World!")
        stop(proc)


@pytest.mark.rule("REDIS-23", "REL-4")
def test_redis_example_closes_a_client_trickling_a_command(poller: str) -> None:
    with example("redis_server.py", "--poller", poller, "--command-timeout", "1",
                 "--timeout", "30") as (proc, port):
        started = time.monotonic()
        tricklers = [_Trickler(connect_to(("127.0.0.1", port), TIMEOUT),
                               b"*2\r\n$4\r\nECHO\r\n$100000\r\n" + b"a" * 1000)
                     for _ in range(20)]
        steady = connect_to(("127.0.0.1", port), TIMEOUT)
        f = steady.makefile("rb")
        try:
            while time.monotonic() - started < 4 and any(
                    t.closed_at is None for t in tricklers):
                for t in tricklers:
                    t.step()
                # Another client, sending whole commands in two halves, is
                # answered and never cut.
                steady.sendall(b"*1\r\n$4\r\nPI")
                time.sleep(0.1)
                steady.sendall(b"NG\r\n")
                assert f.readline() == b"+PONG\r\n"
        finally:
            for t in tricklers:
                t.s.close()
        for t in tricklers:
            assert t.closed_at is not None and t.closed_at - started < 1 + 2.5
            assert t.got == b"-ERR command not received whole within 1 seconds\r\n", t.got
        steady.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert f.readline() == b"+PONG\r\n"
        steady.close()
        stop(proc)


@pytest.mark.rule("REL-19", "REL-4")
def test_tls_echo_example_idle_and_handshake_timeouts(poller: str) -> None:
    from test_example_tls import stop as stop_tls
    from test_example_tls import tls_echo

    with tls_echo("--poller", poller, "--quiet", "--idle-timeout", "0.5",
                  "--handshake-timeout", "1.0") as ex:
        assert 0.4 < _closed_after(ex.tls_port) < 5
        assert 0.9 < _closed_after(ex.tls_port, _HELLO_START) < 5
        stop_tls(ex)


# -------------------------------------- echo, wake and TLS echo (REL-20)

KiB = 1 << 10
SLACK = 4 * MiB
"""Interpreter noise over a stated bound: allocator arenas, a first use of
a code path, the kernel's accounting of page tables."""


def _flood_watching(s: Any, pid: int, chunk: bytes, seconds: float) -> tuple[int, int]:
    """Send ``chunk`` over and over without reading and without blocking, for
    ``seconds`` or until the server closes; return the bytes sent and the
    server's highest ``VmRSS`` seen meanwhile. ``s`` is a socket or an
    ``ssl.SSLSocket``."""
    import ssl

    s.setblocking(False)
    sent, peak, end = 0, 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sent += s.send(chunk)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            peak = max(peak, memory(pid)["VmRSS"])
            time.sleep(0.01)
        except (ConnectionResetError, BrokenPipeError):
            break  # closed by the server
    return sent, max(peak, memory(pid)["VmRSS"])


def _non_reader(port: int) -> socket.socket:
    """A client with a small receive buffer (set before connecting), so the
    server's output backs up at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.settimeout(TIMEOUT)
    s.connect(("127.0.0.1", port))
    return s


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


@pytest.mark.rule("REL-20", "REL-1", "REL-2")
def test_echo_example_holds_a_client_that_pipelines_megabytes_and_never_reads(
        poller: str) -> None:
    bound = 64 * KiB + 64 * KiB  # the high-water mark plus one read
    with example("echo_server.py", "--poller", poller, "--quiet") as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as warm:  # the output path, once
            warm.sendall(bytes(MiB))
            assert recv_exactly(warm, MiB) == bytes(MiB)
        before = memory(proc.pid)["VmRSS"]
        with _non_reader(port) as c:
            sent, peak = _flood_watching(c, proc.pid, bytes(MiB), 3.0)
            grown = peak - before
            print(f"echo ({poller}): {sent / MiB:.1f} MiB pipelined unread; "
                  f"RSS grew {grown / KiB:.0f} KiB at most (bound {bound // KiB} KiB + slack)")
            assert sent > 2 * MiB  # megabytes went: the kernel's buffers, not ours
            assert grown < bound + SLACK
            c.setblocking(True)
            c.settimeout(TIMEOUT)
            assert recv_exactly(c, sent) == bytes(sent)  # nothing lost meanwhile
        stop(proc)


_LINE_ERROR = b"error: line longer than 65536 bytes\n"


@pytest.mark.rule("REL-20", "REL-1")
def test_wake_example_holds_a_client_that_never_reads_and_refuses_endless_lines(
        poller: str) -> None:
    bound = 64 * KiB + 64 * KiB + 64 * KiB + 64 * KiB  # partial line, mark, one read, slop
    with example("wake_server.py", "--poller", poller, "--delay", "60") as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as warm:
            warm.sendall(b"hello\n" * 20000)
            assert recv_exactly(warm, 6 * 20000) == b"hello\n" * 20000
        before = memory(proc.pid)["VmRSS"]
        # Lines it cannot echo to a client that never reads.
        with _non_reader(port) as c:
            sent, peak = _flood_watching(c, proc.pid, b"x" * 99 + b"\n", 2.0)
        # A line that never ends, sent as fast as the server takes it.
        with _non_reader(port) as c:
            more, peak2 = _flood_watching(c, proc.pid, b"x" * 4096, 2.0)
        grown = max(peak, peak2) - before
        print(f"wake ({poller}): {sent / MiB:.1f} MiB of lines unread, {more / KiB:.0f} KiB "
              f"of one line; RSS grew {grown / KiB:.0f} KiB at most")
        assert sent > 2 * MiB
        assert more < 16 * MiB  # closed: the kernel stopped taking it
        assert grown < bound + SLACK
        # The endless line is answered, then closed: exactly one byte too many.
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            c.sendall(b"y" * (64 * KiB + 1))
            assert read_until_eof(c) == _LINE_ERROR
        # A whole line one byte too long, in one piece or two: the same answer.
        for pieces in ([b"z" * (64 * KiB + 1) + b"\n"], [b"z" * (64 * KiB + 1), b"\n"]):
            with connect_to(("127.0.0.1", port), TIMEOUT) as c:
                c.sendall(b"ok\n")
                assert recv_exactly(c, 3) == b"ok\n"
                for piece in pieces:
                    c.sendall(piece)
                    time.sleep(0.1)
                assert read_until_eof(c) == _LINE_ERROR
        # The longest line allowed is echoed.
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            longest = b"w" * (64 * KiB) + b"\n"
            c.sendall(longest)
            assert recv_exactly(c, len(longest)) == longest
        stop(proc)


@pytest.mark.rule("REL-20")
def test_wake_example_runs_at_most_16_jobs_per_client(poller: str) -> None:
    with example("wake_server.py", "--poller", poller, "--delay", "60") as (proc, port):
        with connect_to(("127.0.0.1", port), TIMEOUT) as c:
            c.sendall(b"".join(b"exec %d\n" % i for i in range(100)) + b"ping\n")
            want = b"".join(b"exec %d busy\n" % i for i in range(16, 100)) + b"ping\n"
            assert recv_exactly(c, len(want)) == want
            threads = _threads(proc.pid)
            print(f"wake ({poller}): {threads} threads after 100 exec")
            assert threads <= 1 + 16
        stop(proc)


@pytest.mark.rule("REL-20", "REL-1", "REL-2")
def test_tls_echo_example_holds_a_client_that_never_reads(poller: str) -> None:
    import ssl

    from test_example_tls import stop as stop_tls
    from test_example_tls import tls_echo

    bound = 64 * KiB + 64 * KiB + 64 * KiB  # mark, one read encrypted, a TLS session
    with tls_echo("--poller", poller, "--quiet") as ex:
        assert ex.ca is not None
        ctx = ssl.create_default_context(cafile=str(ex.ca))
        with ctx.wrap_socket(connect_to(("127.0.0.1", ex.tls_port), TIMEOUT),
                             server_hostname="localhost") as warm:
            warm.sendall(bytes(MiB))
            got = 0
            while got < MiB:
                got += len(warm.recv(MiB))
        before = memory(ex.proc.pid)["VmRSS"]
        with ctx.wrap_socket(_non_reader(ex.tls_port), server_hostname="localhost") as c:
            sent, peak = _flood_watching(c, ex.proc.pid, bytes(16 * KiB), 3.0)
            grown = peak - before
            print(f"tls echo ({poller}): {sent / MiB:.1f} MiB pipelined unread; "
                  f"RSS grew {grown / KiB:.0f} KiB at most (bound {bound // KiB} KiB + slack)")
            assert sent > 2 * MiB
            assert grown < bound + SLACK
        # Many at once: the stated bound per client, OpenSSL's buffers included.
        per_client, n = 512 * KiB, 20
        before = memory(ex.proc.pid)["VmRSS"]
        clients = [ctx.wrap_socket(_non_reader(ex.tls_port), server_hostname="localhost")
                   for _ in range(n)]
        try:
            peak = 0
            for c in clients:
                _, p = _flood_watching(c, ex.proc.pid, bytes(16 * KiB), 0.3)
                peak = max(peak, p)
            time.sleep(0.3)
            peak = max(peak, memory(ex.proc.pid)["VmRSS"])
        finally:
            for c in clients:
                c.close()
        grown = peak - before
        print(f"tls echo ({poller}): {n} clients that never read; RSS grew "
              f"{grown / n / KiB:.0f} KiB per client (bound {per_client // KiB} KiB)")
        assert grown < n * per_client + SLACK
        stop_tls(ex)
