"""The HTTP example: its sans-I/O parser, and its server under real clients.

The parser (``examples/http11.py``) is tested directly, with hypothesis for
"any chunking" and "any input". The server (``examples/http_server.py``) runs
as a real process on loopback, port 0, and is exercised by clients that
share no code with it: curl, wrk, Python's ``http.client``, raw sockets and
headless Chromium. curl, wrk and chromium are required: a missing one is a
failure that says so, not a skip.

Every subprocess and every socket operation has a timeout; Chromium gets
``CHROMIUM_TIMEOUT`` because it takes a few seconds to start.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import itertools
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import trustme
import wire
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from harness import POLLERS, required_program
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import http11  # noqa: E402
from http11 import HTTPError, Request, RequestParser, encode_response  # noqa: E402

SERVER = ROOT / "examples" / "http_server.py"
TIMEOUT = 20.0  # one socket operation, one curl/wrk run, starting or stopping the server
CHROMIUM_TIMEOUT = 60.0
KiB = 1024
MiB = 1024 * 1024
HELLO = b"Hello World!\r\n"
ERROR_STATUSES = {400, 413, 431, 501, 505}

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ====================================================================== tools


def tool(name: str) -> str:
    """The path of a client program (curl, wrk, chromium); fail (never skip) without it."""
    return required_program(name, "the HTTP example's real-client tests")


def run(args: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=timeout, check=False)


# ============================================================== the server


@dataclass
class Server:
    """A running ``http_server.py`` process and what its start-up lines said."""

    proc: subprocess.Popen[Any]
    port: int
    tlsport: int | None
    unix: str | None
    ca: str | None  # the throwaway CA file the server printed, if any
    cafile: str | None  # the CA clients should trust for the TLS port
    out: Path
    err: Path
    lines: list[str] = field(default_factory=list)
    target: wire.Running | None = None  # a wire target (docs/spec/wire-targets.md)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def tls_url(self, path: str = "/") -> str:
        return f"https://127.0.0.1:{self.tlsport}{path}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[str, str]:
        """Signal the server; expect a clean exit 0 with no traceback (a wire
        target need only exit: WIRE-3)."""
        if self.target is not None:
            wire.terminate(self.target, sig)
            return self.target.output()
        self.proc.send_signal(sig)
        self.proc.wait(TIMEOUT)
        out, err = self.out.read_text(), self.err.read_text()
        assert self.proc.returncode == 0, err
        assert "http server stopped" in out, out
        assert "Traceback" not in err, err
        return out, err


@contextlib.contextmanager
def http_server(tmp: Path, *args: str, cafile: str | None = None) -> Iterator[Server]:
    """Run the example on port 0 (and TLS port 0); yield it; stop it cleanly."""
    if wire.external("http"):
        with http_target(tmp, args) as server:
            yield server
        return
    tmp.mkdir(parents=True, exist_ok=True)
    out, err = tmp / "stdout.txt", tmp / "stderr.txt"
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", "0", "--tlsport", "0", *args],
            stdout=fo, stderr=fe, cwd=tmp,
        )
    try:
        want = ["listening on"]
        if "--no-tls" not in args:
            want.append("https on")
            if "--tlscert" not in args:
                want.append("CA file: ")
        deadline = time.monotonic() + TIMEOUT
        text = ""
        while not all(w in text for w in want):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"http_server.py did not start: {out.read_text()!r} {err.read_text()!r}")
            time.sleep(0.02)
            text = out.read_text()
        lines = text.splitlines()
        assert lines[0].startswith("http server listening on "), lines
        ports = [int(p) for p in re.findall(r"\('127\.0\.0\.1', (\d+)\)", lines[0])]
        ca = re.search(r"CA file: (\S+)", text)
        unix = args[args.index("--unixsocket") + 1] if "--unixsocket" in args else None
        server = Server(
            proc, ports[0], ports[1] if "--no-tls" not in args else None, unix,
            ca.group(1) if ca else None, cafile or (ca.group(1) if ca else None),
            out, err, lines,
        )
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)


@contextlib.contextmanager
def http_target(tmp: Path, args: tuple[str, ...]) -> Iterator[Server]:
    """`http_server` for a wire target: plain HTTP on one port, plus the unix
    socket when the manifest maps that option (no TLS: ``http:tls``)."""
    options: dict[str, str | None] = {}
    if "--poller" in args:
        wire.once_per_poller("http", args[args.index("--poller") + 1], POLLERS)
        options["poller"] = args[args.index("--poller") + 1]
    unix = args[args.index("--unixsocket") + 1] if "--unixsocket" in args else None
    if unix is not None and wire.mapped("http", "unixsocket"):
        options["unixsocket"] = unix
    else:
        unix = None
    with wire.launch("http", tmp, options, stop=False) as running:
        yield Server(running.proc, running.port, None, unix, None, None, running.out,
                     running.err, target=running)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the client tests: throwaway certificate, a unix socket."""
    tmp = tmp_path_factory.mktemp("http")
    with http_server(tmp, "--unixsocket", str(tmp / "http.sock")) as s:
        yield s
        s.stop()


@pytest.fixture(scope="module")
def own_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A trustme CA of the test's own: (CA file, certificate file, key file)."""
    tmp = tmp_path_factory.mktemp("ca")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    return str(tmp / "ca.pem"), str(tmp / "cert.pem"), str(tmp / "key.pem")


# ------------------------------------------------------- reading responses


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def read_response(rf: IO[bytes], head: bool = False) -> Response:
    """Read one response from a buffered socket file (Content-Length framing)."""
    status_line = rf.readline()
    assert status_line.startswith(b"HTTP/1.1 "), f"not a status line: {status_line!r}"
    headers: dict[str, str] = {}
    while True:
        line = rf.readline()
        assert line, "end of stream inside a response head"
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    body = b"" if head else rf.read(length)
    assert len(body) == (0 if head else length), "end of stream inside a body"
    return Response(int(status_line.split()[1]), headers, body)


def closes(rf: IO[bytes]) -> bool:
    """True once the server has closed the connection, with nothing more sent.

    A reset counts as a close: the server closed with bytes of ours still
    unread in its buffer (see the HTTP example page).
    """
    try:
        rest = rf.read()
    except ConnectionResetError:
        return True
    assert rest == b"", f"unexpected bytes after the last response: {rest[:80]!r}"
    return True


def refused(server: Server, request: bytes, status: int,
            body_after: bytes = b"") -> Response:
    """Send ``request`` (then ``body_after`` on a thread); expect ``status`` and a close."""
    with server.connect() as s:
        s.sendall(request)
        sender: threading.Thread | None = None
        if body_after:
            def send_rest() -> None:
                with contextlib.suppress(OSError):  # the server may close first
                    s.sendall(body_after)

            sender = threading.Thread(target=send_rest, daemon=True)
            sender.start()
        rf = s.makefile("rb")
        r = read_response(rf)
        assert r.status == status, r
        assert r.headers.get("connection") == "close", r.headers
        assert r.body.startswith(f"{status} {http11.REASONS[status]}".encode()), r.body
        assert closes(rf), "the server must close after refusing"
        if sender is not None:
            sender.join(TIMEOUT)
        return r


# ============================================================= the parser


def parse_all(data: bytes, **limits: int) -> list[Request]:
    p = RequestParser(**limits)
    p.feed(data)
    out = []
    while (r := p.next_request()) is not None:
        out.append(r)
    return out


def status_of(data: bytes, **limits: int) -> int:
    with pytest.raises(HTTPError) as e:
        parse_all(data, **limits)
    return e.value.status


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-1", "HTTP-3", "HTTP-8")
def test_parser_reads_a_get_and_keeps_the_rest() -> None:
    p = RequestParser()
    p.feed(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Two:  spaced value \t\r\nx-two: 2\r\n\r\nGE")
    r = p.next_request()
    assert r == Request("GET", "/a?b=c", "HTTP/1.1",
                        (("host", "x"), ("x-two", "spaced value"), ("x-two", "2")), b"", True)
    assert r.header("X-TWO") == "spaced value" and r.header("absent") is None
    assert p.next_request() is None and p.buffered == 2
    p.feed(b"T / HTTP/1.0\r\n\r\n")
    assert p.next_request() == Request("GET", "/", "HTTP/1.0", (), b"", False)


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-2")
def test_parser_line_endings_and_leading_empty_lines() -> None:
    reqs = parse_all(b"\r\n\n\r\nGET / HTTP/1.1\nHost: a\n\nPOST /echo HTTP/1.1\r\n"
                     b"Host: a\nContent-Length: 3\r\n\nabc")
    assert [(r.method, r.body) for r in reqs] == [("GET", b""), ("POST", b"abc")]


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-2", "HTTP-9")
@pytest.mark.parametrize(("line", "status"), [
    (b"GET / HTTP/1.1", 0),
    (b"M-SEARCH * HTTP/1.1", 0),
    (b"GET /\xff HTTP/1.1", 400),            # not ASCII
    (b"GET  / HTTP/1.1", 400),               # two spaces
    (b"GET / HTTP/1.1 ", 400),               # trailing space
    (b"GET /a b HTTP/1.1", 400),             # space in target
    (b"GET /a\tb HTTP/1.1", 400),            # tab in target
    (b"G(T / HTTP/1.1", 400),                # not a token
    (b"GET / http/1.1", 400),                # HTTP-name is case-sensitive
    (b"GET / HTTP/1", 400),
    (b"GET / HTTP/1.1x", 400),
    (b"GET /", 400),
    (b"GARBAGE", 400),
    (b"GET / HTTP/2.0", 505),
    (b"GET / HTTP/0.9", 505),
    (b"GET / HTTP/3.0", 505),
])
def test_parser_request_line(line: bytes, status: int) -> None:
    data = line + b"\r\nHost: a\r\n\r\n"
    if status == 0:
        assert len(parse_all(data)) == 1
    else:
        assert status_of(data) == status


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-2")
def test_parser_refuses_a_bad_request_line_before_the_headers() -> None:
    p = RequestParser()
    p.feed(b"GET / HTTP/9.9\r\nHost: a\r\n")  # the head is not complete
    with pytest.raises(HTTPError) as e:
        p.next_request()
    assert e.value.status == 505


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-3")
@pytest.mark.parametrize("field", [
    b"Host : a",              # space before the colon
    b" folded",               # obsolete line folding
    b"\tfolded",
    b"NoColon",
    b": empty-name",
    b"Bad\x01Name: a",
    b"X: a\x00b",             # control characters in the value
    b"X: a\x7fb",
    b"X: a\rb",               # bare CR
])
def test_parser_refuses_bad_fields(field: bytes) -> None:
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\n" + field + b"\r\n\r\n") == 400


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-3")
def test_parser_keeps_obs_text_and_tabs_in_values() -> None:
    (r,) = parse_all(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9\tau lait\r\n\r\n")
    assert r.header("x") == "caf\xe9\tau lait"


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-7")
def test_parser_host_rules() -> None:
    assert status_of(b"GET / HTTP/1.1\r\n\r\n") == 400
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400
    assert status_of(b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n") == 400
    assert len(parse_all(b"GET / HTTP/1.0\r\n\r\n")) == 1


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-5")
@pytest.mark.parametrize(("fields", "result"), [
    ([b"Content-Length: 3"], 3),
    ([b"Content-Length: 003"], 3),
    ([b"Content-Length: 3, 3"], 3),
    ([b"Content-Length: 3", b"content-length: 3"], 3),
    ([b"Content-Length: 0"], 0),
    ([b"Content-Length: 3", b"Content-Length: 4"], 400),
    ([b"Content-Length: 3, 4"], 400),
    ([b"Content-Length: -1"], 400),
    ([b"Content-Length: +3"], 400),
    ([b"Content-Length: 0x3"], 400),
    ([b"Content-Length: 3 3"], 400),
    ([b"Content-Length: 3,"], 400),
    ([b"Content-Length:"], 400),
    ([b"Content-Length: \xb3"], 400),          # a Latin-1 superscript three
    ([b"Content-Length: 1048577"], 413),
    ([b"Content-Length: " + b"9" * 5000], 413),
])
def test_parser_content_length(fields: list[bytes], result: int) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\nabc"
    if result >= 400:
        assert status_of(data) == result
    else:
        (r,) = parse_all(data)
        assert r.body == b"abc"[:result]


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-6")
@pytest.mark.parametrize("fields", [
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
])
def test_parser_transfer_encoding_is_501(fields: bytes) -> None:
    assert status_of(b"POST / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n5\r\nhello\r\n0\r\n\r\n"
                     ) == 501


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-8")
@pytest.mark.parametrize(("version", "connection", "keep"), [
    ("HTTP/1.1", None, True),
    ("HTTP/1.1", "close", False),
    ("HTTP/1.1", "Keep-Alive, CLOSE", False),
    ("HTTP/1.1", "keep-alive", True),
    ("HTTP/1.1", "upgrade", True),
    ("HTTP/1.0", None, False),
    ("HTTP/1.0", "Keep-Alive", True),
    ("HTTP/1.0", "te, keep-alive", True),
    ("HTTP/1.0", "keep-alive, close", False),
    ("HTTP/1.0", "close", False),
])
def test_parser_keep_alive(version: str, connection: str | None, keep: bool) -> None:
    head = f"GET / {version}\r\nHost: a\r\n"
    if connection is not None:
        head += f"Connection: {connection}\r\n"
    (r,) = parse_all((head + "\r\n").encode())
    assert r.keep_alive is keep


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-10")
def test_parser_100_continue() -> None:
    p = RequestParser()
    p.feed(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n")
    assert p.next_request() is None
    assert p.take_interim() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert p.take_interim() == b""  # once
    p.feed(b"data")
    assert p.next_request() is not None and p.take_interim() == b""
    # The body came with the head: too late for an interim answer.
    p.feed(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx")
    assert p.next_request() is not None and p.take_interim() == b""
    # HTTP/1.0 Expect is ignored; a refused head gets its final answer only.
    p.feed(b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert p.next_request() is None and p.take_interim() == b""
    big = RequestParser(max_body=10)
    big.feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(HTTPError):
        big.next_request()
    assert big.take_interim() == b""


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-9")
def test_parser_error_is_final() -> None:
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBROKEN LINE\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert p.next_request() is not None
    with pytest.raises(HTTPError) as first:
        p.next_request()
    assert first.value.status == 400 and "400 Bad Request" in str(first.value)
    assert p.buffered == 0
    for call in (p.next_request, lambda: p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")):
        with pytest.raises(HTTPError) as again:
            call()
        assert again.value is first.value


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-11")
def test_encode_response() -> None:
    get11 = Request("GET", "/", "HTTP/1.1", (), b"", True)
    head11 = Request("HEAD", "/", "HTTP/1.1", (), b"", True)
    get10 = Request("GET", "/", "HTTP/1.0", (), b"", True)
    hdrs = [("Content-Type", "text/plain")]
    assert encode_response(200, b"hi", hdrs, keep_alive=True, request=get11) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi")
    assert encode_response(200, b"hi", hdrs, keep_alive=True, request=head11) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n")
    assert encode_response(200, b"hi", keep_alive=True, request=get10) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi")
    assert encode_response(400, b"", keep_alive=False) == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    with pytest.raises(ValueError):
        encode_response(200, b"", [("X", "a\r\nSet-Cookie: evil")], keep_alive=True)
    with pytest.raises(ValueError):
        encode_response(100, keep_alive=True)


# ------------------------------------------------------------ properties

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHARS = "".join(chr(c) for c in range(0x21, 0x7F))
RESERVED = {"host", "content-length", "transfer-encoding", "connection", "expect"}


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bytes, Request]:
    """One valid request as bytes, with the record the parser must return."""
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT"]) | st.text(TCHARS, min_size=1,
                                                                             max_size=6))
    target = "/" + draw(st.text(VCHARS, max_size=12))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    fields: list[tuple[str, str]] = []
    names = st.text(TCHARS, min_size=1, max_size=8).filter(lambda n: n.lower() not in RESERVED)
    value = st.text(VCHARS + " \t\x80\xe9\xff", max_size=10).map(lambda v: v.strip(" \t"))
    fields += draw(st.lists(st.tuples(names, value), max_size=4))
    if version == "HTTP/1.1" or draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), ("Host", "example.org"))
    connection = draw(st.sampled_from([None, "close", "keep-alive", "Keep-Alive"]))
    if connection is not None:
        fields.append(("Connection", connection))
    body = draw(st.binary(max_size=40))
    if body or draw(st.booleans()):
        fields.append(("Content-Length", str(len(body))))
    ows = draw(st.sampled_from(["", " ", "\t ", "  "]))
    head = draw(st.sampled_from([b"", b"\r\n", b"\n\r\n"]))  # empty lines before it
    head += f"{method} {target} {version}".encode() + eol
    for n, v in fields:
        head += f"{n}:{ows}{v}{ows}".encode("latin-1") + eol
    data = head + eol + body
    if version == "HTTP/1.1":
        keep = connection != "close"
    else:
        keep = connection is not None and connection.lower() == "keep-alive"
    expected = Request(method, target, version,
                       tuple((n.lower(), v) for n, v in fields), body, keep)
    return data, expected


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-1", "HTTP-3", "HTTP-8", "HTTP-4")
@PROPERTY
@given(st.lists(valid_requests(), min_size=1, max_size=5), st.lists(st.integers(0, 10**6)))
def test_property_any_split_gives_the_same_requests(
        reqs: list[tuple[bytes, Request]], cuts: list[int]) -> None:
    stream = b"".join(data for data, _ in reqs)
    expected = [r for _, r in reqs]
    assert parse_all(stream) == expected
    p = RequestParser(max_head=512, max_body=64)
    got = []
    for piece in chunks(stream, cuts):
        p.feed(piece)
        while (r := p.next_request()) is not None:
            got.append(r)
        assert p.buffered <= 512  # an unfinished head or body, nothing more
    assert got == expected and p.buffered == 0


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-9")
@PROPERTY
@given(st.one_of(st.binary(max_size=400),
                 st.tuples(valid_requests(), st.binary(max_size=200)).map(
                     lambda t: t[0][0] + t[1])),
       st.lists(st.integers(0, 10**6)))
def test_property_any_bytes_give_requests_partial_or_http_error(
        data: bytes, cuts: list[int]) -> None:
    p = RequestParser(max_head=128, max_body=64)
    try:
        for piece in chunks(data, cuts):
            p.feed(piece)
            while (r := p.next_request()) is not None:
                assert isinstance(r, Request)
            assert p.buffered <= 128
    except HTTPError as e:
        assert e.status in ERROR_STATUSES


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-4")
@PROPERTY
@given(st.integers(129, 600), st.lists(st.integers(0, 10**6)), st.booleans())
def test_property_oversized_head_is_431_without_buffering_it(
        size: int, cuts: list[int], complete: bool) -> None:
    limit = 128
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * size + b"\r\n"
    data = head + (b"\r\n" if complete else b"")
    p = RequestParser(max_head=limit)
    fed = 0
    with pytest.raises(HTTPError) as e:
        for piece in chunks(data, cuts):
            assert fed <= limit  # it would have raised already
            p.feed(piece)
            fed += len(piece)
            assert p.next_request() is None
            assert p.buffered <= limit
    assert e.value.status == 431


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("HTTP-5")
@PROPERTY
@given(st.integers(65, 10**9), st.binary(max_size=300), st.lists(st.integers(0, 10**6)))
def test_property_oversized_body_is_413_as_soon_as_the_head_is_read(
        length: int, body: bytes, cuts: list[int]) -> None:
    head = f"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n".encode()
    p = RequestParser(max_body=64)
    fed = 0
    with pytest.raises(HTTPError) as e:
        for piece in chunks(head + body, cuts):
            p.feed(piece)
            fed += len(piece)
            assert p.next_request() is None
            assert fed < len(head), "the head was complete: that call had to raise"
    assert e.value.status == 413


# =================================================== the server, real clients


@pytest.mark.rule("HTTP-12", "HTTP-13", "HTTP-15", "HTTP-16", "HTTP-17")
@pytest.mark.wire("http", "http:tls", "http:pages", "http:post-echo",
                  "http:keep-alive")
@pytest.mark.parametrize("poller", POLLERS)
def test_http_client_keep_alive(poller: str, tmp_path: Path,
                                own_ca: tuple[str, str, str]) -> None:
    cafile, certfile, keyfile = own_ca
    with http_server(tmp_path, "--poller", poller, "--tlscert", certfile, "--tlskey", keyfile,
                     cafile=cafile) as srv:
        assert srv.lines[0].endswith(f"(poller: {poller})")
        assert srv.ca is None  # a certificate was given: no throwaway one
        assert srv.tlsport is not None
        ctx = ssl.create_default_context(cafile=cafile)
        conns = [
            http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT),
            http.client.HTTPSConnection("127.0.0.1", srv.tlsport, timeout=TIMEOUT, context=ctx),
        ]
        for conn in conns:
            with contextlib.closing(conn):
                first_sock = None
                for method, path, body, status, want in [
                    ("GET", "/", None, 200, HELLO),
                    ("HEAD", "/", None, 200, b""),
                    ("GET", "/?q=1", None, 200, HELLO),
                    ("GET", "http://127.0.0.1/?q", None, 200, HELLO),  # absolute-form
                    ("GET", "/index.html", None, 200, b"<h1>Hello from evio</h1>"),
                    ("POST", "/echo", os.urandom(5000), 200, None),
                    ("GET", "/nothing", None, 404, b"404 Not Found\r\n"),
                    ("DELETE", "/", None, 405, b"405 Method Not Allowed\r\n"),
                    ("GET", "/echo", None, 405, b"405 Method Not Allowed\r\n"),
                ]:
                    conn.request(method, path, body=body)
                    r = conn.getresponse()
                    got = r.read()
                    assert r.status == status, (method, path, r.status, got)
                    assert r.version == 11 and not r.will_close
                    assert r.getheader("Server") == "evio" and r.getheader("Date")
                    if want is None:
                        assert got == body
                    elif path == "/index.html":
                        assert want in got and r.getheader("Content-Type", "").startswith(
                            "text/html")
                    else:
                        assert got == want
                    if method == "HEAD":
                        assert r.getheader("Content-Length") == str(len(HELLO))
                    if status == 405:
                        assert r.getheader("Allow") == ("POST" if path == "/echo"
                                                        else "GET, HEAD")
                    # http.client keeps one socket while the server keeps it open.
                    first_sock = first_sock or conn.sock
                    assert conn.sock is first_sock
        srv.stop(signal.SIGINT)


@pytest.mark.rule("HTTP-12", "HTTP-13")
@pytest.mark.wire("http")
def test_pipelined_hello_world_requests_each_get_an_answer(server: Server) -> None:
    """The seed's page: GET / answers Hello World, once per request, however
    many arrive in one write."""
    with server.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 20)
        rf = s.makefile("rb")
        for _ in range(20):
            r = read_response(rf)
            assert (r.status, r.body) == (200, HELLO)


@pytest.mark.rule("HTTP-13", "HTTP-11")
@pytest.mark.wire("http", "http:pages", "http:post-echo", "http:keep-alive")
def test_pipelined_requests_in_one_write_answered_in_order(server: Server) -> None:
    payload = os.urandom(3000)
    with server.connect() as s:
        s.sendall(
            b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3000\r\n\r\n" + payload +
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        rf = s.makefile("rb")
        first = read_response(rf)
        assert b"Hello from evio" in first.body
        assert read_response(rf).body == payload
        head = read_response(rf, head=True)
        assert head.headers["content-length"] == str(len(HELLO))
        # HEAD has no body: the next bytes are the next response's status line.
        assert read_response(rf).body == HELLO
        # Then the same requests byte by byte: the order still holds.
        for byte in b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n":
            s.send(bytes([byte]))
        assert read_response(rf).status == 404
        assert read_response(rf).body == HELLO


@pytest.mark.rule("HTTP-8", "HTTP-11", "HTTP-13")
@pytest.mark.wire("http", "http:keep-alive")
def test_http_1_0_close_and_keep_alive(server: Server) -> None:
    class HTTP10Connection(http.client.HTTPConnection):
        _http_vsn = 10
        _http_vsn_str = "HTTP/1.0"

    conn = HTTP10Connection("127.0.0.1", server.port, timeout=TIMEOUT)
    with contextlib.closing(conn):
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == HELLO
        assert r.getheader("Connection") == "close" and r.will_close
    # HTTP/1.0 with Connection: keep-alive stays open.
    with server.connect() as s:
        rf = s.makefile("rb")
        for _ in range(2):
            s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r2 = read_response(rf)
            assert r2.body == HELLO and r2.headers["connection"] == "keep-alive"
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_response(rf).headers["connection"] == "close"
        assert closes(rf)


@pytest.mark.rule("HTTP-13", "HTTP-8")
@pytest.mark.wire("http")
def test_connection_close_closes_after_the_answer(server: Server) -> None:
    with server.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                  b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n")  # never answered
        rf = s.makefile("rb")
        r = read_response(rf)
        assert r.body == HELLO and r.headers["connection"] == "close"
        assert closes(rf)


@pytest.mark.rule("HTTP-14", "HTTP-2")
@pytest.mark.wire("http")
def test_malformed_request_line_is_400_then_close(server: Server) -> None:
    r = refused(server, b"GARBAGE\r\n\r\n", 400)
    assert b"request line" in r.body


@pytest.mark.rule("HTTP-14", "HTTP-13")
@pytest.mark.wire("http")
def test_answers_before_an_error_come_first(server: Server) -> None:
    with server.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n")  # no Host
        rf = s.makefile("rb")
        assert read_response(rf).body == HELLO
        r = read_response(rf)
        assert r.status == 400 and r.headers["connection"] == "close"
        assert b"Host" in r.body
        assert closes(rf)


@pytest.mark.rule("HTTP-14", "HTTP-4")
@pytest.mark.wire("http")
def test_20_kib_header_is_431_then_close(server: Server) -> None:
    refused(server, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * (20 * KiB) + b"\r\n\r\n", 431)


@pytest.mark.rule("HTTP-14", "HTTP-5")
@pytest.mark.wire("http")
def test_2_mib_body_is_413_then_close(server: Server) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (2 * MiB)
    refused(server, head, 413, body_after=os.urandom(2 * MiB))


@pytest.mark.rule("HTTP-14", "HTTP-6")
@pytest.mark.wire("http")
def test_chunked_is_501_then_close(server: Server) -> None:
    refused(server, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\n\r\n", 501)
    # http.client sends a body of unknown length chunked.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    with contextlib.closing(conn):
        # It writes the head and the chunks separately; the server may have
        # answered and closed in between. The answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", "/echo", body=iter([b"hello"]), encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 501 and r.will_close
        assert b"Transfer-Encoding" in r.read()


@pytest.mark.rule("HTTP-14", "HTTP-2")
@pytest.mark.wire("http")
def test_other_http_version_is_505_then_close(server: Server) -> None:
    refused(server, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505)


# ------------------------------------------------------------------ curl


@pytest.mark.rule("HTTP-18", "HTTP-13", "HTTP-12")
@pytest.mark.wire("http", "http:pages", "http:keep-alive")
def test_curl_reuses_the_connection(server: Server) -> None:
    curl = tool("curl")
    r = run([curl, "-sv", "--max-time", "10", server.url("/"), server.url("/index.html")])
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert re.search(r"re-using existing connection", err, re.IGNORECASE), err
    assert r.stdout.startswith(HELLO) and b"Hello from evio" in r.stdout


@pytest.mark.rule("HTTP-18", "HTTP-8")
@pytest.mark.wire("http")
def test_curl_http_1_0(server: Server) -> None:
    curl = tool("curl")
    r = run([curl, "-sv", "--http1.0", "--max-time", "10", server.url("/")])
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "> GET / HTTP/1.0" in err and "< Connection: close" in err, err
    assert r.stdout == HELLO


@pytest.mark.rule("HTTP-18", "HTTP-10", "HTTP-12")
@pytest.mark.wire("http", "http:post-echo")
@pytest.mark.parametrize("expect", [False, True])
def test_curl_posts_100_kib(server: Server, tmp_path: Path, expect: bool) -> None:
    curl = tool("curl")
    payload = os.urandom(100 * KiB)
    (tmp_path / "in.bin").write_bytes(payload)
    extra = ["-H", "Expect: 100-continue"] if expect else []
    started = time.monotonic()
    r = run([curl, "-sv", "--max-time", "10", "--expect100-timeout", "5", *extra,
             "--data-binary", f"@{tmp_path / 'in.bin'}", "-o", str(tmp_path / "out.bin"),
             server.url("/echo")])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.bin").read_bytes() == payload
    err = r.stderr.decode()
    if "Expect: 100-continue" in err:
        # Without the interim answer curl would wait the 5 s we gave it.
        assert "< HTTP/1.1 100 Continue" in err, err
        assert time.monotonic() - started < 4
    assert not expect or "< HTTP/1.1 100 Continue" in err


@pytest.mark.rule("HTTP-18", "HTTP-15")
@pytest.mark.wire("http", "http:tls", "http:pages")
def test_curl_https_verifies_the_printed_ca(server: Server) -> None:
    curl = tool("curl")
    assert server.ca is not None and Path(server.ca).is_file()
    r = run([curl, "-sv", "--max-time", "10", "--cacert", server.ca,
             server.tls_url("/"), server.tls_url("/index.html")])
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "SSL certificate verify ok" in err, err
    assert re.search(r"ALPN.*http/1\.1", err), err
    assert re.search(r"re-using existing connection", err, re.IGNORECASE), err
    assert r.stdout.startswith(HELLO) and b"Hello from evio" in r.stdout
    # Without the CA, verification fails: the certificate really is checked.
    bad = run([curl, "-s", "--max-time", "10", server.tls_url("/")])
    assert bad.returncode == 60, bad


@pytest.mark.rule("HTTP-18", "HTTP-16")
@pytest.mark.wire("http", "option:unixsocket", "http:pages")
def test_curl_over_the_unix_socket(server: Server) -> None:
    curl = tool("curl")
    assert server.unix is not None
    r = run([curl, "-s", "--max-time", "10", "--unix-socket", server.unix,
             "http://localhost/", "http://localhost/index.html"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(HELLO) and b"Hello from evio" in r.stdout


# ------------------------------------------------------------------- wrk


@pytest.mark.rule("HTTP-18", "HTTP-13", "HTTP-15")
@pytest.mark.wire("http")
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_wrk_gets_only_2xx(server: Server, scheme: str) -> None:
    if scheme == "https" and server.tlsport is None:
        wire.not_applicable("http:tls")
    wrk = tool("wrk")  # it does not verify certificates: the TLS run is about load only
    url = server.url("/") if scheme == "http" else server.tls_url("/")
    r = run([wrk, "-t1", "-c10", "-d1s", url], timeout=TIMEOUT)
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+\w+) read", out)
    assert m, out
    requests = int(m.group(1))
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    print(f"wrk {scheme}: {requests} requests in {m.group(2)}{m.group(3)}; "
          f"{rate.group(1) if rate else '?'} requests/s")
    assert requests > 0, out
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    assert errors is None or set(errors.groups()) == {"0"}, out
    assert "Non-2xx or 3xx responses" not in out, out


# -------------------------------------------------------------- chromium


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    exe = tool("chromium")
    return run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", *extra, url], timeout=CHROMIUM_TIMEOUT)


def spki_hash(pem: bytes) -> str:
    """base64(sha256(SubjectPublicKeyInfo)), as --ignore-certificate-errors-spki-list takes."""
    cert = x509.load_pem_x509_certificate(pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.mark.rule("HTTP-18", "HTTP-12", "HTTP-15")
@pytest.mark.wire("http", "http:tls", "http:pages")
def test_chromium_renders_index_over_http_and_https(server: Server, tmp_path: Path) -> None:
    r = chromium(server.url("/index.html"), tmp_path / "p1", "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    assert b"<title>evio</title>" in r.stdout and b"Hello from evio" in r.stdout, r.stdout

    # The certificate the TLS port really serves, pinned by its public key.
    assert server.tlsport is not None
    pem = ssl.get_server_certificate(("127.0.0.1", server.tlsport), timeout=TIMEOUT).encode()
    pin = spki_hash(pem)
    r = chromium(server.tls_url("/index.html"), tmp_path / "p2", "--dump-dom",
                 f"--ignore-certificate-errors-spki-list={pin}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert b"Hello from evio" in r.stdout, (r.stdout, r.stderr[-2000:])

    # Without the pin Chromium refuses the throwaway CA: TLS really was checked.
    r = chromium(server.tls_url("/index.html"), tmp_path / "p3", "--dump-dom")
    assert b"Hello from evio" not in r.stdout
    assert b"ERR_CERT" in r.stderr, r.stderr[-2000:]


@pytest.mark.rule("HTTP-18", "HTTP-12")
@pytest.mark.wire("http", "http:pages")
def test_chromium_screenshot(server: Server, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    r = chromium(server.url("/index.html"), tmp_path / "profile",
                 f"--screenshot={shot}", "--window-size=800,600")
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.is_file(), r.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (800, 600)
    # A blank 800x600 page compresses to about 2 KiB; text makes it larger.
    assert len(png) > 4000, len(png)


# ------------------------------------------------- start-up and shut-down


@pytest.mark.feature("examples")
@pytest.mark.rule("HTTP-16", "HTTP-17", "HTTP-15")
def test_command_line_start_up_and_shut_down(tmp_path: Path) -> None:
    help_ = run([sys.executable, str(SERVER), "--help"])
    assert help_.returncode == 0
    for flag in (b"--host", b"--port", b"--tlsport", b"--no-tls", b"--tlscert", b"--tlskey",
                 b"--unixsocket", b"--poller"):
        assert flag in help_.stdout, flag

    sock = tmp_path / "s.sock"
    with http_server(tmp_path / "a", "--no-tls", "--unixsocket", str(sock)) as srv:
        addrs = re.findall(r"\('127\.0\.0\.1', \d+\)", srv.lines[0])
        assert len(addrs) == 1 and str(sock) in srv.lines[0]
        assert srv.port != 0 and sock.exists()
        with srv.connect() as s:  # an idle keep-alive connection does not delay the stop
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            rf = s.makefile("rb")
            read_response(rf)
            started = time.monotonic()
            srv.stop(signal.SIGTERM)
            assert time.monotonic() - started < 2
            assert closes(rf)
        assert not sock.exists()

    with http_server(tmp_path / "b") as srv:  # the throwaway certificate
        assert srv.ca is not None and Path(srv.ca).is_file()
        assert any("throwaway certificate" in line for line in srv.lines)
        srv.stop(signal.SIGINT)
        assert not Path(srv.ca).exists()  # removed with the server

    bad = run([sys.executable, str(SERVER), "--port", "0", "--tlsport", "0",
               "--tlscert", str(tmp_path / "missing.pem")])
    assert bad.returncode == 1 and b"cannot load the TLS certificate" in bad.stderr

    with tempfile.TemporaryDirectory() as d, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, str(SERVER), "--port", str(port), "--no-tls"],
                              capture_output=True, timeout=TIMEOUT, cwd=d)
        assert busy.returncode == 1 and b"http server:" in busy.stderr, busy
