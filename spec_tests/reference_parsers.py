"""Straightforward reference parsers for the differential tests.

``examples/resp.py`` and ``examples/http11.py`` read their input fast: one
pass over every complete RESP command of a read, one regular expression over
a whole HTTP head, and a slower, general reader for everything else. These
are the slow, obvious versions -- each command and each head taken one step
at a time, every byte of an inline command through the ``sdssplitargs``
loop, every header line split and checked on its own -- as they were before
the fast paths existed. ``test_parsers_differential.py`` feeds both the same
bytes and demands the same answers, so the fast paths can only be faster,
never different.

They share with the examples only the pieces they are built from (the
regular expressions of the grammar, the limits, the error types and the
messages), not the reading.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import http11
import resp
from http11 import HTTPError, Request
from resp import ProtocolError

# ================================================================= RESP

_SPACE = frozenset(b" \t\n\r\x0b\x0c")
_ENDS_WORD = frozenset(b" \t\n\r")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09, ord("b"): 0x08, ord("a"): 0x07}
_QUOTE, _APOSTROPHE, _BACKSLASH = 0x22, 0x27, 0x5C


def split_args(line: bytes) -> list[bytes]:  # noqa: C901 -- the reference: sdssplitargs, literally
    """Redis's ``sdssplitargs``, byte by byte, with no shortcut for plain lines."""
    words: list[bytes] = []
    n = len(line)
    i = 0

    def at(j: int) -> int:
        return line[j] if j < n else -1

    def unbalanced() -> ProtocolError:
        return ProtocolError("Protocol error: unbalanced quotes in request")

    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return words
        word = bytearray()
        quote = 0
        while True:
            c = at(i)
            if quote == _QUOTE:
                if c == _BACKSLASH and at(i + 1) == ord("x") and at(i + 2) in _HEX \
                        and at(i + 3) in _HEX:
                    word.append(int(line[i + 2:i + 4], 16))
                    i += 4
                elif c == _BACKSLASH and at(i + 1) != -1:
                    word.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 2
                elif c == _QUOTE:
                    if at(i + 1) != -1 and at(i + 1) not in _SPACE:
                        raise unbalanced()
                    i += 1
                    break
                elif c == -1:
                    raise unbalanced()
                else:
                    word.append(c)
                    i += 1
            elif quote == _APOSTROPHE:
                if c == _BACKSLASH and at(i + 1) == _APOSTROPHE:
                    word.append(_APOSTROPHE)
                    i += 2
                elif c == _APOSTROPHE:
                    if at(i + 1) != -1 and at(i + 1) not in _SPACE:
                        raise unbalanced()
                    i += 1
                    break
                elif c == -1:
                    raise unbalanced()
                else:
                    word.append(c)
                    i += 1
            elif c == -1 or c in _ENDS_WORD:
                break
            elif c in (_QUOTE, _APOSTROPHE):
                quote = c
                i += 1
            else:
                word.append(c)
                i += 1
        words.append(bytes(word))


class RespReference:
    """``resp.Parser`` as it was: a state machine that takes one step per call."""

    def __init__(self, *, max_buffer: int = resp.DEFAULT_MAX_BUFFER,
                 max_args: int = resp.MAX_ARGS, max_bulk: int = resp.MAX_BULK) -> None:
        self.max_buffer, self.max_args, self.max_bulk = max_buffer, max_args, max_bulk
        self._buf = bytearray()
        self._pos = 0
        self._args: list[bytes] = []
        self._missing = 0
        self._bulk = -1
        self._taken = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return self._taken + len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._buf += data

    def next_command(self) -> list[bytes] | None:
        if self._error is not None:
            raise self._error
        try:
            command = self._parse()
            if command is None:
                del self._buf[:self._pos]
                self._pos = 0
                if self.buffered > self.max_buffer:
                    raise ProtocolError(
                        f"Protocol error: request larger than {self.max_buffer} bytes")
        except ProtocolError as e:
            self._error = e
            self._buf, self._pos, self._args, self._taken = bytearray(), 0, [], 0
            raise
        return command

    def _parse(self) -> list[bytes] | None:  # noqa: C901 -- the reference RESP parser, kept literal
        buf = self._buf
        while True:
            if not self._missing:
                start = self._pos
                if start >= len(buf):
                    return None
                if buf[start] != 0x2A:
                    nl = buf.find(b"\n", start)
                    if nl < 0:
                        if len(buf) - start > resp.MAX_INLINE:
                            raise ProtocolError("Protocol error: too big inline request")
                        return None
                    end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
                    self._pos = nl + 1
                    words = split_args(bytes(buf[start:end]))
                    if words:
                        return words
                    continue
                found = self._count(start, _invalid_multibulk)
                if found is None:
                    return None
                n, after = found
                if n > self.max_args:
                    raise _invalid_multibulk()
                self._pos = after
                if n <= 0:
                    continue
                self._missing = n
                self._taken = after - start
            if self._bulk < 0:
                start = self._pos
                if start >= len(buf):
                    return None
                if buf[start] != 0x24:
                    raise ProtocolError(
                        f"Protocol error: expected '$', got '{resp._show(buf[start])}'")
                found = self._count(start, _invalid_bulk)
                if found is None:
                    return None
                n, after = found
                if n < 0 or n > self.max_bulk:
                    raise _invalid_bulk()
                self._taken += after - start
                if self._taken + n + 2 > self.max_buffer:
                    raise ProtocolError(
                        f"Protocol error: request larger than {self.max_buffer} bytes")
                self._pos = after
                self._bulk = n
            start, end = self._pos, self._pos + self._bulk
            if len(buf) < end + 2:
                return None
            if buf[end] != 0x0D or buf[end + 1] != 0x0A:
                raise ProtocolError("Protocol error: expected '\\r\\n' after bulk string")
            self._args.append(bytes(buf[start:end]))
            self._pos = end + 2
            self._taken += self._bulk + 2
            self._bulk = -1
            self._missing -= 1
            if not self._missing:
                args, self._args = self._args, []
                self._taken = 0
                return args

    def _count(self, start: int,
               invalid: Callable[[], ProtocolError]) -> tuple[int, int] | None:
        buf = self._buf
        first = start + 1
        stop = min(len(buf), first + 22)
        nl = buf.find(b"\r\n", first, stop)
        if nl < 0:
            if stop - first >= 22 or not resp._COUNT_SO_FAR.fullmatch(buf, first, stop):
                raise invalid()
            return None
        if not resp._COUNT.fullmatch(buf, first, nl):
            raise invalid()
        return int(buf[first:nl]), nl + 2


def _invalid_multibulk() -> ProtocolError:
    return ProtocolError("Protocol error: invalid multibulk length")


def _invalid_bulk() -> ProtocolError:
    return ProtocolError("Protocol error: invalid bulk length")


# ================================================================= HTTP


class HttpReference:
    """``http11.RequestParser`` as it was: the head split into lines, each
    line checked on its own, the fields looked up one name at a time."""

    def __init__(self, max_head: int = http11.MAX_HEAD, max_body: int = http11.MAX_BODY) -> None:
        self.max_head, self.max_body = max_head, max_body
        self._buf = bytearray()
        self._scan = 0
        self._line_ok = False
        self._head: tuple[str, str, str, tuple[tuple[str, str], ...], int, bool] | None = None
        self._continue = False
        self._error: HTTPError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._buf += data

    def take_interim(self) -> bytes:
        if self._continue:
            self._continue = False
            return b"HTTP/1.1 100 Continue\r\n\r\n"
        return b""

    def next_request(self) -> Request | None:
        if self._error is not None:
            raise self._error
        try:
            if self._head is None:
                head = self._read_head()
                if head is None:
                    return None
                if not head[4]:
                    return Request(*head[:4], b"", head[5])
                self._head = head
            method, target, version, headers, length, keep = self._head
            if len(self._buf) < length:
                return None
            body = bytes(self._buf[:length])
            del self._buf[:length]
            self._head = None
            self._continue = False
            return Request(method, target, version, headers, body, keep)
        except HTTPError as e:
            self._error = e
            self._buf = bytearray()
            self._continue = False
            raise

    def _read_head(self) -> tuple[str, str, str, tuple[tuple[str, str], ...], int, bool] | None:  # noqa: C901 -- the reference HTTP head reader, kept literal
        buf = self._buf
        if self._scan == 0:
            m = http11._EMPTY_LINES.match(buf)
            if m:
                del buf[: m.end()]
        m = http11._HEAD_END.search(buf, max(self._scan - 2, 0))
        if m is None:
            if len(buf) > self.max_head:
                raise HTTPError(431, f"request line and headers exceed {self.max_head} bytes")
            if not self._line_ok:
                eol = buf.find(b"\n")
                if eol >= 0:
                    http11._request_line(bytes(buf[:eol]).removesuffix(b"\r"))
                    self._line_ok = True
            self._scan = 0 if buf == b"\r" else len(buf)
            return None
        if m.end() > self.max_head:
            raise HTTPError(431, f"request line and headers exceed {self.max_head} bytes")
        head = bytes(buf[: m.start()])
        del buf[: m.end()]
        self._scan = 0
        self._line_ok = False
        lines = [line.removesuffix(b"\r") for line in head.split(b"\n")]
        if any(b"\r" in line for line in lines):
            raise HTTPError(400, "bare CR in the request head")
        method, target, version = http11._request_line(lines[0])
        headers = tuple(http11._field(line) for line in lines[1:])

        def every(name: str) -> list[str]:
            return [v for n, v in headers if n == name]

        def tokens(name: str) -> set[str]:
            return {t.strip().lower() for v in every(name) for t in v.split(",")}

        hosts = every("host")
        if len(hosts) > 1:
            raise HTTPError(400, "more than one Host header")
        if not hosts and version == "HTTP/1.1":
            raise HTTPError(400, "HTTP/1.1 request without a Host header")
        if every("transfer-encoding"):
            raise HTTPError(501, "Transfer-Encoding is not supported; send Content-Length")
        length = http11._content_length(every("content-length"))
        if length > self.max_body:
            raise HTTPError(413, f"body of {length} bytes exceeds {self.max_body} bytes")
        if version == "HTTP/1.1":
            keep = "close" not in tokens("connection")
        else:
            keep = "keep-alive" in tokens("connection") and "close" not in tokens("connection")
        if length and version == "HTTP/1.1" and "100-continue" in tokens("expect"):
            self._continue = True
        return method, target, version, headers, length, keep
