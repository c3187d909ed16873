"""RESP, the Redis wire protocol, without sockets: bytes in, commands out.

Theory of operation
-------------------
A Redis client sends each command in one of two shapes:

* a *multibulk* request, which every client library uses: an array of bulk
  strings, ``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\na\\r\\n``. Each string says
  its length up front, so it may hold any bytes, newlines included;
* an *inline* command, for people typing into ``telnet``: words on a line,
  ``GET a\\r\\n`` (a bare ``\\n`` ends the line too). Words may be quoted the
  way ``redis-cli`` quotes them: ``"a b\\x00"`` or ``'it\\'s'``.

The first byte of a request tells the shapes apart: ``*`` starts a
multibulk, anything else an inline line.

`Parser` is sans-I/O: `Parser.feed` takes whatever a read returned, and
`Parser.commands` yields the complete commands, in one pass over the input,
keeping the unfinished tail for the next read (`Parser.next_command` takes
just one). A command may arrive split at any byte, and one read may hold
many commands (pipelining); neither changes what comes out. The caller may
stop after any command (one that makes the client wait, or a client whose
replies pile up), and the rest stays in the parser, unparsed, for the next
call.

Reading is done twice over, on purpose. The loop of `Parser.commands` reads
the regular case fast: an inline line without quotes, a multibulk whole in
the buffer with its counts in bounds. The arguments are slices of one
``bytes`` object, and nothing is stored on the parser until a command is
handed out. A read of nothing but whole plain inline lines, the commonest
read (redis-benchmark's ``PING_INLINE``, anything typed), is split into
lines at once, and a read of one such line stores nothing at all.
Everything else (an unfinished request, a malformed one,
``*0``, a limit reached) goes to `Parser._parse`, which reads one step at a
time and keeps its partial state between reads (so a large value arriving in
pieces is copied once), and whose errors are the errors. The two must agree
on every input; the test suite checks them against a straightforward
reference parser, split at every byte.

The trap is memory. A request announces its own size (``*1048576``,
``$536870912``) before sending it, and a naive parser believes it: it
reserves the space, or waits for that many bytes and keeps all of them. We
never allocate from a declared length, and we bound what one connection can
make us hold:

* Redis's own limits: at most `MAX_ARGS` arguments in one request, at most
  `MAX_BULK` bytes in one argument, at most `MAX_INLINE` bytes of inline
  line (or of count line) still waiting for its newline. Past them the
  request is refused the moment its header arrives, with Redis's words;
* our own: ``max_buffer`` (default `DEFAULT_MAX_BUFFER`), the most bytes
  the parser holds for a request that is not finished. A bulk string that
  would not fit is refused when its ``$`` line arrives, not after its bytes
  have been stored.

Malformed input raises `ProtocolError` carrying Redis's message
(``Protocol error: invalid bulk length`` ...). The error is final: the
parser keeps raising it, because after a framing error nothing that follows
can be trusted. A Redis server replies ``-ERR <message>`` and closes.

Two places where we are stricter than Redis, and say so: Redis takes the
two bytes after a bulk string on trust, we insist they are ``\\r\\n``; and a
count line (``*N`` / ``$N``) that can no longer become a number is refused
at once instead of after 64 KiB.

The encoder half is a handful of functions, one per RESP2 reply type, and
the two RESP3 pieces a client that says ``HELLO 3`` expects (`NULL`,
`mapping`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import NoReturn

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "MAX_ARGS",
    "MAX_BULK",
    "MAX_INLINE",
    "NIL",
    "NULL",
    "OK",
    "Parser",
    "ProtocolError",
    "array",
    "bulk",
    "encode_command",
    "error",
    "integer",
    "mapping",
    "parse_integer",
    "simple",
    "split_inline",
]

MAX_ARGS = 1024 * 1024
"""Most arguments one request may declare (``*N``), as in Redis 6."""
MAX_BULK = 512 * 1024 * 1024
"""Most bytes one argument may declare (``$N``): Redis's ``proto-max-bulk-len``."""
MAX_INLINE = 64 * 1024
"""Most bytes an inline line, or a ``*``/``$`` line, may hold while its end
has not arrived: Redis's ``PROTO_INLINE_MAX_SIZE``."""
DEFAULT_MAX_BUFFER = 64 * 1024 * 1024
"""Default for ``Parser(max_buffer=...)``."""

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
"""The nil bulk string: "no value" in RESP2."""
NULL = b"_\r\n"
"""RESP3's null, which replaces `NIL` once a client has said ``HELLO 3``."""

# A count as Redis's string2ll accepts it: no sign but '-', no leading zeros,
# no "-0", at most 19 digits (anything longer overflows a C long long).
_COUNT = re.compile(rb"0|-?[1-9][0-9]{0,18}")
# What the start of a count line can look like while its "\r\n" is missing.
_COUNT_SO_FAR = re.compile(rb"-?[0-9]{0,19}\r?")
_COUNT_LINE_MAX = 22  # "-" + 19 digits + "\r\n"

_STAR, _DOLLAR, _CR, _LF = 0x2A, 0x24, 0x0D, 0x0A


# REDIS-3, REDIS-5
class ProtocolError(Exception):
    """The input is not RESP. ``str(e)`` is Redis's message, e.g.
    ``Protocol error: invalid multibulk length``; a server answers it as
    ``-ERR <message>`` and closes the connection."""


def _invalid_multibulk() -> ProtocolError:
    return ProtocolError("Protocol error: invalid multibulk length")


def _invalid_bulk() -> ProtocolError:
    return ProtocolError("Protocol error: invalid bulk length")


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError(f"Protocol error: request larger than {limit} bytes")


def _show(byte: int) -> str:
    """A byte as Redis's ``'%c'`` would show it, escaped if not printable."""
    return chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}"


# REDIS-1, REDIS-2: framing independent of reads
class Parser:
    """Turns the bytes of one connection into commands.

    Args:
        max_buffer: Most bytes held for a request that is not complete yet
            (the arguments taken so far plus the unread input).
        max_args: Most arguments one multibulk request may declare.
        max_bulk: Most bytes one bulk string may declare.

    Raises:
        ValueError: a limit is not a positive integer.

    Example:
        ```python
        parser = Parser()
        parser.feed(b"*1\\r\\n$4\\r\\nPING\\r\\nECHO hi\\r\\n*1\\r")
        assert list(parser.commands()) == [[b"PING"], [b"ECHO", b"hi"]]
        parser.feed(b"\\n$4\\r\\nPING\\r\\n")
        assert parser.next_command() == [b"PING"]
        ```
    """

    __slots__ = (
        "_args", "_buf", "_bulk", "_error", "_missing", "_need", "_parts", "_pos", "_size",
        "_taken", "max_args", "max_buffer", "max_bulk",
    )

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER, max_args: int = MAX_ARGS,
                 max_bulk: int = MAX_BULK) -> None:
        for name, value in (("max_buffer", max_buffer), ("max_args", max_args),
                            ("max_bulk", max_bulk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.max_buffer = max_buffer
        self.max_args = max_args
        self.max_bulk = max_bulk
        self._buf = b""  # the input being parsed, from _pos on
        self._pos = 0
        self._parts: list[bytes] = []  # input fed since _buf was made, not joined to it yet
        self._size = 0  # bytes in _parts
        self._need = 1  # bytes _parts must hold before parsing can get anywhere
        self._args: list[bytes] = []  # arguments of the multibulk being read
        self._missing = 0  # arguments still to come; 0 between requests
        self._bulk = -1  # length of the bulk string being read; -1: its $ line is next
        self._taken = 0  # bytes of the current request already moved into _args
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held: the unfinished request's arguments plus unread input."""
        return self._taken + len(self._buf) - self._pos + self._size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the connection (copied; a view may be reused).

        Nothing is parsed yet: `commands` does that.

        Raises:
            ProtocolError: the parser has already failed.
        """
        if self._error is not None:
            raise self._error
        self._parts.append(bytes(data))  # no copy if it is bytes already
        self._size += len(data)

    def next_command(self) -> list[bytes] | None:
        """Return the next complete command, or ``None`` if more input is needed.

        A command is its words as ``bytes``, the name first, as sent (not
        case-folded). Empty requests (a blank inline line, ``*0``) are
        skipped, as Redis skips them.

        Raises:
            ProtocolError: the input is malformed or breaks a limit. Every
                later call raises it again.
        """
        for command in self.commands():
            return command
        return None

    def commands(self, data: bytes | bytearray | memoryview | None = None  # noqa: C901 -- the hot parsing loop, one pass over the buffer
                 ) -> Iterator[list[bytes]]:
        """Yield every complete command buffered now, in order, in one pass.

        ``commands(data)`` is ``feed(data)`` and then ``commands()``, one call
        cheaper. The caller may stop after any command (a command that makes
        the client wait, a client whose replies pile up): the commands not
        taken stay buffered, unparsed, and the next `commands` or
        `next_command` starts with them. An iterator is good until the next
        `feed`, `commands` or `next_command` call; take a fresh one then.

        Raises:
            ProtocolError: as `next_command`, once the commands before the
                bad input have been yielded.
        """
        if self._error is not None:
            raise self._error
        if data is not None and not self._buf and not self._missing and not self._size:
            # The common case: nothing held from before. Parse the read itself.
            buf = bytes(data)  # no copy if it is bytes already
            if buf[-1:] == b"\n" and 42 not in buf and 34 not in buf and 39 not in buf \
                    and 11 not in buf and 12 not in buf:
                # The commonest reads of all: whole, plain inline commands
                # (redis-benchmark's PING_INLINE, typed commands), no "*"
                # anywhere. Each line is a command; the last is b"".
                lines = buf.split(b"\n")
                if len(lines) == 2:
                    # One command: the parser holds nothing while it is out,
                    # so there is nothing to record.
                    words = lines[0].split()  # \r is white space to split()
                    if words:
                        yield words
                    return
                self._buf, self._need = buf, 0
                i = 0
                for line in lines:
                    i += len(line) + 1
                    words = line.split()
                    if words:
                        self._pos = i  # where to go on if the caller stops here
                        yield words
                self._buf, self._pos, self._need = b"", 0, 1  # all read: hold nothing
                return
            self._buf = buf
            i = 0
            more = True
            self._need = 0
        else:
            if data is not None:
                self._parts.append(bytes(data))  # as feed()
                self._size += len(data)
            if self._size < self._need:
                # Fewer new bytes than the unfinished request needs: nothing to parse.
                if self._size and self.buffered > self.max_buffer:
                    self._fail(_too_large(self.max_buffer))
                return
            if self._parts:
                # One join, of the unread rest and the new reads together, with
                # the old buffer let go before it and the reads right after:
                # a 64 MiB argument exists at most twice here, not four times
                # (REL-20).
                parts = self._parts
                if self._pos < len(self._buf):
                    parts.insert(0, self._buf[self._pos:])
                self._buf = b""
                self._buf = parts[0] if len(parts) == 1 else b"".join(parts)
                self._pos = 0
                parts.clear()
                self._size = 0
            self._need = 0
            buf = self._buf
            i = self._pos
            more = True
        n = len(buf)
        try:
            if self._missing:
                # A multibulk the last call left unfinished: go on with it.
                command = self._parse()
                i = self._pos
                if command is None:
                    more = False
                else:
                    yield command
            # Quotes, \v and \f need sdssplitargs; checked once for the whole input.
            plain = 34 not in buf and 39 not in buf and 11 not in buf and 12 not in buf
            while more and i < n:
                if buf[i] != _STAR:
                    # An inline command: the words of one line.
                    nl = buf.find(b"\n", i)
                    if nl >= 0:
                        line = buf[i:nl]
                        i = nl + 1
                        if plain:
                            words = line.split()  # \r is white space to split()
                        else:
                            words = split_inline(line[:-1] if line[-1:] == b"\r" else line)
                        if words:
                            self._pos = i
                            yield words
                        continue
                else:
                    # A multibulk, whole in the buffer, with counts in bounds:
                    # read it here. Anything else (unfinished, malformed, *0,
                    # a limit reached) is left to _parse below.
                    nl = buf.find(b"\r\n", i + 1, i + _COUNT_LINE_MAX + 1)
                    digits = buf[i + 1:nl]
                    if nl > 0 and digits.isdigit() and digits[0] != 0x30 \
                            and (count := int(digits)) <= self.max_args:
                        p = nl + 2
                        args = []
                        while count:
                            if buf[p:p + 1] != b"$":
                                break
                            nl = buf.find(b"\r\n", p + 1, p + _COUNT_LINE_MAX + 1)
                            digits = buf[p + 1:nl]
                            if nl < 0 or not digits.isdigit() or \
                                    (digits[0] == 0x30 and len(digits) > 1):
                                break
                            start = nl + 2
                            end = start + int(digits)
                            if end - start > self.max_bulk or end + 2 - i > self.max_buffer \
                                    or buf[end:end + 2] != b"\r\n":
                                break
                            args.append(buf[start:end])
                            p = end + 2
                            count -= 1
                        else:
                            i = self._pos = p
                            yield args
                            continue
                # The general case, one step at a time, keeping what it has read.
                self._pos = i
                command = self._parse()
                i = self._pos
                if command is None:
                    break
                yield command
            # Out of complete commands.
            if i >= n and not self._missing:
                self._buf, self._pos, self._need = b"", 0, 1  # all read: hold nothing
                return
            self._pos = i
            if not self._need:
                self._need = 1
            if self._taken + n - i + self._size > self.max_buffer:
                raise _too_large(self.max_buffer)
        except ProtocolError as e:
            self._fail(e)

    # ------------------------------------------------------------ internals

    def _fail(self, e: ProtocolError) -> NoReturn:
        self._error = e
        self._buf = b""  # nothing after an error is read: let it go
        self._pos = 0
        self._parts = []
        self._size = 0
        self._args = []
        self._taken = 0
        raise e

    def _parse(self) -> list[bytes] | None:  # noqa: C901 -- a resumable parser: one branch per state
        """Read on from ``_pos``, keeping partial state, to the end of the next
        command; ``None`` when the input runs out first."""
        buf = self._buf
        while True:
            if not self._missing:
                # Between requests: the first byte picks the shape.
                start = self._pos
                if start >= len(buf):
                    return None
                if buf[start] != _STAR:
                    line = self._inline_line()
                    if line is None:
                        return None
                    words = split_inline(line)
                    if words:
                        return words
                    continue  # a blank line is no command
                found = self._count(start, _invalid_multibulk)
                if found is None:
                    return None
                n, after = found
                # REDIS-4: limits checked on the header, before anything is stored
                if n > self.max_args:
                    raise _invalid_multibulk()
                self._pos = after
                if n <= 0:
                    continue  # *0 and *-1 are no command
                self._missing = n
                self._taken = after - start
            if self._bulk < 0:
                # The $ line of the next argument.
                start = self._pos
                if start >= len(buf):
                    return None
                if buf[start] != _DOLLAR:
                    raise ProtocolError(
                        f"Protocol error: expected '$', got '{_show(buf[start])}'")
                found = self._count(start, _invalid_bulk)
                if found is None:
                    return None
                n, after = found
                if n < 0 or n > self.max_bulk:
                    raise _invalid_bulk()
                self._taken += after - start
                if self._taken + n + 2 > self.max_buffer:
                    raise _too_large(self.max_buffer)
                self._pos = after
                self._bulk = n
            # The argument's bytes and the \r\n after them.
            start, end = self._pos, self._pos + self._bulk
            if len(buf) < end + 2:
                self._need = end + 2 - len(buf)  # do not parse again until they are here
                return None
            if buf[end] != _CR or buf[end + 1] != _LF:
                raise ProtocolError("Protocol error: expected '\\r\\n' after bulk string")
            self._args.append(buf[start:end])
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
        """Read the number on the ``*``/``$`` line at ``start``.

        Returns ``(number, offset after its \\r\\n)``, or ``None`` while the
        line is incomplete but can still become a number.
        """
        buf = self._buf
        first = start + 1
        stop = min(len(buf), first + _COUNT_LINE_MAX)
        nl = buf.find(b"\r\n", first, stop)
        if nl < 0:
            if stop - first >= _COUNT_LINE_MAX or not _COUNT_SO_FAR.fullmatch(buf, first, stop):
                raise invalid()
            return None
        if not _COUNT.fullmatch(buf, first, nl):
            raise invalid()
        return int(buf[first:nl]), nl + 2

    def _inline_line(self) -> bytes | None:
        """Take one inline line, without its ``\\n`` or ``\\r\\n``."""
        buf, start = self._buf, self._pos
        nl = buf.find(b"\n", start)
        if nl < 0:
            if len(buf) - start > MAX_INLINE:
                raise ProtocolError("Protocol error: too big inline request")
            return None
        end = nl - 1 if nl > start and buf[nl - 1] == _CR else nl
        self._pos = nl + 1
        return buf[start:end]



# ---------------------------------------------------------------- inline


_SPACE = frozenset(b" \t\n\r\x0b\x0c")  # C's isspace(): skipped between words
_ENDS_WORD = frozenset(b" \t\n\r")  # what ends an unquoted word in sdssplitargs
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09, ord("b"): 0x08, ord("a"): 0x07}
_QUOTE, _APOSTROPHE, _BACKSLASH = 0x22, 0x27, 0x5C


# REDIS-1: inline commands
def split_inline(line: bytes) -> list[bytes]:  # noqa: C901 -- Redis's sdssplitargs, case by case
    """Split an inline command into words, the way Redis's ``sdssplitargs`` does.

    Words are separated by whitespace. ``"..."`` may hold spaces and the
    escapes ``\\n \\r \\t \\b \\a \\xHH`` (any other ``\\c`` is ``c``);
    ``'...'`` may hold spaces and ``\\'``. A closing quote must be followed
    by whitespace or the end of the line.

    Raises:
        ProtocolError: ``unbalanced quotes in request``.
    """
    # The common case: no quotes, only ASCII whitespace. Testing for an int
    # (a byte value) is about ten times faster than for a one-byte string.
    if 34 not in line and 39 not in line and 11 not in line and 12 not in line:  # " ' \v \f
        return line.split()
    words: list[bytes] = []
    n = len(line)
    i = 0

    def at(j: int) -> int:
        return line[j] if j < n else -1  # -1 plays the part of C's final NUL

    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return words
        word = bytearray()
        quote = 0  # the quote we are inside, or 0
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
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    i += 1
                    break
                elif c == -1:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                else:
                    word.append(c)
                    i += 1
            elif quote == _APOSTROPHE:
                if c == _BACKSLASH and at(i + 1) == _APOSTROPHE:
                    word.append(_APOSTROPHE)
                    i += 2
                elif c == _APOSTROPHE:
                    if at(i + 1) != -1 and at(i + 1) not in _SPACE:
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    i += 1
                    break
                elif c == -1:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
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


# --------------------------------------------------------------- encoder


def _text(value: str | bytes) -> bytes:
    return value.encode("utf-8", "backslashreplace") if isinstance(value, str) else value


# REDIS-6: the RESP2 encoder
def simple(text: str | bytes) -> bytes:
    """``+text``: a status reply such as ``+PONG``.

    Raises:
        ValueError: ``text`` contains ``\\r`` or ``\\n``.
    """
    b = _text(text)
    if b"\r" in b or b"\n" in b:
        raise ValueError("a simple string cannot hold \\r or \\n")
    return b"+" + b + b"\r\n"


def error(message: str | bytes) -> bytes:
    """``-message``: an error reply. The message starts with its code
    (``ERR ...``); line breaks in it become spaces, as Redis does."""
    b = _text(message).replace(b"\r", b" ").replace(b"\n", b" ")
    return b"-" + b + b"\r\n"


def integer(n: int) -> bytes:
    """``:n``: an integer reply."""
    return b":%d\r\n" % n


def bulk(value: bytes | bytearray | memoryview | None) -> bytes:
    """``$len`` and the bytes: a bulk string reply; ``None`` is the nil `NIL`."""
    if value is None:
        return NIL
    return b"".join((b"$%d\r\n" % len(value), value, b"\r\n"))


def mapping(pairs: Iterable[tuple[bytes, bytes]], resp3: bool) -> bytes:
    """A map of encoded keys to encoded values: ``%n`` in RESP3, a flat
    array of ``2n`` items in RESP2."""
    flat = [x for pair in pairs for x in pair]
    if resp3:
        return b"%%%d\r\n" % (len(flat) // 2) + b"".join(flat)
    return array(flat)


def parse_integer(text: bytes | bytearray) -> int | None:
    """``text`` as Redis reads a number (no ``+``, no spaces, no leading
    zeros, fits in 64 bits), or ``None``."""
    if not _COUNT.fullmatch(text):
        return None
    n = int(text)
    return n if -(1 << 63) <= n < 1 << 63 else None


def array(items: Iterable[bytes]) -> bytes:
    """``*n`` and the items, each already encoded (so arrays can nest)."""
    parts = list(items)
    return b"*%d\r\n" % len(parts) + b"".join(parts)


def encode_command(*words: str | bytes | int) -> bytes:
    """A command as a client sends it: an array of bulk strings."""
    return array(bulk(_text(w) if not isinstance(w, int) else b"%d" % w) for w in words)
