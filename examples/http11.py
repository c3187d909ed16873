"""A small sans-I/O HTTP/1.1 request parser and response encoder.

Theory of operation
-------------------
The parser owns no socket. Bytes go in with `RequestParser.feed`; complete
requests come out of `RequestParser.next_request`, one at a time, in the
order they were sent. A request split across reads waits in the parser's
buffer; several requests in one read (pipelining) come out one per call.
The server is the loop that pumps it::

    parser.feed(data)
    while (request := parser.next_request()) is not None:
        out.append(answer(request))

This is h11's design, cut down to what a small server needs: requests only,
bodies framed by ``Content-Length`` only, no trailers, no upgrades.

A request is read in two states, written as the two halves of
`RequestParser.next_request`:

* **head** -- look for the empty line that ends the request line and the
  header fields (RFC 9112 section 2.1). Until it arrives, nothing is parsed;
  the buffer is only allowed to grow to ``max_head`` bytes, then the request
  is refused with 431.
* **body** -- wait for exactly ``Content-Length`` bytes (RFC 9112 section
  6.2). A length over ``max_body`` is refused with 413 as soon as the head is
  read, so the body is never buffered.

The traps, and what we chose:

* *Unbounded buffering.* A client that never sends the empty line, or
  announces a body of a terabyte, must not make us hold its bytes. Both
  limits are checked before anything is kept, so between calls the parser
  holds at most ``max_head`` bytes of an unfinished head, or fewer than
  ``Content-Length`` bytes of an unfinished body.
* *Request smuggling.* When two parties disagree about where a request ends,
  an attacker can hide a second request inside the first. We refuse every
  ambiguity instead of guessing: a ``Transfer-Encoding`` of any kind (501,
  see below), a ``Content-Length`` that is not plain digits or that is given
  twice with different values (400), white space between a field name and
  its colon, obsolete line folding and bare CRs (400). After an error the
  parser is finished: the server answers and closes the connection.
* *Transfer-Encoding.* RFC 9112 section 6.1 asks a full HTTP/1.1 server to
  understand ``chunked``; this example does not implement it. A request
  with ``Transfer-Encoding`` gets 501 Not Implemented, the status RFC 9112
  names for a transfer coding the server does not understand, and the
  connection closes, because we cannot tell where that body ends. Real
  clients only send chunked bodies when they do not know the length in
  advance; curl, browsers and ``http.client`` send ``Content-Length``
  whenever they can.
* *Leniency.* RFC 9112 section 2.2 lets a recipient accept a bare LF as a
  line ending and ignore empty lines before the request line; we do both,
  so a request typed into ``nc`` works.

Errors are `HTTPError` exceptions carrying the status code to answer with.

Speed: a head is first tried against one regular expression for the whole
of it (`_FAST_HEAD`, h11's idea), which accepts only heads the rules above
accept and gives the same result for them; any other head, malformed or
just unusual (bare LF line ends, leading empty lines), is read line by line,
so every error comes from the line-by-line reading. The test suite checks
the two against a straightforward reference parser, split at every byte.

Speed, again: a client on a kept-alive connection often sends the same head
over and over (a benchmark, a health check, a poller). The parser remembers
the last bodiless head the fast path accepted, byte for byte, and the
`Request` it gave; when the next head is the same bytes, it hands out the
same `Request` again without matching it. That is safe because what the
fast path makes of a bodiless head is a pure function of its bytes: no
limit, no state and no earlier request enters into it, and a `Request` is
immutable, so the same record is the same answer. Only heads of up to
``_REMEMBER`` bytes are kept, so the memory a connection holds between
requests stays small.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "REASONS",
    "HTTPError",
    "Request",
    "RequestParser",
    "encode_response",
]

MAX_HEAD = 16 * 1024
"""Default limit, in bytes, for the request line and header fields together
(the empty line that ends them included)."""
MAX_BODY = 1024 * 1024
"""Default limit, in bytes, for a request body."""

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}
"""Reason phrases (RFC 9110 section 15) for the statuses this module uses."""

# RFC 9110 section 5.6.2:
#   token = 1*tchar
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#           "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9112 section 3.2: the request-target has no white space in it; we take
# any run of visible US-ASCII (origin-form, absolute-form, authority-form
# and "*" all fit) and leave its meaning to the server.
_TARGET = re.compile(rb"[\x21-\x7e]+")
# RFC 9112 section 2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT, and
# HTTP-name is case-sensitive.
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_SUPPORTED = (b"HTTP/1.1", b"HTTP/1.0")
# RFC 9112 section 5: field-line = field-name ":" OWS field-value OWS. No
# white space is allowed between the name and the colon (a 400, section 5.1).
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*")
# RFC 9110 section 5.5: field values are visible characters, SP, HTAB and
# obs-text (0x80-0xff); any other control character is refused.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The end of the head: an empty line, CRLF or (leniently) a bare LF.
_HEAD_END = re.compile(rb"\n\r?\n")
# Empty lines a client may send before a request line (RFC 9112 section 2.2).
_EMPTY_LINES = re.compile(rb"(?:\r?\n)+")
_DIGITS = re.compile(r"[0-9]+")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# The fast path: one regular expression over a whole head, h11's idea,
# matched against the head decoded as Latin-1 (one decode for the head
# instead of one per field; a byte is the character of the same number). It
# accepts a subset of what the rules above accept -- CRLF line ends, no
# empty lines before the request line, HTTP/1.1 or HTTP/1.0 -- and every
# head it accepts, the rules above accept with the same result: request line
# as _TOKEN, _TARGET and _SUPPORTED; each field as _FIELD, its value free of
# _BAD_VALUE's characters. Whatever it does not accept, malformed or merely
# unusual, goes the long way, so errors are always the long way's.
_FAST_HEAD = re.compile(
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) (HTTP/1\.[01])\r\n"
    r"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n")
# A field line of a head _FAST_HEAD accepted: the name, and the value with its
# white space (stripped afterwards, as _FIELD does).
_FAST_FIELD = re.compile(r"([^:]+):([^\r]*)\r\n")
# Fields that change how a request is framed or kept: with any of them (or
# without exactly one Host), the checks of _check_head run.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "expect"})
# The longest head remembered for reuse (see "Speed, again" above): curl's
# and wrk's heads are under 100 bytes, a browser's a few hundred.
_REMEMBER = 1024


class HTTPError(Exception):
    """A request the parser refuses; answer with `status` and close.

    Attributes:
        status: The status code to answer with (400, 413, 431, 501 or 505).
        reason: Its reason phrase.
        detail: What was wrong, for the response body and for logs.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.reason = REASONS.get(status, "Error")
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.detail}"


class Request(NamedTuple):
    """One complete request.

    Immutable, like a frozen dataclass, but built in one call: a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``,
    which cost a fifth of the time of a whole small request.

    Attributes:
        method: The method, e.g. ``"GET"`` (case-sensitive, as sent).
        target: The request-target, e.g. ``"/index.html?x=1"``.
        version: ``"HTTP/1.1"`` or ``"HTTP/1.0"``.
        headers: ``(name, value)`` pairs in the order sent; names are
            lower-cased, values have surrounding white space removed and
            are decoded as Latin-1 (so any byte survives).
        body: The body (``b""`` when there is none).
        keep_alive: Whether the connection may carry another request after
            this one: HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only
            with ``Connection: keep-alive``.
    """

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    keep_alive: bool

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or ``None``."""
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None


_new_tuple = tuple.__new__


class _Head(NamedTuple):
    """A parsed head whose body has not arrived yet."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    length: int
    keep_alive: bool


# HTTP-1, HTTP-9: framing independent of reads; an error is final
class RequestParser:
    """Turns the bytes of one connection into `Request` records.

    Args:
        max_head: Largest request line plus header fields, in bytes (431
            beyond it).
        max_body: Largest ``Content-Length`` accepted, in bytes (413 beyond
            it).
    """

    __slots__ = ("_buf", "_continue", "_error", "_head", "_last", "_last_request",
                 "_line_ok", "_scan", "max_body", "max_head")

    def __init__(self, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for the end of the head
        self._line_ok = False  # the request line of the head being read is valid
        self._head: _Head | None = None  # set while reading a body
        self._continue = False  # the client waits for "100 Continue"
        self._error: HTTPError | None = None
        # The last bodiless head the fast path accepted, and its request.
        self._last: bytes | bytearray = b""
        self._last_request: Request | None = None

    @property
    def buffered(self) -> int:
        """How many bytes are held, waiting for the rest of a request."""
        return len(self._buf)

    @property
    def phase(self) -> str:
        """Where the next request stands: ``"idle"`` (nothing of it read yet),
        ``"head"`` (part of its head read) or ``"body"`` (its head accepted,
        part of its body missing). Meaningful after `next_request` returned
        ``None``; the server's timeouts follow it (HTTP-19)."""
        if self._head is not None:
            return "body"
        return "head" if self._buf else "idle"

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the connection. Nothing is parsed yet.

        Raises:
            HTTPError: the parser already failed (the same error again).
        """
        if self._error is not None:
            raise self._error
        self._buf += data

    def next_request(self) -> Request | None:
        """The next complete request, or ``None`` until more bytes are fed.

        Call it until it returns ``None`` after every `feed`, so that the
        size limits are checked as the bytes arrive.

        Raises:
            HTTPError: the request is malformed (400), too large (413, 431),
                uses a transfer coding (501) or another HTTP version (505).
                The parser is finished: every later call raises it again.
        """
        if self._error is not None:
            raise self._error
        try:
            if self._head is None:
                buf = self._buf
                if not buf:
                    return None  # between requests, nothing read yet
                last = self._last
                if last and buf.startswith(last):
                    # The same head as the last one: the same request (see
                    # "Speed, again"). Its only CRLF CRLF is its end, so it
                    # is the whole head the search below would find.
                    del buf[: len(last)]
                    self._scan = 0
                    self._line_ok = False
                    return self._last_request
                head = self._read_head()
                if head is None or type(head) is Request:
                    return head
                assert isinstance(head, _Head)
                if not head.length:
                    return _request(head, b"")
                self._head = head
            return self._read_body(self._head)
        except HTTPError as e:
            self._error = e
            self._buf = bytearray()  # nothing more will be parsed: let it go
            self._continue = False
            raise

    # HTTP-10
    def take_interim(self) -> bytes:
        """The ``100 Continue`` response to send now, once, or ``b""``.

        A client that sent ``Expect: 100-continue`` (RFC 9110 section
        10.1.1) waits for it before sending the body. The parser asks for it
        only when the head has been accepted and the body is still missing.
        """
        if self._continue:
            self._continue = False
            return _CONTINUE
        return b""

    # ---------------------------------------------------------------- head

    # HTTP-4: the head's size bound
    def _read_head(self) -> _Head | Request | None:
        buf = self._buf
        # The fast path (see _FAST_HEAD): a whole, plain head at the front.
        # The search resumes where the last one stopped, as the slow path's.
        scan = self._scan
        end = buf.find(b"\r\n\r\n", scan - 3 if scan > 3 else 0)
        if 0 <= end <= self.max_head - 4:
            raw = buf[: end + 4]
            fast = _FAST_HEAD.fullmatch(raw.decode("latin-1"))
            if fast is not None:
                del buf[: end + 4]
                self._scan = 0
                self._line_ok = False
                parsed = self._fast_head(fast)
                if isinstance(parsed, _Head):
                    if parsed.length:
                        return parsed
                    parsed = _request(parsed, b"")
                if end < _REMEMBER:
                    # Bodiless, so a pure function of the bytes (a Content-Length
                    # of 0 is within every max_body): remember it.
                    self._last = raw  # a copy: nothing else refers to it
                    self._last_request = parsed
                return parsed
        if self._scan == 0:
            m = _EMPTY_LINES.match(buf)
            if m:
                del buf[: m.end()]  # empty lines before a request line
        m = _HEAD_END.search(buf, max(self._scan - 2, 0))
        if m is None:
            if len(buf) > self.max_head:
                raise HTTPError(431, f"request line and headers exceed {self.max_head} bytes")
            if not self._line_ok:
                eol = buf.find(b"\n")
                if eol >= 0:  # refuse a bad request line without waiting for the headers
                    _request_line(bytes(buf[:eol]).removesuffix(b"\r"))
                    self._line_ok = True
            # A lone CR may still become an empty line: look at it again.
            self._scan = 0 if buf == b"\r" else len(buf)
            return None
        if m.end() > self.max_head:
            raise HTTPError(431, f"request line and headers exceed {self.max_head} bytes")
        head = bytes(buf[: m.start()])
        del buf[: m.end()]
        self._scan = 0
        self._line_ok = False
        return self._parse_head(head)

    def _parse_head(self, head: bytes) -> _Head:
        lines = [line.removesuffix(b"\r") for line in head.split(b"\n")]
        if any(b"\r" in line for line in lines):
            raise HTTPError(400, "bare CR in the request head")
        method, target, version = _request_line(lines[0])
        headers = tuple(_field(line) for line in lines[1:])
        return self._check_head(method, target, version, headers)

    def _fast_head(self, m: re.Match[str]) -> _Head | Request:
        """The head _FAST_HEAD matched; a `Request` if it has no body."""
        method, target, version, block = m.groups()
        fields = []
        hosts = 0
        plain = True
        for name, value in _FAST_FIELD.findall(block):
            name = name.lower()
            fields.append((name, value.strip(" \t")))
            if name == "host":
                hosts += 1
            elif name in _FRAMING:
                plain = False
        headers = tuple(fields)
        if hosts != 1 or not plain:
            return self._check_head(method, target, version, headers)
        # One Host, no framing fields: no body, and persistence by version alone.
        # (tuple.__new__ is Request(...) without the Python frame of its __new__.)
        return _new_tuple(Request, (method, target, version, headers, b"",
                                    version == "HTTP/1.1"))

    def _check_head(self, method: str, target: str, version: str,
                    headers: tuple[tuple[str, str], ...]) -> _Head:
        """The rules on the fields of a head whose lines are well formed."""
        # One pass gathers the fields the rules look at; most heads have none
        # of them but Host.
        hosts = 0
        chosen: dict[str, list[str]] = {}
        for name, value in headers:
            if name == "host":
                hosts += 1
            elif name in _FRAMING:
                chosen.setdefault(name, []).append(value)

        # HTTP-7
        # RFC 9112 section 3.2: exactly one Host in HTTP/1.1, never two.
        if hosts > 1:
            raise HTTPError(400, "more than one Host header")
        if not hosts and version == "HTTP/1.1":
            raise HTTPError(400, "HTTP/1.1 request without a Host header")
        if not chosen:
            return _Head(method, target, version, headers, 0, version == "HTTP/1.1")
        # HTTP-6
        # RFC 9112 section 6.1; see "Transfer-Encoding" in the module notes.
        if "transfer-encoding" in chosen:
            raise HTTPError(501, "Transfer-Encoding is not supported; send Content-Length")
        length = _content_length(chosen.get("content-length", []))
        if length > self.max_body:
            raise HTTPError(413, f"body of {length} bytes exceeds {self.max_body} bytes")

        # HTTP-8
        # RFC 9112 section 9.3: persistence.
        tokens = _tokens(chosen.get("connection"))
        if version == "HTTP/1.1":
            keep_alive = "close" not in tokens
        else:
            keep_alive = "keep-alive" in tokens and "close" not in tokens
        # RFC 9110 section 10.1.1: an HTTP/1.0 client's Expect is ignored.
        if length and version == "HTTP/1.1" and "100-continue" in _tokens(chosen.get("expect")):
            self._continue = True
        return _Head(method, target, version, headers, length, keep_alive)

    # ---------------------------------------------------------------- body

    def _read_body(self, head: _Head) -> Request | None:
        buf, n = self._buf, head.length
        if len(buf) < n:
            return None
        # One copy of the body, and a fresh buffer for what follows it, so
        # that the buffer the body grew in is freed, not kept (REL-20).
        with memoryview(buf) as view:
            body = bytes(view[:n])
            self._buf = bytearray(view[n:])
        self._head = None
        self._continue = False  # the body came without it: too late to send
        return _request(head, body)


def _request(head: _Head, body: bytes) -> Request:
    return Request(head.method, head.target, head.version, head.headers, body, head.keep_alive)


# HTTP-2
def _request_line(line: bytes) -> tuple[str, str, str]:
    """Split and check ``method SP request-target SP HTTP-version``."""
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HTTPError(400, "the request line must be METHOD TARGET VERSION, single spaces")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HTTPError(400, "the method is not a token")
    if not _TARGET.fullmatch(target):
        raise HTTPError(400, "the request target must be visible ASCII, no white space")
    if not _VERSION.fullmatch(version):
        raise HTTPError(400, "malformed HTTP version")
    if version not in _SUPPORTED:
        raise HTTPError(505, f"{version.decode()} is not supported; use HTTP/1.1 or HTTP/1.0")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


# HTTP-3
def _field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 section 5.2: obsolete line folding may be refused with 400.
        raise HTTPError(400, "obsolete line folding in a header field")
    m = _FIELD.fullmatch(line)
    if m is None:
        raise HTTPError(400, "malformed header field (name: value, no space before the colon)")
    name, value = m.groups()
    if _BAD_VALUE.search(value):
        raise HTTPError(400, "control character in a header field value")
    return name.decode("ascii").lower(), value.decode("latin-1")


def _tokens(values: list[str] | None) -> set[str]:
    """The comma-separated list items of some fields' values, lower-cased."""
    if not values:
        return set()
    return {t.strip().lower() for v in values for t in v.split(",")}


# HTTP-5
def _content_length(values: list[str]) -> int:
    """RFC 9110 section 8.6: 1*DIGIT; a repeated or listed value must agree."""
    lengths: set[int] = set()
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not _DIGITS.fullmatch(item):
                raise HTTPError(400, f"invalid Content-Length {value!r}")
            digits = item.lstrip("0") or "0"
            # Longer than 18 digits is more than any limit, and int() of a huge
            # string is slow: keep it as "too large" without converting it.
            lengths.add(int(digits) if len(digits) <= 18 else 10**18)
    if len(lengths) > 1:
        raise HTTPError(400, "conflicting Content-Length values")
    return lengths.pop() if lengths else 0


# HTTP-11
def encode_response(
    status: int,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    *,
    keep_alive: bool,
    request: Request | None = None,
) -> bytes:
    """Encode a final response.

    ``Content-Length`` is always sent, so every response is framed and the
    connection can carry the next one. The ``Connection`` header says what
    happens next: ``close`` when the server will close, ``keep-alive`` when
    it keeps an HTTP/1.0 connection open (an HTTP/1.0 client would otherwise
    assume it closes).

    Args:
        status: A final status code (200-599).
        body: The content; left out of a response to ``HEAD``.
        headers: More header fields, e.g. ``[("Content-Type", "text/plain")]``.
        keep_alive: Whether the server keeps the connection open afterwards.
        request: The request answered (for ``HEAD`` and the HTTP version), or
            ``None`` when the request could not be read.

    Returns:
        The bytes to send.

    Raises:
        ValueError: ``status`` is not a final status, or a header contains a
            CR or LF (which would let a value inject header fields).
    """
    if not 200 <= status <= 599:
        raise ValueError(f"{status} is not a final status code")
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} contains CR or LF")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    elif request is not None and request.version == "HTTP/1.0":
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if request is not None and request.method == "HEAD":
        return head
    return head + body
