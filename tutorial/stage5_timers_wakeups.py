"""Stage 5: timers and wake-ups -- the loop in the phases evio runs.

Two things can end the wait in ``select`` besides a socket: *time* and
*another thread*.

* **Timers.** ``tick`` returns how long until it should run again. The loop
  passes the time left until then to ``select`` as its timeout, and with no
  ticker it passes none: an idle server does not wake up at all. The next
  tick is due a fixed delay after the last one *was due*, not after it
  returned, so the schedule does not drift.
* **Wake-ups.** A callback must not block, so slow work goes to a thread.
  When the work is done, that thread calls ``server.wake(id)``: it adds the
  id to a set (under a lock) and writes a byte to a socket pair whose other
  end the selector watches -- a doorbell. The loop *drains* the doorbell
  every time it rings (or ``select`` would report it ready for ever), then
  takes the set and calls ``data(id, None)`` for each id. What that call
  returns is appended behind the output already pending, like any reply.
  ``server.stop()`` rings the same bell; it takes no lock, so a signal
  handler may call it.

Each turn of ``run`` is: timeout, poll, dispatch, wakes, timers.

    python tutorial/stage5_timers_wakeups.py --port 5000 --stats 5 --worker
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import itertools
import queue
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

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


@dataclass(slots=True)
class Events:
    serving: Callable[[Server], None] | None = None
    opened: Callable[[int], Reply] | None = None
    data: Callable[[int, bytes | None], Reply] | None = None  # None: woken up
    closed: Callable[[int], None] | None = None
    tick: Callable[[], float | None] | None = None  # seconds to the next tick; None: no more


@dataclass(slots=True, eq=False)
class Conn:
    id: int
    sock: socket.socket
    out: bytearray = field(default_factory=bytearray)
    reading: bool = True
    mask: int = READ


class Server:
    """What ``serving`` receives. ``wake`` and ``stop`` are safe from any thread."""

    def __init__(self, loop: Loop) -> None:
        self.addr: tuple[str, int] = loop.listener.getsockname()
        self._loop = loop

    def wake(self, id: int) -> bool:
        """Have the loop call ``data(id, None)`` soon; False if ``id`` is not open."""
        loop = self._loop
        with loop.lock:
            if loop.stopping or id not in loop.conns:
                return False
            loop.woken.add(id)
        loop.ring()
        return True

    def stop(self) -> None:
        """Stop the server after the event at hand. Takes no lock: signal-safe."""
        self._loop.stopping = True
        self._loop.ring()


class Loop:
    def __init__(self, events: Events, listener: socket.socket) -> None:
        self.events = events
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.ids = itertools.count(1)
        self.stopping = False
        self.lock = threading.Lock()  # guards ``woken``: other threads add to it
        self.woken: set[int] = set()
        self.bell_r, self.bell_w = socket.socketpair()  # the doorbell

    def ring(self) -> None:
        # A full doorbell is still ringing; a closed one means we have stopped.
        with contextlib.suppress(OSError):
            self.bell_w.send(b"\0")

    def run(self) -> None:
        for s in (self.listener, self.bell_r, self.bell_w):
            s.setblocking(False)
        self.sel.register(self.listener, READ)
        self.sel.register(self.bell_r, READ)
        if self.events.serving:
            self.events.serving(Server(self))
        next_tick = time.monotonic() if self.events.tick else None  # first tick at once
        try:
            for turn in itertools.count(1):
                if self.stopping:
                    break
                # timeout: until the next tick is due; with no ticker, no limit
                timeout = None if next_tick is None else max(0.0, next_tick - time.monotonic())
                trace(f"turn {turn}: timeout {'none' if timeout is None else f'{timeout:.2f} s'}")
                # poll
                ready = self.sel.select(timeout)
                trace("  poll: " + (", ".join(
                    f"{self.name(k)} ({WATCHING[e]})" for k, e in ready) or "nothing ready"))
                # dispatch
                rung = False
                for key, events in ready:
                    if key.fileobj is self.listener:
                        self.accept()
                    elif key.fileobj is self.bell_r:
                        self.drain()  # first drain, then take the set (in wakes)
                        rung = True
                    else:
                        self.handle(key.data, events)
                    if self.stopping:
                        break
                # wakes
                if rung and not self.stopping:
                    self.wakes()
                # timers
                if next_tick is not None and not self.stopping and time.monotonic() >= next_tick:
                    assert self.events.tick is not None
                    delay = self.events.tick()
                    trace(f"  timers: tick() returned {delay}")
                    # Due a fixed delay after this one was due; missed ticks are not made up.
                    next_tick = None if delay is None else max(next_tick + delay, time.monotonic())
        finally:
            for c in list(self.conns.values()):
                self.flush(c)
                self.close(c)
            self.sel.close()
            self.bell_r.close()
            self.bell_w.close()

    def name(self, key: selectors.SelectorKey) -> str:
        """How the trace calls what a key watches."""
        if key.fileobj is self.listener:
            return "listener"
        return "doorbell" if key.fileobj is self.bell_r else f"conn {key.data.id}"

    def drain(self) -> None:
        """Read the doorbell empty, so that ``select`` stops reporting it."""
        with contextlib.suppress(BlockingIOError):
            while self.bell_r.recv(4096):
                pass

    def wakes(self) -> None:
        with self.lock:
            ids, self.woken = self.woken, set()
        trace(f"  wakes: {', '.join(f'conn {id}' for id in sorted(ids)) or 'none'}")
        for id in sorted(ids):
            c = self.conns.get(id)
            # A connection that stopped reading (closing) gets no more data calls.
            if c is not None and c.reading and self.events.data:
                reply = self.events.data(id, None)
                trace(f"  conn {id}: data({id}, None) returned {said(reply)}")
                self.reply(c, reply)
                self.sync(c)
            if self.stopping:
                return

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
                c.reading = False
            elif data and self.events.data:
                reply = self.events.data(c.id, data)
                trace(f"  conn {c.id}: data({c.id}, {len(data)} bytes) returned {said(reply)}")
                self.reply(c, reply)
        self.sync(c)

    def reply(self, c: Conn, reply: Reply) -> None:
        out, action = reply if isinstance(reply, tuple) else (reply or b"", Action.NONE)
        c.out += out  # appended behind what is pending -- woken or not
        self.flush(c)
        if action is Action.CLOSE:
            c.reading = False
        elif action is Action.SHUTDOWN:
            self.stopping = True

    def flush(self, c: Conn) -> None:
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
        c.out.clear()
        c.reading = False

    def sync(self, c: Conn) -> None:
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
        with self.lock:  # ``wake`` reads ``conns`` from other threads
            del self.conns[c.id]
        self.sel.unregister(c.sock)
        c.sock.close()
        trace(f"  conn {c.id}: nothing left to watch: closed")
        if self.events.closed:
            self.events.closed(c.id)


def serve(events: Events, port: int) -> None:
    """Run ``events`` on 127.0.0.1:``port`` until SHUTDOWN or ``server.stop()``."""
    with socket.create_server(("127.0.0.1", port)) as listener:
        Loop(events, listener).run()


# ---------------------------------------------------------------- the application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Stage 5: an echo server with a ticker and wake-ups from a worker thread.")
    parser.add_argument("--port", type=int, default=5000,
                        help="TCP port on 127.0.0.1 (default 5000; 0 picks a free one)")
    parser.add_argument("--trace", action="store_true",
                        help="print what each turn of the loop does")
    parser.add_argument("--stats", type=float, default=0.0, metavar="SECONDS",
                        help="print a statistics line this often (default: never)")
    parser.add_argument("--worker", action="store_true",
                        help="echo from a worker thread, through server.wake")
    args = parser.parse_args(argv)
    global TRACE
    TRACE = args.trace
    every: float = args.stats
    use_worker: bool = args.worker

    server: Server | None = None
    open_ids: set[int] = set()
    echoed = 0
    jobs: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
    lock = threading.Lock()  # guards ``results``: the worker and the loop share it
    results: dict[int, bytearray] = {}

    def worker() -> None:
        while True:
            id, chunk = jobs.get()
            # Slow work (a database call, a computation) would happen here.
            with lock:
                results.setdefault(id, bytearray()).extend(chunk)
            assert server is not None
            if not server.wake(id):  # closed meanwhile: nobody to answer
                with lock:
                    results.pop(id, None)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if server is not None:
            server.stop()

    def serving(srv: Server) -> None:
        nonlocal server
        server = srv
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        if use_worker:
            threading.Thread(target=worker, daemon=True).start()
        print(f"stage 5 echo server listening on {srv.addr[0]}:{srv.addr[1]}", flush=True)

    def opened(id: int) -> None:
        open_ids.add(id)

    def data(id: int, data: bytes | None) -> Reply:
        nonlocal echoed
        if data is None:  # woken: the worker has finished something for us
            with lock:
                data = bytes(results.pop(id, b""))
        elif use_worker:
            jobs.put((id, data))
            return None
        echoed += len(data)
        return data

    def closed(id: int) -> None:
        open_ids.discard(id)
        with lock:
            results.pop(id, None)

    def tick() -> float:
        print(f"stats: {len(open_ids)} open, {echoed} bytes echoed", flush=True)
        return every

    serve(Events(serving=serving, opened=opened, data=data, closed=closed,
                 tick=tick if every > 0 else None), args.port)
    print("stage 5 echo server stopped", flush=True)


if __name__ == "__main__":
    main()
