"""The cheapest pure-Python Redis PING server: the floor under every pure-Python loop.

Run it as::

    python bench/servers/floor.py --port 0

Theory of operation
-------------------
`bench/instructions.py` counts the instructions a server spends per request.
To read evio's count we need two bounds.  uvloop is one: its loop is C, so
it pays no bytecode and no interpreter call per read or write, and it does
not release and retake the GIL around every system call.  This file is the
other: the least any loop written in Python can do for the *same* session
(`minimal.RedisSession`, which evio-min, asyncio and uvloop pump too) and
the *same* callback shape as ``evio_min.py`` (a ``data(id, bytes)`` closure
that calls ``sessions[id].feed``).  So:

* evio-min minus floor is what evio's features cost per request (timers,
  wakes, back-pressure, output buffering, the error policy, the lifecycle);
* floor minus uvloop is what C buys.

The loop is one listening socket, level-triggered ``select.epoll``, a dict
from descriptor to session, ``os.read(fd, 448)`` (a request fits; 448 bytes
is the largest request CPython's small-object allocator serves) and
``os.write``.  Everything a real server needs is left out, on purpose:

* **no output buffer**: the reply goes out with one ``os.write``; if the
  kernel takes less than all of it (or none: ``BlockingIOError``) the
  connection is dropped.  On loopback, a PING reply always fits;
* a connection is closed on end of stream, when the session asks for it,
  and on ``ConnectionError`` (reset, broken pipe);
* ``accept`` errors (a client gone before we took it, ``EMFILE``) are
  ignored: level-triggered epoll asks again.

It prints ``redis server listening on ('127.0.0.1', PORT) (floor)`` and
stops on SIGTERM or Ctrl-C.  Not a server to use: a floor to measure against.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys

from minimal import RedisSession


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the cheapest pure-Python Redis PING server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    listener = socket.create_server((args.host, args.port), backlog=1024)
    listener.setblocking(False)
    lfd = listener.fileno()
    poller = select.epoll()
    poller.register(lfd, select.EPOLLIN)
    sessions: dict[int, RedisSession] = {}

    def data(id: int, d: bytes) -> bytes | tuple[bytes, bool]:  # evio_min's shape
        out, close = sessions[id].feed(d)
        return (out, True) if close else out

    # epoll.poll is retried after a signal (PEP 475) unless the handler
    # raises, so SIGTERM raises KeyboardInterrupt, as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"redis server listening on {listener.getsockname()!r} (floor)", flush=True)
    try:
        while True:
            for fd, _ in poller.poll():
                if fd == lfd:
                    try:
                        conn, _ = listener.accept()
                    except OSError:
                        continue  # gone already, or out of descriptors: asked again
                    conn.setblocking(False)
                    fd = conn.detach()  # from here on the descriptor is ours to close
                    sessions[fd] = RedisSession()
                    poller.register(fd, select.EPOLLIN)
                    continue
                try:
                    d = os.read(fd, 448)
                except BlockingIOError:
                    continue  # woken for nothing
                except ConnectionError:
                    d = b""
                if d:
                    reply = data(fd, d)
                    if isinstance(reply, tuple):
                        out, close = reply
                    else:
                        out, close = reply, False
                    try:
                        if out and os.write(fd, out) < len(out):
                            close = True  # no output buffer: drop the connection
                    except (BlockingIOError, ConnectionError):
                        close = True
                    if not close:
                        continue
                poller.unregister(fd)
                os.close(fd)
                del sessions[fd]
    except KeyboardInterrupt:
        pass
    finally:
        poller.close()
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
