"""Stage 2: a ``select`` loop serves many clients on one thread.

Instead of waiting on one socket, ask the kernel which of *all* our sockets
have something to read, and only touch those: the listener is "readable"
when a client is waiting to be accepted, a connection when bytes (or the
end of the stream) arrived. Neither ``accept`` nor ``recv`` can wait then.

The trap left in this stage: ``sendall`` still waits. A client that sends
but does not read fills its receive buffer, ``sendall`` blocks, and every
other client waits with it. Stage 3 fixes that.

    python tutorial/stage2_select_loop.py --port 5000
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import select
import socket

TRACE = False
"""Set by ``--trace``: print what each turn of the loop does."""


def trace(line: str) -> None:
    """Print one line of the trace, when ``--trace`` asked for it."""
    if TRACE:
        print(line, flush=True)


def serve(listener: socket.socket) -> None:
    """Echo for every connected client, for ever."""
    clients: list[socket.socket] = []
    for turn in itertools.count(1):
        readable, _, _ = select.select([listener, *clients], [], [])  # the only wait
        names = ("listener" if s is listener else f"fd {s.fileno()}" for s in readable)
        trace(f"turn {turn}: select() says ready: {', '.join(names)}")
        for sock in readable:
            if sock is listener:
                conn, _ = listener.accept()  # ready, so this does not wait
                clients.append(conn)
                trace(f"  listener: accept() -> fd {conn.fileno()}")
                continue
            fd = sock.fileno()
            try:
                data = sock.recv(65536)  # ready, so this does not wait either
                trace(f"  fd {fd}: recv() -> {len(data)} bytes")
                if data:
                    sock.sendall(data)  # but this can: the trap of this stage
                    trace(f"  fd {fd}: sendall() wrote {len(data)} bytes")
                    continue
            except ConnectionError:
                pass  # a reset: close it like an orderly end
            clients.remove(sock)
            sock.close()
            trace(f"  fd {fd}: closed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stage 2: an echo server on a select loop.")
    parser.add_argument("--port", type=int, default=5000,
                        help="TCP port on 127.0.0.1 (default 5000; 0 picks a free one)")
    parser.add_argument("--trace", action="store_true",
                        help="print what each turn of the loop does")
    args = parser.parse_args(argv)
    global TRACE
    TRACE = args.trace
    with socket.create_server(("127.0.0.1", args.port)) as listener:
        host, port = listener.getsockname()
        print(f"stage 2 echo server listening on {host}:{port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            serve(listener)


if __name__ == "__main__":
    main()
