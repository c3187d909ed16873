"""The example parsers' fast paths give the answers of straightforward ones.

``examples/resp.py`` reads every complete command of a read in one pass and
``examples/http11.py`` matches a whole head with one regular expression;
both hand whatever that does not cover to a slower, general reader.
``reference_parsers.py`` keeps the parsers as they were before the fast
paths: one step per call, one line at a time. Hypothesis feeds both the same
bytes -- arbitrary bytes, bytes built from protocol fragments, and valid
pipelines with a few bytes changed -- split at every byte boundary and at
random places, and demands the same transcript: after each read the same
commands or requests, the same bytes held (``buffered``), the same ``100
Continue``, and at the first error the same error.

For RESP it also takes the commands the way a server with flow control
would: a few at a time, leaving the rest in the parser, which must then
yield exactly what was left.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_parsers import HttpReference, RespReference

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import http11
import resp

# The examples' own parsers, run in-process: nothing here runs the
# implementation under test, so another target's run leaves it out.
pytestmark = pytest.mark.impl_detail

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EVERY_SPLIT_MAX = 400  # inputs up to this long are also split at every byte boundary


def splits(data: bytes) -> list[list[bytes]]:
    """``data`` whole, one byte at a time, and in two at every byte boundary."""
    ways = [[data], [data[i:i + 1] for i in range(len(data))]]
    if len(data) <= EVERY_SPLIT_MAX:
        ways += [[data[:k], data[k:]] for k in range(1, len(data))]
    return ways


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """Valid input with a few bytes replaced, inserted or deleted."""
    data = bytearray(draw(valid))
    noise = st.sampled_from(b"\r\n \t\"'\\*$:0123456789-x\x00\x0b\x0c\x7f\x80\xff")
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from(["replace", "insert", "delete"]))
        if what == "insert" or at == len(data):
            data[at:at] = bytes([draw(noise)])
        elif what == "replace":
            data[at] = draw(noise)
        else:
            del data[at]
    return bytes(data)


# ================================================================= RESP


def _word(plain: bool) -> st.SearchStrategy[bytes]:
    alphabet = b"abcPINGset019" if plain else b"ab \t\r\n\"'\\x0\x00\xff*$"
    return st.lists(st.sampled_from(alphabet), min_size=0 if not plain else 1,
                    max_size=6).map(bytes)


@st.composite
def resp_command(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["multibulk", "inline", "quoted", "empty"]))
    if shape == "multibulk":
        words = draw(st.lists(_word(plain=False), min_size=0, max_size=4))
        return resp.array(resp.bulk(w) for w in words)
    if shape == "empty":
        return draw(st.sampled_from([b"\r\n", b"\n", b"  \r\n", b"*0\r\n", b"*-1\r\n"]))
    words = draw(st.lists(_word(plain=True), min_size=1, max_size=4))
    if shape == "quoted":
        words = [b'"' + w.replace(b"a", b"\\x41") + b'"' if draw(st.booleans()) else
                 b"'" + w + b"'" for w in words]
    sep = draw(st.sampled_from([b" ", b"\t", b"  "]))
    return sep.join(words) + draw(st.sampled_from([b"\r\n", b"\n"]))


RESP_VALID = st.lists(resp_command(), min_size=1, max_size=6).map(b"".join)
# Reads of whole plain inline commands only, which have a path of their own.
RESP_INLINE = st.lists(
    st.one_of(st.tuples(st.lists(_word(plain=True), min_size=1, max_size=3),
                        st.sampled_from([b" ", b"\t", b"  "]),
                        st.sampled_from([b"\r\n", b"\n"]))
              .map(lambda t: t[1].join(t[0]) + t[2]),
              st.sampled_from([b"\r\n", b"\n", b"  \r\n"])),
    min_size=1, max_size=6).map(b"".join)
RESP_FRAGMENTS = [b"*", b"$", b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"3", b"-1", b"99",
                  b"PING", b" ", b'"', b"'", b"\\x4", b"\\", b"\x00", b"\xff", b"x" * 40]
RESP_ANY = st.one_of(
    st.binary(max_size=120),
    st.lists(st.sampled_from(RESP_FRAGMENTS), max_size=40).map(b"".join),
    mutated(RESP_VALID),
)
RESP_LIMITS = st.sampled_from([
    {}, {"max_buffer": 48}, {"max_buffer": 200, "max_args": 3, "max_bulk": 10},
])


def resp_reference(chunks: list[bytes], limits: dict[str, int]) -> list[Any]:
    p = RespReference(**limits)
    log: list[Any] = []
    for chunk in chunks:
        got: list[list[bytes]] = []
        try:
            p.feed(chunk)
            while (command := p.next_command()) is not None:
                got.append(command)
        except resp.ProtocolError as e:
            log.append((got, "error", str(e), p.buffered))
            return log
        log.append((got, p.buffered))
    return log


def resp_fast(chunks: list[bytes], limits: dict[str, int], take: int = 0,
              fused: bool = False) -> list[Any]:
    """The same through ``Parser.commands``; with ``take``, at most that many
    commands per pass, as a server pausing for flow control would."""
    p = resp.Parser(**limits)
    log: list[Any] = []
    for chunk in chunks:
        got: list[list[bytes]] = []
        try:
            if fused:
                batch = p.commands(chunk)
            else:
                p.feed(chunk)
                batch = p.commands()
            while True:
                n = 0
                for command in batch:
                    got.append(command)
                    n += 1
                    if n == take:
                        break
                if n < take or not take:
                    break
                batch = p.commands()
        except resp.ProtocolError as e:
            log.append((got, "error", str(e), p.buffered))
            return log
        log.append((got, p.buffered))
    return log


def check_resp(data: bytes, limits: dict[str, int]) -> None:
    for chunks in splits(data):
        expected = resp_reference(chunks, limits)
        assert resp_fast(chunks, limits) == expected, chunks
        assert resp_fast(chunks, limits, fused=True) == expected, chunks
    whole = resp_reference([data], limits)
    for take in (1, 2):
        assert resp_fast([data], limits, take=take) == whole
        assert resp_fast([data], limits, take=take, fused=True) == whole


@pytest.mark.rule("REDIS-2", "REDIS-3", "REDIS-4", "REDIS-5")
@PROPERTY
@given(data=RESP_ANY, limits=RESP_LIMITS)
def test_resp_fast_path_agrees_with_the_reference(data: bytes, limits: dict[str, int]) -> None:
    check_resp(data, limits)


@pytest.mark.rule("REDIS-1", "REDIS-2")
@PROPERTY
@given(data=RESP_VALID, limits=RESP_LIMITS)
def test_resp_fast_path_agrees_on_valid_pipelines(data: bytes, limits: dict[str, int]) -> None:
    check_resp(data, limits)


@pytest.mark.rule("REDIS-1", "REDIS-2")
@PROPERTY
@given(data=st.one_of(RESP_INLINE, mutated(RESP_INLINE)), limits=RESP_LIMITS)
def test_resp_fast_path_agrees_on_inline_commands(data: bytes, limits: dict[str, int]) -> None:
    check_resp(data, limits)


@pytest.mark.rule("REDIS-2", "REDIS-4")
@PROPERTY
@given(data=st.one_of(RESP_VALID, mutated(RESP_VALID)), cuts=st.lists(st.integers(0, 10**6)),
       limits=RESP_LIMITS, take=st.integers(0, 3))
def test_resp_any_chunking_and_any_pause(data: bytes, cuts: list[int],
                                         limits: dict[str, int], take: int) -> None:
    chunks = cut(data, cuts)
    assert resp_fast(chunks, limits, take=take) == resp_reference(chunks, limits)


@pytest.mark.rule("REDIS-2", "REDIS-4")
def test_resp_a_large_bulk_split_across_reads() -> None:
    value = bytes(range(256)) * 300
    data = resp.encode_command("SET", "k", value) + b"PING\r\n" + resp.encode_command("GET", "k")
    for size in (1000, 4096, 65536):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        for limits in ({}, {"max_buffer": 50_000}):
            assert resp_fast(chunks, limits) == resp_reference(chunks, limits)


# ================================================================= HTTP

_TCHAR = b"!#$%&'*+-.^_`|~09azAZ"
_VALUE = b"abc 019:/\t\x80\xff"


@st.composite
def http_request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"X-Y"]))
    target = draw(st.sampled_from([b"/", b"/index.html", b"/echo", b"/a?b=c", b"*",
                                   b"http://h/x"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    fields: list[bytes] = []
    if version == b"HTTP/1.1" or draw(st.booleans()):
        fields.append(b"Host: example.org")
    names = st.lists(st.sampled_from(_TCHAR), min_size=1, max_size=5).map(bytes)
    values = st.lists(st.sampled_from(_VALUE), max_size=8).map(bytes)
    for name, value in draw(st.lists(st.tuples(names, values), max_size=3)):
        fields.insert(draw(st.integers(0, len(fields))), name + b":" + value)
    body = draw(st.binary(max_size=12))
    if body or draw(st.booleans()):
        fields.append(b"Content-Length: %d" % len(body))
    fields += draw(st.lists(st.sampled_from([
        b"Connection: close", b"Connection: keep-alive", b"connection: Keep-Alive, x",
        b"Expect: 100-continue", b"Content-Length: %d" % len(body), b"Host: other",
        b"Transfer-Encoding: chunked"]), max_size=2))
    head = draw(st.sampled_from([b"", b"", b"\r\n"]))
    head += method + b" " + target + b" " + version + eol
    head += b"".join(f + eol for f in fields)
    return head + eol + body


HTTP_VALID = st.lists(http_request(), min_size=1, max_size=4).map(b"".join)


@st.composite
def http_repeated(draw: st.DrawFn) -> bytes:
    """A few requests sent over and over in some order (``a a b a``), each
    possibly with a byte changed, inserted or deleted: the parser reuses the
    last head it read when the next is byte for byte the same."""
    requests = draw(st.lists(http_request(), min_size=1, max_size=3))
    order = draw(st.lists(st.integers(0, len(requests) - 1), min_size=2, max_size=8))
    sent = [requests[i] for i in order]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(sent) - 1))
        sent[at] = draw(mutated(st.just(sent[at])))
    return b"".join(sent)


HTTP_REPEATED = http_repeated()
HTTP_FRAGMENTS = [b"GET", b"POST", b" ", b"/", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"\r\n",
                  b"\n", b"\r", b"Host: a", b"Content-Length: 3", b"Content-Length: 1, 1",
                  b"Transfer-Encoding: chunked", b"Connection: close", b"Expect: 100-continue",
                  b":", b"\t", b"\x00", b"\xff", b"abc"]
HTTP_ANY = st.one_of(
    st.binary(max_size=120),
    st.lists(st.sampled_from(HTTP_FRAGMENTS), max_size=40).map(b"".join),
    mutated(HTTP_VALID),
)
HTTP_LIMITS = st.sampled_from([{}, {"max_head": 64, "max_body": 8}, {"max_head": 40}])


def http_transcript(p: Any, chunks: list[bytes]) -> list[Any]:
    log: list[Any] = []
    for chunk in chunks:
        got: list[http11.Request] = []
        try:
            p.feed(chunk)
            while (r := p.next_request()) is not None:
                got.append(r)
        except http11.HTTPError as e:
            log.append((got, "error", e.status, e.detail, p.buffered))
            return log
        log.append((got, p.take_interim(), p.buffered))
    return log


def check_http(data: bytes, limits: dict[str, int]) -> None:
    for chunks in splits(data):
        expected = http_transcript(HttpReference(**limits), chunks)
        assert http_transcript(http11.RequestParser(**limits), chunks) == expected, chunks


@pytest.mark.rule("HTTP-1", "HTTP-2", "HTTP-3", "HTTP-4", "HTTP-9")
@PROPERTY
@given(data=HTTP_ANY, limits=HTTP_LIMITS)
def test_http_fast_path_agrees_with_the_reference(data: bytes, limits: dict[str, int]) -> None:
    check_http(data, limits)


@pytest.mark.rule("HTTP-1", "HTTP-5", "HTTP-6", "HTTP-7", "HTTP-8", "HTTP-10")
@PROPERTY
@given(data=HTTP_VALID, limits=HTTP_LIMITS)
def test_http_fast_path_agrees_on_valid_pipelines(data: bytes, limits: dict[str, int]) -> None:
    check_http(data, limits)


@pytest.mark.rule("HTTP-1", "HTTP-2", "HTTP-3", "HTTP-4", "HTTP-8")
@PROPERTY
@given(data=HTTP_REPEATED, limits=HTTP_LIMITS)
def test_http_repeated_heads_agree_with_the_reference(data: bytes,
                                                      limits: dict[str, int]) -> None:
    check_http(data, limits)


@pytest.mark.rule("HTTP-1")
def test_http_a_repeated_head_gives_the_same_request_each_time() -> None:
    head = b"GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
    near = head.replace(b"/a?b", b"/a?c")  # same length, one byte apart
    for chunks in ([head * 3], [head, head, near, head], [head, head[:-1], b"\r\n" + head],
                   [head + head[:9], head[9:] + near]):
        assert http_transcript(http11.RequestParser(), chunks) == \
            http_transcript(HttpReference(), chunks)


@pytest.mark.rule("HTTP-1")
@PROPERTY
@given(data=st.one_of(HTTP_VALID, mutated(HTTP_VALID), HTTP_REPEATED),
       cuts=st.lists(st.integers(0, 10**6)),
       limits=HTTP_LIMITS)
def test_http_any_chunking(data: bytes, cuts: list[int], limits: dict[str, int]) -> None:
    chunks = cut(data, cuts)
    assert http_transcript(http11.RequestParser(**limits), chunks) == \
        http_transcript(HttpReference(**limits), chunks)
