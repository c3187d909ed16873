"""Stage 4: the loop becomes a library; the protocol becomes callbacks.

Stage 3 mixed two things: a loop that moves bytes, and a protocol (echo)
that decides what the bytes mean. Here they part. ``serve(events, port)``
owns every socket; the application is an ``Events`` record of plain
functions that receive a connection *id* (never a socket) and return what
to send and, optionally, an ``Action``:

* ``Action.CLOSE`` -- send what is pending, including this reply, then close;
* ``Action.SHUTDOWN`` -- stop the server once this event is handled.

Callbacks never write to a socket, so they never deal with partial writes,
and the loop's rule from stage 3 holds for them too: output is appended.

    python tutorial/stage4_callbacks.py --port 5000 --limit 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import itertools
import selectors
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
HIGH_WATER = 64 * 1024
TRACE = False
"""Set by ``--trace``: print what each turn of the loop does."""
WATCHING = {READ: "read", WRITE: "write", READ | WRITE: "read+write"}


def trace(line: str) -> None:
    """Print one line of the trace, when ``--trace`` asked for it."""
    if TRACE:
        print(line, flush=True)


def said(reply: object) -> str:
    """What a callback returned, in a few words, for the trace."""
    out, action = reply if isinstance(reply, tuple) else (reply, None)
    words = f"{len(out)} bytes" if out else "nothing"
    return words + (f" and {action.name}" if action is not None else "")


class Action(enum.Enum):
    NONE = 0
    CLOSE = 1
    SHUTDOWN = 2


Reply = bytes | tuple[bytes, Action] | None
"""What ``opened`` and ``data`` return: output, or output and an action."""


@dataclass(slots=True)
class Events:
    """The application: every callback is optional."""

    serving: Callable[[tuple[str, int]], None] | None = None  # the bound address
    opened: Callable[[int], Reply] | None = None
    data: Callable[[int, bytes], Reply] | None = None
    closed: Callable[[int], None] | None = None


@dataclass(slots=True, eq=False)
class Conn:
    id: int
    sock: socket.socket
    out: bytearray = field(default_factory=bytearray)
    reading: bool = True
    mask: int = READ


class Loop:
    def __init__(self, events: Events, listener: socket.socket) -> None:
        self.events = events
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.ids = itertools.count(1)  # ids start at 1 and are never reused
        self.stopping = False

    def run(self) -> None:
        self.listener.setblocking(False)
        self.sel.register(self.listener, READ)
        if self.events.serving:
            self.events.serving(self.listener.getsockname())
        try:
            for turn in itertools.count(1):
                if self.stopping:
                    break
                ready = self.sel.select()
                trace(f"turn {turn}: select() says ready: " + ", ".join(
                    f"{'listener' if k.fileobj is self.listener else f'conn {k.data.id}'}"
                    f" ({WATCHING[e]})" for k, e in ready))
                for key, events in ready:
                    if key.fileobj is self.listener:
                        self.accept()
                    else:
                        self.handle(key.data, events)
                    if self.stopping:  # SHUTDOWN: finish this event, then stop
                        break
        finally:  # however we stop: one last try to send, then close everything
            for c in list(self.conns.values()):
                self.flush(c)
                self.close(c)
            self.sel.close()

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        sock.setblocking(False)
        c = Conn(next(self.ids), sock)
        self.conns[c.id] = c
        self.sel.register(sock, READ, c)
        trace(f"  listener: accept() -> conn {c.id}, watching read")
        if self.events.opened:
            reply = self.events.opened(c.id)
            trace(f"  conn {c.id}: opened({c.id}) returned {said(reply)}")
            self.reply(c, reply)
        self.sync(c)

    def handle(self, c: Conn, events: int) -> None:
        if events & WRITE:
            self.flush(c)
        if events & READ and c.reading:
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                self.fail(c)
                data = None
            if data is not None:
                trace(f"  conn {c.id}: recv() -> {len(data)} bytes")
            if data == b"":
                c.reading = False  # the peer ended its stream
            elif data and self.events.data:
                reply = self.events.data(c.id, data)
                trace(f"  conn {c.id}: data({c.id}, {len(data)} bytes) returned {said(reply)}")
                self.reply(c, reply)
        self.sync(c)

    def reply(self, c: Conn, reply: Reply) -> None:
        """Append a callback's output, send what the socket takes, apply its action."""
        out, action = reply if isinstance(reply, tuple) else (reply or b"", Action.NONE)
        c.out += out
        self.flush(c)
        if action is Action.CLOSE:
            c.reading = False  # read no more; close once ``out`` is empty
        elif action is Action.SHUTDOWN:
            self.stopping = True

    def flush(self, c: Conn) -> None:
        """Send as much pending output as the socket takes now."""
        if c.out:
            try:
                sent = c.sock.send(c.out)
                del c.out[:sent]
                trace(f"  conn {c.id}: send() took {sent} bytes, {len(c.out)} pending")
            except BlockingIOError:
                pass
            except OSError:
                self.fail(c)

    def fail(self, c: Conn) -> None:
        """A reset or a broken pipe: nobody can receive what is pending."""
        c.out.clear()
        c.reading = False

    def sync(self, c: Conn) -> None:
        """Derive interest from state, as in stage 3."""
        if c.id not in self.conns:
            return
        want = (READ if c.reading and len(c.out) <= HIGH_WATER else 0) | (WRITE if c.out else 0)
        if not want:
            self.close(c)
        elif want != c.mask:
            self.sel.modify(c.sock, want, c)
            c.mask = want
            trace(f"  conn {c.id}: now watching {WATCHING[want]}")

    def close(self, c: Conn) -> None:
        del self.conns[c.id]
        self.sel.unregister(c.sock)
        c.sock.close()
        trace(f"  conn {c.id}: nothing left to watch: closed")
        if self.events.closed:
            self.events.closed(c.id)


def serve(events: Events, port: int) -> None:
    """Run ``events`` on 127.0.0.1:``port`` until a callback returns SHUTDOWN."""
    with socket.create_server(("127.0.0.1", port)) as listener:
        Loop(events, listener).run()


# ---------------------------------------------------------------- the application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stage 4: an echo server made of callbacks.")
    parser.add_argument("--port", type=int, default=5000,
                        help="TCP port on 127.0.0.1 (default 5000; 0 picks a free one)")
    parser.add_argument("--trace", action="store_true",
                        help="print what each turn of the loop does")
    parser.add_argument("--limit", type=int, default=0,
                        help="close a connection once it has echoed this many bytes (0: never)")
    args = parser.parse_args(argv)
    global TRACE
    TRACE = args.trace
    echoed: dict[int, int] = {}

    def serving(addr: tuple[str, int]) -> None:
        print(f"stage 4 echo server listening on {addr[0]}:{addr[1]}", flush=True)

    def data(id: int, data: bytes) -> Reply:
        echoed[id] = echoed.get(id, 0) + len(data)
        if args.limit and echoed[id] >= args.limit:
            return data, Action.CLOSE  # the echo is still sent, then the connection closes
        return data

    def closed(id: int) -> None:
        echoed.pop(id, None)

    with contextlib.suppress(KeyboardInterrupt):
        serve(Events(serving=serving, data=data, closed=closed), args.port)


if __name__ == "__main__":
    main()
