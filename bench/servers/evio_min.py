"""evio serving the same minimal sessions as the asyncio servers: the loops compared alone.

Run one as::

    python bench/servers/evio_min.py http  --port 0
    python bench/servers/evio_min.py redis --port 0

Theory of operation
-------------------
The evio examples carry complete parsers (``examples/http11.py``,
``examples/resp.py``); the asyncio and uvloop servers of the benchmark pump
the minimal sans-I/O sessions of ``minimal.py``.  When evio's example is
slower than asyncio, is it the loop or the parser?  This server answers
that: it pumps *the same sessions* from evio's ``data`` callback, so the
only difference left between it and ``aio.py`` is the event loop.

It prints ``listening on ('127.0.0.1', PORT)`` and stops on SIGTERM or
Ctrl-C (through `Server.stop()`), like the examples.
"""

from __future__ import annotations

import argparse
import signal
import sys

from minimal import Clock, HttpSession, RedisSession

import evio

Session = HttpSession | RedisSession


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="evio with the benchmark's minimal sessions")
    parser.add_argument("kind", choices=["http", "redis"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    sessions: dict[int, Session] = {}
    make = (lambda: HttpSession(b"evio")) if args.kind == "http" else RedisSession
    def serving(server: evio.Server) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: server.stop())
        print(f"{args.kind} server listening on {server.addrs[0]!r} (evio, {server.poller})",
              flush=True)

    def opened(id: int, info: evio.Info) -> None:
        sessions[id] = make()

    def data(id: int, data: bytes | None) -> bytes | tuple[bytes, evio.Action] | None:
        if data is None:
            return None  # a wake: never asked for
        out, close = sessions[id].feed(data)
        return (out, evio.Action.CLOSE) if close else out

    def closed(id: int, err: BaseException | None) -> None:
        sessions.pop(id, None)

    def tick() -> float:
        Clock.refresh()
        return 0.2

    # Only HTTP needs the clock (its Date header): aio.py ticks for HTTP alone too.
    evio.serve(evio.Events(serving=serving, opened=opened, data=data, closed=closed,
                           tick=tick if args.kind == "http" else None),
               f"tcp://{args.host}:{args.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
