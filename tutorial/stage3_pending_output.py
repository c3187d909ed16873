"""Stage 3: non-blocking writes, pending output, interest derived from state.

Every socket is non-blocking now, so no call can wait; the only wait left
is the selector's. A ``send`` may take part of what we offer. What it does
not take stays in the connection's ``out`` buffer, in order, and goes when
the socket is writable again. New output is only ever appended behind it.

What we ask the selector about is *derived* from each connection's state,
in one place (``sync``) after every event:

* writability only while output is pending -- a socket is writable almost
  always, so asking otherwise makes ``select`` return at once, for ever;
* readability only while the peer has not ended its stream and no more than
  ``HIGH_WATER`` bytes are pending -- so a client that sends without reading
  cannot make us buffer without bound (its sends wait in the kernel);
* neither: nothing more can happen, so the connection is closed.

    python tutorial/stage3_pending_output.py --port 5000
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import selectors
import socket
from dataclasses import dataclass, field

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
HIGH_WATER = 64 * 1024
"""Stop reading from a connection while more than this is waiting to be sent."""
WATCHING = {READ: "read", WRITE: "write", READ | WRITE: "read+write"}

TRACE = False
"""Set by ``--trace``: print what each turn of the loop does."""


def trace(line: str) -> None:
    """Print one line of the trace, when ``--trace`` asked for it."""
    if TRACE:
        print(line, flush=True)


@dataclass(slots=True, eq=False)
class Conn:
    sock: socket.socket
    out: bytearray = field(default_factory=bytearray)  # accepted by us, not yet by the kernel
    reading: bool = True  # false once the peer ended its stream (or failed)
    mask: int = READ  # what the selector is watching now


def flush(c: Conn) -> None:
    """Send as much pending output as the socket takes now."""
    if c.out:
        with contextlib.suppress(BlockingIOError):
            sent = c.sock.send(c.out)
            del c.out[:sent]
            trace(f"  fd {c.sock.fileno()}: send() took {sent} bytes, {len(c.out)} pending")


def read(c: Conn) -> None:
    """Read once; echo what came (send at once, keep what the socket refuses)."""
    try:
        data = c.sock.recv(65536)
    except BlockingIOError:
        return
    trace(f"  fd {c.sock.fileno()}: recv() -> {len(data)} bytes")
    if not data:  # the peer ended its stream: send what is pending, then close
        c.reading = False
        return
    c.out += data  # append, never replace
    flush(c)


def sync(sel: selectors.BaseSelector, c: Conn) -> None:
    """Derive what to watch from the connection's state; close it when nothing is left."""
    want = (READ if c.reading and len(c.out) <= HIGH_WATER else 0) | (WRITE if c.out else 0)
    if not want:
        trace(f"  fd {c.sock.fileno()}: nothing left to watch: closed")
        sel.unregister(c.sock)
        c.sock.close()
    elif want != c.mask:  # tell the selector only about changes
        sel.modify(c.sock, want, c)
        c.mask = want
        trace(f"  fd {c.sock.fileno()}: now watching {WATCHING[want]}")


def serve(listener: socket.socket) -> None:
    """Echo for every connected client, for ever; nothing but ``select`` waits."""
    listener.setblocking(False)
    with selectors.DefaultSelector() as sel:
        sel.register(listener, READ)
        for turn in itertools.count(1):
            ready = sel.select()
            trace(f"turn {turn}: select() says ready: " + ", ".join(
                f"{'listener' if k.fileobj is listener else f'fd {k.fd}'} ({WATCHING[e]})"
                for k, e in ready))
            for key, events in ready:
                if key.fileobj is listener:
                    with contextlib.suppress(BlockingIOError, ConnectionAbortedError):
                        sock, _ = listener.accept()
                        sock.setblocking(False)
                        sel.register(sock, READ, Conn(sock))
                        trace(f"  listener: accept() -> fd {sock.fileno()}, watching read")
                    continue
                c: Conn = key.data
                try:
                    if events & WRITE:
                        flush(c)
                    if events & READ and c.reading:
                        read(c)
                except OSError:  # reset or broken pipe: nobody is left to send to
                    c.out.clear()
                    c.reading = False
                sync(sel, c)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Stage 3: an echo server with non-blocking writes and pending output.")
    parser.add_argument("--port", type=int, default=5000,
                        help="TCP port on 127.0.0.1 (default 5000; 0 picks a free one)")
    parser.add_argument("--trace", action="store_true",
                        help="print what each turn of the loop does")
    args = parser.parse_args(argv)
    global TRACE
    TRACE = args.trace
    with socket.create_server(("127.0.0.1", args.port)) as listener:
        host, port = listener.getsockname()
        print(f"stage 3 echo server listening on {host}:{port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            serve(listener)


if __name__ == "__main__":
    main()
