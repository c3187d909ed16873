"""Minimal HTTP and RESP sessions, sans-I/O, shared by the asyncio, uvloop and evio servers.

Theory of operation
-------------------
Comparing two event loops is only fair if the code on top of them is the
same.  The protocol logic of the benchmark's non-evio servers therefore
lives here, with no socket and no loop: a session is fed the bytes one
read returned and answers with the bytes to send and whether to close
(h11's shape, cut down to what the benchmarks need).  ``aio.py`` pumps
these sessions from ``asyncio.Protocol.data_received``; ``evio_min.py``
pumps *the same sessions* from evio's ``data`` callback.  So:

* ``evio`` (the examples) against ``asyncio``/``uvloop`` compares what a user
  of each would ship: the examples carry complete parsers (``http11.py``,
  ``resp.py``), these sessions the least that answers the load;
* ``evio-min`` against ``asyncio``/``uvloop`` compares the loops alone.

What the sessions do, and no more:

* `HttpSession` finds the blank line that ends each request head, honours
  ``Content-Length`` (0 for wrk's GETs) and ``Connection: close``, and
  answers every request with ``Hello World!``, with the same header fields
  as ``examples/http_server.py`` (``Server``, ``Date``, ``Content-Type``,
  ``Content-Length``), so both send the same number of bytes.  Pipelined
  requests are answered in order, in one write.
* `RedisSession` parses inline commands and multibulk arrays, answers
  ``PING [message]`` and ``CONFIG GET`` (which redis-benchmark sends when it
  starts), and an error for anything else.  Replies to a pipelined batch go
  out in one write, as the evio clone does.
"""

from __future__ import annotations

import email.utils

HELLO = b"Hello World!\r\n"
CRLF = b"\r\n"


class Clock:
    """The ``Date`` header value; the server refreshes it every 0.2 s, as the evio example."""

    date = email.utils.formatdate(usegmt=True).encode()

    @classmethod
    def refresh(cls) -> None:
        cls.date = email.utils.formatdate(usegmt=True).encode()


# ------------------------------------------------------------------ http


class HttpSession:
    """One HTTP/1.1 connection: keep-alive, pipelining, minimal parsing."""

    __slots__ = ("buf", "server")

    def __init__(self, server: bytes) -> None:
        self.server = server  # the Server header's value
        self.buf = b""

    def response(self, keep_alive: bool) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nServer: " + self.server + b"\r\nDate: " + Clock.date
                + b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 14\r\n"
                + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n" + HELLO)

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes one read returned; the answer to send, and whether to close after it."""
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(CRLF, i + 2)
                try:
                    length = int(head[i + 17:j if j >= 0 else len(head)])
                except ValueError:
                    return b"".join(out), True  # unframed: we cannot find the next request
            total = end + 4 + length
            if len(buf) < total:
                break  # the body is still on its way
            buf = buf[total:]
            keep_alive = b"\r\nconnection: close" not in head
            out.append(self.response(keep_alive))
            if not keep_alive:
                return b"".join(out), True
        self.buf = buf
        return b"".join(out), False


# ----------------------------------------------------------------- redis

CONFIG = {b"save": b"", b"appendonly": b"no"}


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _execute(argv: list[bytes]) -> bytes:
    name = argv[0].lower()
    if name == b"ping":
        if len(argv) == 1:
            return b"+PONG\r\n"
        if len(argv) == 2:
            return _bulk(argv[1])
    elif name == b"config" and len(argv) == 3 and argv[1].lower() == b"get":
        value = CONFIG.get(argv[2].lower())
        if value is None:
            return b"*0\r\n"
        return b"*2\r\n" + _bulk(argv[2].lower()) + _bulk(value)
    return b"-ERR unknown command or wrong number of arguments\r\n"


def _parse(buf: bytes, pos: int) -> tuple[list[bytes] | None, int]:
    """One command from ``buf[pos:]``: (argv, next position), or (None, pos) if incomplete.

    Raises:
        ValueError: the bytes are not RESP.
    """
    if buf[pos] == 0x2A:  # "*": a multibulk array of bulk strings
        nl = buf.find(CRLF, pos)
        if nl < 0:
            return None, pos
        count = int(buf[pos + 1:nl])
        p = nl + 2
        argv = []
        for _ in range(count):
            nl = buf.find(CRLF, p)
            if nl < 0:
                return None, pos
            if buf[p] != 0x24:  # "$"
                raise ValueError("expected a bulk string")
            start = nl + 2
            stop = start + int(buf[p + 1:nl])
            if stop + 2 > len(buf):
                return None, pos
            argv.append(buf[start:stop])
            p = stop + 2
        return argv, p
    nl = buf.find(b"\n", pos)  # an inline command: words on one line
    if nl < 0:
        return None, pos
    return buf[pos:nl].split(), nl + 1


class RedisSession:
    """One RESP connection: PING (inline or array) and CONFIG GET."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes one read returned; the replies to send, and whether to close after them."""
        buf = self.buf + data if self.buf else data
        pos, size = 0, len(buf)
        out: list[bytes] = []
        try:
            while pos < size:
                argv, pos = _parse(buf, pos)
                if argv is None:
                    break
                if argv:  # an empty inline line is ignored, as Redis does
                    out.append(_execute(argv))
        except ValueError:
            out.append(b"-ERR Protocol error\r\n")
            return b"".join(out), True
        self.buf = buf[pos:]
        return b"".join(out), False
