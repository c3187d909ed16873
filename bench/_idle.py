"""Memory per idle connection: open thousands of connections, read the server's RSS.

Theory of operation
-------------------
A server's resident set grows with every connection it holds: the socket
object, the loop's record of it, the protocol object, buffers.  The kernel's
own socket memory is not in RSS, so RSS measures what the *library* spends.

The measurement: one throw-away connection first (so code paths that run on
the first accept, and imports they trigger, are not charged to the idle
connections), then RSS; then N connections, opened from this process in
batches no larger than the listen backlog (1024 for evio and for our asyncio
servers), waiting after each batch until the server holds that many more
descriptors -- that is, until it has *accepted* them, not merely until the
kernel completed the handshakes.  Then RSS again.  (after - before) / N is
the cost of one idle connection.

The traps: descriptors -- the server and this process each need N of them,
so both raise their soft limit to the hard one (`_procs.raise_nofile`); and
teardown -- the connections are reset (``SO_LINGER`` 0) rather than closed,
so tens of thousands of them leave no ``TIME_WAIT`` entries behind.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from _procs import ServerProcess, open_fds, status_kib

BATCH = 500  # connections opened before waiting for the server to accept them
ACCEPT_TIMEOUT = 30.0  # seconds for the server to accept one batch
SETTLE = 0.3  # seconds to let the server finish what accepting started


class IdleError(Exception):
    """The server did not accept the connections in time."""


@dataclass(slots=True)
class IdleMeasurement:
    conns: int
    rss_before_kib: int
    rss_after_kib: int

    @property
    def bytes_per_conn(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) * 1024 / self.conns


def _reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _wait_accepted(server: ServerProcess, fds: int) -> None:
    deadline = time.monotonic() + ACCEPT_TIMEOUT
    while open_fds(server.pid) < fds:
        if not server.alive():
            raise IdleError(f"{server.name} exited:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise IdleError(f"{server.name} holds {open_fds(server.pid)} descriptors, "
                            f"expected {fds}, after {ACCEPT_TIMEOUT:g} s")
        time.sleep(0.01)


def idle_rss(server: ServerProcess, conns: int) -> IdleMeasurement:
    """Hold ``conns`` idle connections to ``server``; measure its RSS before and after."""
    addr = ("127.0.0.1", server.port)
    with socket.create_connection(addr, timeout=10) as first:
        first.sendall(b"warm\n")  # an echo server answers; the first data path runs too
        first.recv(16)
    time.sleep(SETTLE)
    base = open_fds(server.pid)
    before = status_kib(server.pid, "VmRSS")
    socks: list[socket.socket] = []
    try:
        while len(socks) < conns:
            for _ in range(min(BATCH, conns - len(socks))):
                socks.append(socket.create_connection(addr, timeout=10))
            _wait_accepted(server, base + len(socks))
        time.sleep(SETTLE)
        after = status_kib(server.pid, "VmRSS")
        # Still serving? The last connection must echo (the others stay idle).
        socks[-1].sendall(b"ping\n")
        if socks[-1].recv(16) != b"ping\n":
            raise IdleError(f"{server.name} did not echo with {conns} connections open")
    finally:
        for s in socks:
            _reset(s)
    return IdleMeasurement(conns, before, after)
