"""The examples under attack: the proxy, the Redis clone and UDP, run as
real processes and measured from /proc (docs/spec/reliability.md,
*Examples under attack*). Bounds, not timings: each attack runs for a
fixed time or a fixed amount of data, then the server's resident memory
(``VmRSS``, peak ``VmHWM``) is read from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from typing import Any

import pytest
from harness import connect_to, read_until_eof
from test_examples_more import TIMEOUT, Upstream, proxy, stop

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


class Firehose:
    """A threaded TCP server that either streams zeros at whoever connects
    and never reads (``stream=True``, like ``socat ... OPEN:/dev/zero``), or
    reads nothing and sends nothing (``stream=False``)."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.stop = threading.Event()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                s = self.request
                s.settimeout(0.2)
                zeros = bytes(MiB)
                while not owner.stop.is_set():
                    try:
                        if owner.stream:
                            s.send(zeros)
                        else:
                            time.sleep(0.05)
                    except TimeoutError:
                        continue
                    except OSError:
                        return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            block_on_close = False
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"tcp://{host!s}:{port}"

    def __enter__(self) -> Firehose:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(TIMEOUT)


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
