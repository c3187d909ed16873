"""The asyncio and uvloop counterparts of the example servers, for the benchmarks.

Run one as::

    python bench/servers/aio.py echo  --loop asyncio --port 0
    python bench/servers/aio.py http  --loop uvloop  --port 0
    python bench/servers/aio.py redis --loop asyncio --port 0

It prints ``listening on ('127.0.0.1', PORT)`` -- the same line the evio
examples print, so `bench/run.py` finds the port the same way -- and stops
on SIGTERM or Ctrl-C.

Theory of operation
-------------------
A benchmark against asyncio is only fair if asyncio is used the way a
performance-minded author would use it, so these are ``asyncio.Protocol``
servers (callbacks, no streams, no coroutine per connection): the API
closest to evio's own.  uvloop runs *the same classes*; only the loop
changes (``uvloop.run`` instead of ``asyncio.run``).

``echo`` writes back whatever arrives, as ``examples/echo_server.py`` does.
``http`` and ``redis`` pump the sans-I/O sessions of ``minimal.py``, which
``evio_min.py`` pumps from evio too; that module says what they parse.

The listen backlog is 1024, the value evio uses (asyncio's default is 100),
so opening thousands of idle connections in a burst treats both alike.

A trap worth knowing when reading the results: asyncio's selector transport
reads with ``sock.recv(256 KiB)``.  CPython allocates the whole 256 KiB for
each call and shrinks it to what arrived; 256 KiB is above glibc's initial
``mmap`` threshold (128 KiB), so each read is an ``mmap``/``munmap`` pair --
until the first read that returns *nothing* (a peer closing) frees a whole
block, which makes glibc raise its threshold, and from then on the buffers
come from the heap.  A fresh asyncio server is several times slower per
small read than one that has seen a connection close.  `bench/run.py`
checks each server is up by connecting and closing once, so every asyncio
server it measures is in the steady, faster state.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from collections.abc import Callable

from minimal import Clock, HttpSession, RedisSession

BACKLOG = 1024


class Echo(asyncio.Protocol):
    """Every byte that arrives goes straight back."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Http(asyncio.Protocol):
    """HTTP/1.1 Hello World (`minimal.HttpSession`)."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.session = HttpSession(b"asyncio")

    def data_received(self, data: bytes) -> None:
        out, close = self.session.feed(data)
        if out:
            self.transport.write(out)
        if close:
            self.transport.close()


class Redis(asyncio.Protocol):
    """RESP PING and CONFIG GET (`minimal.RedisSession`)."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.session = RedisSession()

    def data_received(self, data: bytes) -> None:
        out, close = self.session.feed(data)
        if out:
            self.transport.write(out)
        if close:
            self.transport.close()


PROTOCOLS: dict[str, Callable[[], asyncio.Protocol]] = {
    "echo": Echo, "http": Http, "redis": Redis,
}


def _tick(loop: asyncio.AbstractEventLoop) -> None:
    Clock.refresh()
    loop.call_later(0.2, _tick, loop)


async def serve(kind: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(PROTOCOLS[kind], host, port, backlog=BACKLOG)
    bound = server.sockets[0].getsockname()
    print(f"{kind} server listening on {bound!r} (loop: {type(loop).__module__})", flush=True)
    if kind == "http":
        _tick(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="asyncio/uvloop servers for the benchmarks")
    parser.add_argument("kind", choices=sorted(PROTOCOLS))
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    main_coro = serve(args.kind, args.host, args.port)
    if args.loop == "uvloop":
        importlib.import_module("uvloop").run(main_coro)
    else:
        asyncio.run(main_coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
