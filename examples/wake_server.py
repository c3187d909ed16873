"""Wake server: slow work on a worker thread, answered through ``server.wake``.

A line protocol. Every line is echoed at once, except a line that is
``exec`` (optionally followed by a tag, ``exec job-7``): that one starts a
slow job on a worker thread and is answered with ``exec done`` (``exec job-7
done``) when the job ends, ``--delay`` seconds later. Lines end with ``\\n``;
``\\r\\n`` works too, and each answer ends the way its request did::

    python examples/wake_server.py --port 5000 --delay 2

How the answer gets back: a callback must never block the loop, so the job
runs on its own thread. When it is done, the thread puts the answer in the
connection's result queue (under a lock: two threads touch it) and calls
``server.wake(id)``. The loop then calls ``data(id, None)`` on its own
thread, and that call returns whatever the queue holds. Lines that arrive
meanwhile are answered as usual.

Memory: a client holds at most `MAX_LINE` (64 KiB) of a partial line --
any longer line, whole or in pieces, is answered ``error: line longer
than 65536 bytes`` and the connection closes -- plus the loop's
high-water mark (64 KiB) and one read (64 KiB) of echoes pending,
because the loop stops reading a client that does not read above the
mark, plus at most `MAX_JOBS` (16) job threads and their answers: an
``exec`` beyond that is answered ``exec busy`` at once.
So a client costs about 256 KiB and 16 thread stacks at most, however it
behaves; the number of clients is bounded by the process's descriptor
limit (``ulimit -n``).

Stop it with Ctrl-C (or SIGTERM). Jobs still running are abandoned: their
wake finds the server gone and returns False.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field

import evio

MAX_LINE = 64 * 1024
"""A line longer than this (its newline aside) is refused and the connection
closed, whether it arrives whole or in pieces: the kept bytes of an
``InputStream`` are memory the client controls."""
MAX_JOBS = 16
"""``exec`` jobs one client may have running; past it, ``exec busy``."""


@dataclass(slots=True, eq=False)
class _Conn:
    """One client: its partial line, and answers that workers finished."""

    stream: evio.InputStream = field(default_factory=evio.InputStream)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: list[bytes] = field(default_factory=list)  # guarded by lock
    jobs: int = 0  # started and not yet answered; the loop's thread only


def non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="evio wake server: echoes lines; 'exec' is answered later, from a thread")
    # REL-6: loopback unless --host says otherwise
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=5000, help="TCP port (default: 5000)")
    parser.add_argument("--delay", type=non_negative, default=5.0,
                        help="seconds an 'exec' job takes (default: 5)")
    parser.add_argument("--poller", choices=evio.available_pollers(),
                        help="poller backend (default: the best available)")
    args = parser.parse_args(argv)

    host = f"[{args.host}]" if ":" in args.host else args.host
    conns: dict[int, _Conn] = {}
    server: evio.Server | None = None

    def serving(srv: evio.Server) -> None:
        nonlocal server
        server = srv  # keep it: the workers need server.wake
        where = ", ".join(str(a) for a in srv.addrs)
        print(f"wake server listening on {where} (poller: {srv.poller})", flush=True)

    def opened(id: int, info: evio.Info) -> None:
        conns[id] = _Conn()

    def job(id: int, conn: _Conn, answer: bytes) -> None:
        # On a worker thread: the slow part, then hand the answer to the loop.
        time.sleep(args.delay)
        with conn.lock:
            conn.done.append(answer)
        assert server is not None
        server.wake(id)  # False if the client left meanwhile: nothing to do

    def data(id: int, data: bytes | None) -> bytes | tuple[bytes, evio.Action]:
        conn = conns[id]
        if data is None:
            # Woken: send every answer finished so far. Several wakes may
            # arrive as one call, so take the whole queue, not one item.
            with conn.lock:
                answers, conn.done = conn.done, []
            conn.jobs -= len(answers)
            return b"".join(answers)
        out = bytearray()
        buf = conn.stream.begin(data)
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if end - start > MAX_LINE:  # however the line was split into reads
                out += b"error: line longer than %d bytes\n" % MAX_LINE
                return bytes(out), evio.Action.CLOSE
            line, start = buf[start : end + 1], end + 1
            eol = b"\r\n" if line.endswith(b"\r\n") else b"\n"
            body = line[: -len(eol)]
            if not (body == b"exec" or body.startswith(b"exec ")):
                out += line
            elif conn.jobs >= MAX_JOBS:
                out += body + b" busy" + eol  # each job is a thread: not without bound
            else:
                conn.jobs += 1
                worker = threading.Thread(target=job, args=(id, conn, body + b" done" + eol),
                                          name=f"exec-{id}", daemon=True)
                worker.start()
        conn.stream.end(buf[start:])  # a partial line waits for the next read
        if len(conn.stream) > MAX_LINE:
            out += b"error: line longer than %d bytes\n" % MAX_LINE
            return bytes(out), evio.Action.CLOSE
        return bytes(out)

    def closed(id: int, err: BaseException | None) -> None:
        del conns[id]  # a worker still holding the _Conn finds its wake refused

    events = evio.Events(serving=serving, opened=opened, data=data, closed=closed)
    try:
        evio.serve(events, f"tcp://{host}:{args.port}", poller=args.poller)
    except (ValueError, OSError) as e:
        print(f"wake server: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: evio closed every connection first
        pass
    print("wake server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
