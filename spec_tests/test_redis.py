"""The Redis clone (``examples/redis_server.py``) and its RESP parser.

Two halves:

* ``resp.py`` is sans-I/O, so it is tested directly: tables of inputs and
  Redis's answers to them, and Hypothesis for the properties (any split of
  any pipeline parses the same; no input makes it raise anything but
  ``ProtocolError`` or hold more than its limit).
* The server is started as a user starts it, a process on port 0, and
  talked to with the real clients -- redis-py, ``redis-cli`` and
  ``redis-benchmark`` -- and with raw sockets for what no polite client
  sends. ``redis-cli`` and ``redis-benchmark`` come from Debian's
  ``redis-tools``; a test that needs them fails (it does not skip) when
  they are missing.

Every server is stopped with SIGTERM at the end and must exit 0 without a
traceback or a callback error on stderr: a callback that raised would
otherwise pass unnoticed, since evio turns it into a closed connection.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import pty
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import wire
from harness import POLLERS, Lines, in_thread, recv_exactly, required_program, unanswered_listener
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import resp  # noqa: E402

TIMEOUT = 30.0  # any one socket operation, and starting or stopping a process
MiB = 1 << 20
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 seconds: close() sends a reset


# ================================================================ parser


def parse_all(*chunks: bytes, **limits: int) -> list[list[bytes]]:
    """Feed ``chunks`` one by one, taking every complete command after each."""
    p = resp.Parser(**limits)
    out: list[list[bytes]] = []
    for chunk in chunks:
        p.feed(chunk)
        out.extend(p.commands())
    return out


def protocol_error(data: bytes, **limits: int) -> str:
    """The message of the ProtocolError that ``data`` raises."""
    with pytest.raises(resp.ProtocolError) as e:
        parse_all(data, **limits)
    return str(e.value)


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("REDIS-1")
@pytest.mark.parametrize("data,commands", [
    (b"*1\r\n$4\r\nPING\r\n", [[b"PING"]]),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na\r\nb\x00\r\n", [[b"SET", b"k", b"a\r\nb\x00"]]),
    (b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", [[b"ECHO", b""]]),
    (b"PING\r\n", [[b"PING"]]),
    (b"PING\n", [[b"PING"]]),
    (b"  set \t k   v  \r\n", [[b"set", b"k", b"v"]]),
    (b"echo \"a b\" 'c d'\r\n", [[b"echo", b"a b", b"c d"]]),
    (b'echo "\\x41\\x7a\\n\\r\\t\\b\\a\\q\\"\\\\"\n', [[b"echo", b"Az\n\r\t\b\aq\"\\"]]),
    (b"echo 'it\\'s' 'a\\nb'\n", [[b"echo", b"it's", b"a\\nb"]]),
    (b'echo ""\n', [[b"echo", b""]]),
    (b'ab"c d" e\n', [[b"abc d", b"e"]]),  # a quote may open mid-word
    (b"a\x0bb c\n", [[b"a\x0bb", b"c"]]),  # \v separates words only between them, as in Redis
    (b"\r\n\n   \r\n*0\r\n*-1\r\nPING\r\n", [[b"PING"]]),  # nothing before PING is a request
    (b"*2\r\n$4\r\nECHO\r\n$1\r\n*\r\n*1\r\n$4\r\nPING\r\nPING\r\n",
     [[b"ECHO", b"*"], [b"PING"], [b"PING"]]),
])
def test_parser_reads_multibulk_and_inline_requests(data: bytes,
                                                    commands: list[list[bytes]]) -> None:
    assert parse_all(data) == commands
    assert parse_all(*[data[i:i + 1] for i in range(len(data))]) == commands


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("REDIS-1", "REDIS-3")
def test_inline_quotes_are_checked_like_sdssplitargs() -> None:
    assert resp.split_inline(b"") == []
    assert resp.split_inline(b" a  b ") == [b"a", b"b"]
    assert resp.split_inline(b'"a" "b"') == [b"a", b"b"]
    assert resp.split_inline(b'"\\x4"') == [b"x4"]  # not two hex digits: \x is x
    for bad in [b'"a', b"'a", b'"a"b', b"'a'b", b'"a\\"', b'echo "a b\\"']:
        with pytest.raises(resp.ProtocolError, match=r"^Protocol error: unbalanced quotes"):
            resp.split_inline(bad)


def _word(draw: st.DrawFn, word: bytes, first: bool) -> bytes:
    """One word of an inline command, quoted when it has to be (or at random)."""
    plain = bool(word) and not (first and word.startswith(b"*")) and not any(
        b in b" \t\r\n\x0b\x0c\"'" for b in word)
    if plain and not draw(st.booleans()):
        return word
    if b"'" not in word and b"\\" not in word and b"\n" not in word and b"\r" not in word \
            and draw(st.booleans()):
        return b"'" + word + b"'"
    return b'"' + b"".join(b"\\x%02x" % b for b in word) + b'"'


@st.composite
def pipelines(draw: st.DrawFn) -> tuple[bytes, list[list[bytes]]]:
    """A pipeline of requests in both shapes, and the commands it holds."""
    commands = draw(st.lists(
        st.lists(st.binary(max_size=30), min_size=1, max_size=6), min_size=1, max_size=10))
    wire = b""
    for command in commands:
        if draw(st.booleans()):
            wire += resp.encode_command(*command)
        else:
            words = [_word(draw, w, i == 0) for i, w in enumerate(command)]
            wire += b" ".join(words) + draw(st.sampled_from([b"\r\n", b"\n"]))
        if draw(st.integers(0, 5)) == 0:
            wire += draw(st.sampled_from([b"\r\n", b"\n", b" \n", b"*0\r\n", b"*-1\r\n"]))
    return wire, commands


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("REDIS-2")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipeline=pipelines(), data=st.data())
def test_any_split_of_any_pipeline_gives_the_same_commands(
        pipeline: tuple[bytes, list[list[bytes]]], data: st.DataObject) -> None:
    wire, commands = pipeline
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert parse_all(*pieces) == commands


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("REDIS-3")
@pytest.mark.parametrize("data,message", [
    (b"*x\r\n", "Protocol error: invalid multibulk length"),
    (b"*\r\n", "Protocol error: invalid multibulk length"),
    (b"*01\r\n", "Protocol error: invalid multibulk length"),
    (b"*+1\r\n", "Protocol error: invalid multibulk length"),
    (b"*-0\r\n", "Protocol error: invalid multibulk length"),
    (b"*1\n$4\r\nPING\r\n", "Protocol error: invalid multibulk length"),
    (b"*1 \r\n", "Protocol error: invalid multibulk length"),
    (b"*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
    (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
    (b"*1\r\n$04\r\nPING\r\n", "Protocol error: invalid bulk length"),
    (b"*2\r\nfoo\r\n", "Protocol error: expected '$', got 'f'"),
    (b"*1\r\n\xff", "Protocol error: expected '$', got '\\xff'"),
    (b"*1\r\n\r\n", "Protocol error: expected '$', got '\\x0d'"),
    (b"set \"a b\r\n", "Protocol error: unbalanced quotes in request"),
    (b"ping 'a'b\r\n", "Protocol error: unbalanced quotes in request"),
    (b"x" * (64 * 1024 + 1), "Protocol error: too big inline request"),
    (b"*1\r\n$4\r\nPINGxx", "Protocol error: expected '\\r\\n' after bulk string"),
    # A count line that can no longer become a number is refused at once.
    (b"*12a", "Protocol error: invalid multibulk length"),
    (b"*1\r\n$" + b"9" * 21, "Protocol error: invalid bulk length"),
])
def test_malformed_input_gets_redis_wording(data: bytes, message: str) -> None:
    assert protocol_error(data) == message
    # The same bytes one at a time fail the same way.
    with pytest.raises(resp.ProtocolError) as e:
        parse_all(*[data[i:i + 1] for i in range(len(data))])
    assert str(e.value) == message


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("REDIS-3")
def test_an_incomplete_count_line_waits() -> None:
    for partial in [b"*", b"*1", b"*-", b"*12\r", b"*1\r\n$", b"*1\r\n$4\r", b"*1\r\n$4\r\nPI"]:
        assert parse_all(partial) == []


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("REDIS-4")
@pytest.mark.parametrize("data,message", [
    (b"*999999999999\r\n", "Protocol error: invalid multibulk length"),
    (b"*9999999999999999999\r\n", "Protocol error: invalid multibulk length"),
    (b"*1048577\r\n", "Protocol error: invalid multibulk length"),
    (b"*1\r\n$99999999999\r\n", "Protocol error: invalid bulk length"),
    (b"*1\r\n$536870913\r\n", "Protocol error: invalid bulk length"),
    (b"*1\r\n$1073741824\r\n", "Protocol error: invalid bulk length"),
    # Within Redis's 512 MiB but past our 64 MiB: refused from the header.
    (b"*1\r\n$536870912\r\n", "Protocol error: request larger than 67108864 bytes"),
    (b"*2\r\n$3\r\nSET\r\n$67108860\r\n", "Protocol error: request larger than 67108864 bytes"),
])
def test_huge_declared_lengths_are_refused_without_allocating(data: bytes, message: str) -> None:
    tracemalloc.start()
    try:
        assert protocol_error(data) == message
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"parsing {data!r} allocated {peak} bytes"


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("REDIS-4")
def test_limits_at_their_edges() -> None:
    p = resp.Parser()
    p.feed(b"*1048576\r\n$1\r\nx\r\n")
    assert p.next_command() is None  # the most arguments Redis takes: waits for the rest
    assert p.buffered == len(b"*1048576\r\n$1\r\nx\r\n")
    # max_buffer counts the whole unfinished request, header included.
    head = b"*1\r\n$90\r\n"
    assert parse_all(head + b"x" * 90 + b"\r\n", max_buffer=len(head) + 92) == [[b"x" * 90]]
    assert protocol_error(head, max_buffer=len(head) + 91) == \
        f"Protocol error: request larger than {len(head) + 91} bytes"
    # Many small arguments add up too, and so does unparsed inline input.
    many = b"*100\r\n" + b"$1\r\nx\r\n" * 60
    assert protocol_error(many, max_buffer=300) == "Protocol error: request larger than 300 bytes"
    assert protocol_error(b"y" * 301, max_buffer=300) == \
        "Protocol error: request larger than 300 bytes"
    with pytest.raises(ValueError):
        resp.Parser(max_buffer=0)


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("REDIS-4")
def test_a_large_value_split_across_reads_is_kept_once() -> None:
    value = os.urandom(3 * MiB + 7)
    wire = resp.encode_command("SET", "k", value) + resp.encode_command("GET", "k")
    pieces = [wire[i:i + 65536] for i in range(0, len(wire), 65536)]
    p = resp.Parser(max_buffer=4 * MiB)
    got: list[list[bytes]] = []
    for piece in pieces:
        p.feed(piece)
        got.extend(p.commands())
        assert p.buffered <= 4 * MiB
    assert got == [[b"SET", b"k", value], [b"GET", b"k"]]


_FRAGMENTS = [b"*", b"$", b"\r\n", b"\r", b"\n", b"0", b"1", b"3", b"-1", b"999999999999",
              b"PING", b" ", b'"', b"'", b"\\x4", b"\\", b"\x00", b"\xff", b"x" * 100]


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("REDIS-4", "REDIS-5")
@settings(max_examples=400, deadline=None)
@given(chunks=st.lists(
    st.one_of(st.binary(max_size=80),
              st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map(b"".join)),
    max_size=25))
def test_no_input_raises_anything_but_protocol_error(chunks: list[bytes]) -> None:
    limit = 256
    p = resp.Parser(max_buffer=limit, max_args=50, max_bulk=200)
    for chunk in chunks:
        try:
            p.feed(chunk)
            for command in p.commands():
                assert command and all(isinstance(w, bytes) for w in command)
        except resp.ProtocolError as e:
            assert str(e).startswith("Protocol error: ")
            assert p.buffered == 0  # the input is let go
            # Final: every later call raises the same error.
            for call in (lambda: p.feed(b"PING\r\n"), p.next_command):
                with pytest.raises(resp.ProtocolError) as again:
                    call()
                assert again.value is e
            return
        assert p.buffered <= limit


@pytest.mark.impl_detail  # the example's parser, in-process
@pytest.mark.rule("REDIS-6")
def test_encoders() -> None:
    assert resp.simple("PONG") == b"+PONG\r\n"
    with pytest.raises(ValueError):
        resp.simple("a\r\nb")
    assert resp.error("ERR a\r\nb\nc") == b"-ERR a  b c\r\n"
    assert resp.error(b"ERR \xff") == b"-ERR \xff\r\n"
    assert resp.integer(-42) == b":-42\r\n"
    assert resp.bulk(b"a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert resp.bulk(b"") == b"$0\r\n\r\n"
    assert resp.bulk(None) == resp.NIL == b"$-1\r\n"
    assert resp.array([]) == b"*0\r\n"
    assert resp.array([resp.integer(1), resp.array([resp.bulk(b"x")])]) == \
        b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n"
    pair = [(resp.bulk(b"k"), resp.integer(1))]
    assert resp.mapping(pair, resp3=True) == b"%1\r\n$1\r\nk\r\n:1\r\n"
    assert resp.mapping(pair, resp3=False) == b"*2\r\n$1\r\nk\r\n:1\r\n"
    assert resp.NULL == b"_\r\n"
    assert resp.encode_command("SET", b"k", 7) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n7\r\n"
    assert resp.parse_integer(b"-12") == -12
    assert resp.parse_integer(b"9223372036854775808") is None
    assert resp.parse_integer(b"+1") is None


# ================================================================ server


@dataclass
class Server:
    """A running ``redis_server.py`` process."""

    proc: subprocess.Popen[Any]
    port: int
    unix: str | None
    banner: str
    clients: list[Any] = field(default_factory=list)
    target: wire.Running | None = None  # a wire target (docs/spec/wire-targets.md)

    def client(self, unix: bool = False, **kwargs: Any) -> redis.Redis:
        if unix:
            assert self.unix is not None
            r = redis.Redis(unix_socket_path=self.unix, socket_timeout=TIMEOUT, **kwargs)
        else:
            r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=TIMEOUT, **kwargs)
        self.clients.append(r)
        return r

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        self.clients.append(s)
        return s

    def assert_alive(self) -> None:
        """The process runs and a fresh client is answered."""
        assert self.proc.poll() is None, "the server process died"
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as s:
            s.sendall(b"PING\r\n")
            assert recv_exactly(s, 7) == b"+PONG\r\n"


@contextlib.contextmanager
def redis_server(*args: str, unix: Path | None = None, stop: bool = True) -> Iterator[Server]:
    """Run ``redis_server.py --port 0 ARGS`` for the block.

    On the way out the server gets SIGTERM (unless ``stop`` is false or it
    has already exited) and must exit 0, saying it stopped, with nothing
    on stderr that shows a callback raised.
    """
    if wire.external("redis"):
        with redis_target(args, unix, stop) as target:
            yield target
        return
    extra = ["--unixsocket", str(unix)] if unix is not None else []
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "redis_server.py"), "--port", "0",
         *extra, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    server = None
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        banner = proc.stdout.readline() if ready else ""
        m = re.fullmatch(r"redis server listening on \('127\.0\.0\.1', (\d+)\)(, .*)? "
                         r"\(poller: \w+\)\n", banner)
        if m is None:
            proc.kill()
            _, err = proc.communicate(timeout=TIMEOUT)
            raise AssertionError(f"redis_server.py did not start: {banner!r} {err!r}")
        server = Server(proc, int(m.group(1)), str(unix) if unix else None, banner)
        yield server
        if stop:
            stop_server(server)
    finally:
        if server is not None:
            for c in server.clients:
                c.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)


@contextlib.contextmanager
def redis_target(args: tuple[str, ...], unix: Path | None, stop: bool) -> Iterator[Server]:
    """`redis_server` for a wire target: the example's ``--flag value`` pairs
    become options the manifest maps (or the test is not applicable)."""
    options: dict[str, str | None] = {a[2:]: v for a, v in zip(args[0::2], args[1::2],
                                                                strict=True)}
    if "poller" in options:
        wire.once_per_poller("redis", str(options["poller"]), POLLERS)
    if unix is not None:
        options["unixsocket"] = str(unix)
    with tempfile.TemporaryDirectory(prefix="evio-redis-") as tmp, \
            wire.launch("redis", Path(tmp), options, stop=False) as running:
        server = Server(running.proc, running.port, str(unix) if unix else None, "",
                        target=running)
        try:
            yield server
            if stop:
                stop_server(server)
        finally:
            for c in server.clients:
                c.close()


def stop_server(server: Server, sig: int | None = signal.SIGTERM) -> tuple[str, str]:
    """Signal the server (``sig=None``: it is stopping by itself); expect exit
    0 and a clean stderr. Returns (stdout, stderr). A wire target need only
    exit (WIRE-3)."""
    if server.target is not None:
        wire.terminate(server.target, signal.SIGTERM if sig is None else sig)
        return server.target.output()
    if sig is not None:
        server.proc.send_signal(sig)
    out, err = server.proc.communicate(timeout=TIMEOUT)
    assert server.proc.returncode == 0, err
    assert "redis server stopped" in out, out
    assert "Traceback" not in err and "raised" not in err, err
    return out, err


def tool(name: str) -> str:
    """The path of a redis-tools program; fail (never skip) without it."""
    return required_program(name, "the redis example's real-client tests", "redis-tools")


def cli(*args: str) -> str:
    """Run ``redis-cli ARGS``; return its stdout, stripped."""
    done = subprocess.run([tool("redis-cli"), *args], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def exchange(s: socket.socket, request: bytes, reply: bytes) -> None:
    """Send ``request``; expect exactly ``reply`` back."""
    s.sendall(request)
    assert recv_exactly(s, len(reply)) == reply


def expect_end(s: socket.socket) -> bytes:
    """Read to the end of the stream; a reset counts as the end.

    (A server that closes while the client is still sending resets the
    connection, but what it sent before is still read first.)
    """
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(1 << 20):
            got += chunk
    return got


# ------------------------------------------------------ real clients


@pytest.mark.rule("REDIS-2", "REDIS-7", "REDIS-8", "REDIS-12")
@pytest.mark.wire("redis", "redis:real-clients", "redis:hello", "redis:exists", "redis:config",
                  "redis:command")
@pytest.mark.parametrize("transport", ["tcp", "unix"])
@pytest.mark.parametrize("poller", POLLERS)
def test_redis_py_commands_and_a_pipeline_of_1000(poller: str, transport: str,
                                                  tmp_path: Path) -> None:
    with redis_server("--poller", poller, unix=tmp_path / "redis.sock") as server:
        for protocol in (3, 2):  # redis-py's default (HELLO 3), then plain RESP2
            r = server.client(unix=transport == "unix", protocol=protocol)
            assert r.ping() is True
            assert r.echo("hello world") == b"hello world"
            assert r.echo(b"\x00\xff\r\n") == b"\x00\xff\r\n"
            assert r.set("key", b"\x00\r\nvalue\xff") is True
            assert r.get("key") == b"\x00\r\nvalue\xff"
            assert r.get("missing") is None
            assert r.set(b"\xfe\x00", b"") is True
            assert r.get(b"\xfe\x00") == b""
            assert r.exists("key", "key", "missing") == 2
            assert r.delete("key", "key", "missing", b"\xfe\x00") == 2
            assert r.exists("key") == 0

            pipe = r.pipeline(transaction=False)
            for i in range(500):
                pipe.set(f"k{i}", f"v{i}" * (i % 7))
                pipe.get(f"k{i}")
            results = pipe.execute()
            assert len(results) == 1000
            assert results[0::2] == [True] * 500
            assert results[1::2] == [f"v{i}".encode() * (i % 7) for i in range(500)]
            assert r.exists(*[f"k{i}" for i in range(500)]) == 500
            assert r.flushdb() is True
            assert r.exists(*[f"k{i}" for i in range(500)]) == 0

            assert r.config_get("save") == {"save": ""}
            assert r.config_get("*") == {"save": "", "appendonly": "no"}
            # redis-py leaves execute_command unannotated.
            assert r.execute_command("COMMAND DOCS") in ([], {})  # type: ignore[no-untyped-call]
            assert r.command_count() == len(r.command_list())
            assert b"wget" in r.command_list()
            # redis-py leaves execute_command unannotated.
            hello = r.execute_command("HELLO", protocol)  # type: ignore[no-untyped-call]
            if protocol == 2:  # a flat array of pairs
                hello = dict(zip(hello[0::2], hello[1::2], strict=True))
            assert hello[b"proto"] == protocol
            r.close()


@pytest.mark.rule("REDIS-7", "REDIS-8", "REDIS-9", "REDIS-12")
@pytest.mark.wire("redis", "redis:real-clients", "redis:exists", "redis:command")
def test_redis_cli_one_shot_commands(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    with redis_server(unix=sock) as server:
        p = ["-p", str(server.port)]
        assert cli(*p, "ping") == "PONG"
        assert cli(*p, "PING", "hello") == "hello"
        assert cli(*p, "set", "a", "b") == "OK"
        assert cli(*p, "get", "a") == "b"
        assert cli(*p, "exists", "a", "a", "c") == "2"
        assert cli(*p, "del", "a", "b", "c") == "1"
        assert cli(*p, "get", "a") == ""
        assert cli(*p, "foo", "a", "b") == \
            "ERR unknown command 'foo', with args beginning with: 'a' 'b'"
        assert cli(*p, "FOO") == "ERR unknown command 'FOO', with args beginning with:"
        assert cli(*p, "get") == "ERR wrong number of arguments for 'get' command"
        assert cli("-s", str(sock), "ping") == "PONG"
        assert cli("-s", str(sock), "set", "via", "unix") == "OK"
        assert cli(*p, "get", "via") == "unix"  # one keyspace behind both listeners
        assert cli(*p, "command", "count") == str(len(cli(*p, "command", "list").split()))


@pytest.mark.rule("REDIS-12")
@pytest.mark.wire("redis", "redis:real-clients")
def test_redis_cli_interactive_session() -> None:
    """Interactive redis-cli (it sends COMMAND DOCS as it starts) works."""
    path = tool("redis-cli")
    with redis_server() as server:
        pid, fd = pty.fork()
        if pid == 0:  # the child: redis-cli on a terminal (a dumb one: no escapes)
            try:
                os.execve(path, [path, "-p", str(server.port)], {**os.environ, "TERM": "dumb"})
            finally:
                os._exit(127)  # never return into pytest
        out = b""
        try:
            def until(text: bytes) -> None:
                nonlocal out
                end = time.monotonic() + TIMEOUT
                while text not in out:
                    assert time.monotonic() < end, f"redis-cli never printed {text!r}: {out!r}"
                    ready, _, _ = select.select([fd], [], [], 0.1)
                    if ready:
                        out += os.read(fd, 4096)

            prompt = f"127.0.0.1:{server.port}> ".encode()
            until(prompt)
            for line, answer in [(b"set k v", b"OK"), (b"get k", b'"v"'),
                                 (b"nosuch x", b"(error) ERR unknown command 'nosuch', "
                                               b"with args beginning with: 'x'")]:
                out = b""
                os.write(fd, line + b"\n")
                until(answer)
                until(prompt)
            os.write(fd, b"quit\n")
            end = time.monotonic() + TIMEOUT
            while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0):
                assert time.monotonic() < end, "redis-cli did not quit"
                time.sleep(0.01)
            assert os.WIFEXITED(waited[1]) and os.WEXITSTATUS(waited[1]) == 0
        finally:
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            os.close(fd)


@pytest.mark.rule("REDIS-2", "REDIS-12")
@pytest.mark.wire("redis", "redis:real-clients", "redis:config")
@pytest.mark.parametrize("pipeline", [1, 16])
def test_redis_benchmark_completes_without_errors(pipeline: int) -> None:
    with redis_server() as server:
        done = subprocess.run(
            [tool("redis-benchmark"), "-p", str(server.port), "-t", "ping_inline,set,get",
             "-n", "2000", "-c", "10", "-q", "-P", str(pipeline)],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        output = done.stdout + done.stderr
        assert "rror" not in output, output  # "Error from server", "ERROR:"
        rates = dict(re.findall(r"(PING_INLINE|SET|GET): ([0-9.]+) requests per second",
                                output))
        assert set(rates) == {"PING_INLINE", "SET", "GET"}, output
        assert all(float(v) > 0 for v in rates.values()), rates
        print(f"redis-benchmark -P {pipeline}: " +
              ", ".join(f"{k} {float(v):,.0f}/s" for k, v in rates.items()))
        # Its SETs really landed: the key it uses, with a 3-byte value.
        assert len(server.client().get("key:__rand_int__") or b"") == 3
        # Without -q it reads the server's CONFIG first, and shows it.
        done = subprocess.run(
            [tool("redis-benchmark"), "-p", str(server.port), "-t", "ping_inline",
             "-n", "100", "-c", "1"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "rror" not in done.stdout + done.stderr
        assert 'host configuration "appendonly": no' in done.stdout


# -------------------------------------------------- wording and framing


@pytest.mark.rule("REDIS-9")
@pytest.mark.wire("redis", "redis:exists", "redis:command", "redis:config", "redis:hello")
def test_error_replies_are_worded_as_redis_words_them() -> None:
    name = b"N" * 200
    long_args = [b"x" * 100, b"y" * 100, b"z"]
    cases = [
        (b"foo a b\r\n", b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n"),
        (resp.encode_command("FOO"), b"-ERR unknown command 'FOO', with args beginning with: \r\n"),
        (resp.encode_command(name, "a"),
         b"-ERR unknown command '" + b"N" * 128 + b"', with args beginning with: 'a' \r\n"),
        (resp.encode_command("foo", *long_args),
         b"-ERR unknown command 'foo', with args beginning with: '" + b"x" * 100 + b"' '"
         + b"y" * 25 + b"' \r\n"),
        (resp.encode_command("foo", "a\r\nb"),
         b"-ERR unknown command 'foo', with args beginning with: 'a  b' \r\n"),
        (resp.encode_command(""), b"-ERR unknown command '', with args beginning with: \r\n"),
        (b"GET\r\n", b"-ERR wrong number of arguments for 'get' command\r\n"),
        (b"get a b\r\n", b"-ERR wrong number of arguments for 'get' command\r\n"),
        (b"set a\r\n", b"-ERR wrong number of arguments for 'set' command\r\n"),
        (b"ping a b\r\n", b"-ERR wrong number of arguments for 'ping' command\r\n"),
        (b"echo\r\n", b"-ERR wrong number of arguments for 'echo' command\r\n"),
        (b"del\r\n", b"-ERR wrong number of arguments for 'del' command\r\n"),
        (b"exists\r\n", b"-ERR wrong number of arguments for 'exists' command\r\n"),
        (b"command count x\r\n",
         b"-ERR wrong number of arguments for 'command|count' command\r\n"),
        (b"config get\r\n", b"-ERR wrong number of arguments for 'config|get' command\r\n"),
        (b"config foo\r\n", b"-ERR unknown subcommand 'foo'. Try CONFIG HELP.\r\n"),
        (b"command foo\r\n", b"-ERR unknown subcommand 'foo'. Try COMMAND HELP.\r\n"),
        (b"set a b c\r\n", b"-ERR syntax error\r\n"),
        (b"flushdb x\r\n", b"-ERR syntax error\r\n"),
        (b"shutdown x\r\n", b"-ERR syntax error\r\n"),
        (b"hello x\r\n", b"-ERR Protocol version is not an integer or out of range\r\n"),
        (b"hello 4\r\n", b"-NOPROTO unsupported protocol version\r\n"),
        (b"hello 3 foo\r\n", b"-ERR Syntax error in HELLO option 'foo'\r\n"),
    ]
    with redis_server() as server:
        s = server.connect()
        for request, reply in cases:
            exchange(s, request, reply)
        exchange(s, b"PING\r\n", b"+PONG\r\n")  # errors never end the connection


def _hello_reply(proto: int) -> bytes:
    """A regex for HELLO's reply: a map in RESP3, a flat array in RESP2."""
    fields = [(b"server", b"$5\r\nredis\r\n"), (b"version", b"$5\r\n7.0.0\r\n"),
              (b"proto", b":%d\r\n" % proto), (b"id", None),
              (b"mode", b"$10\r\nstandalone\r\n"), (b"role", b"$6\r\nmaster\r\n"),
              (b"modules", b"*0\r\n")]
    head = b"%7\r\n" if proto == 3 else b"*14\r\n"
    return re.escape(head) + b"".join(
        re.escape(b"$%d\r\n%s\r\n" % (len(k), k)) + (re.escape(v) if v else rb":\d+\r\n")
        for k, v in fields)


@pytest.mark.rule("REDIS-2", "REDIS-7", "REDIS-12")
@pytest.mark.wire("redis", "redis:hello", "redis:config", "redis:command")
def test_one_byte_at_a_time_and_resp3_replies() -> None:
    sent = (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\nget k\r\nGET missing\n"
            b"HELLO 3\r\nGET missing\r\nconfig get app*\r\ncommand info get x\r\n"
            b"HELLO 2\r\nGET missing\r\nPING\r\n")
    expected = (re.escape(b"+OK\r\n$2\r\nv1\r\n$-1\r\n") + _hello_reply(3)
                + re.escape(b"_\r\n%1\r\n$10\r\nappendonly\r\n$2\r\nno\r\n*2\r\n_\r\n_\r\n")
                + _hello_reply(2) + re.escape(b"$-1\r\n+PONG\r\n"))
    with redis_server() as server:
        s = server.connect()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(sent)):
            s.send(sent[i:i + 1])
        got = b""
        while not got.endswith(b"+PONG\r\n"):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        assert re.fullmatch(expected, got), got


@pytest.mark.rule("REDIS-12")
@pytest.mark.wire("redis", "redis:command", "redis:config", "redis:hello")
def test_the_commands_clients_send_on_their_own() -> None:
    names = [b"ping", b"echo", b"set", b"get", b"del", b"exists", b"flushdb", b"quit",
             b"shutdown", b"command", b"config", b"hello", b"wget", b"multi", b"exec",
             b"discard", b"client", b"select", b"info"]
    count = b":%d\r\n" % len(names)
    with redis_server() as server:
        s = server.connect()
        for request, reply in [
            (b"COMMAND\r\n", b"*0\r\n"),
            (b"command docs\r\n", b"*0\r\n"),
            (b"COMMAND DOCS get set\r\n", b"*0\r\n"),
            (b"COMMAND COUNT\r\n", count),
            (b"COMMAND LIST\r\n", resp.array(resp.bulk(n) for n in names)),
            (b"COMMAND INFO\r\n", b"*0\r\n"),
            (b"COMMAND INFO get nosuch\r\n", b"*2\r\n$-1\r\n$-1\r\n"),
            (b"CONFIG GET save\r\n", b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            (b"CONFIG GET nosuch\r\n", b"*0\r\n"),
            (b"CONFIG GET SAVE *only\r\n",
             b"*4\r\n$4\r\nsave\r\n$0\r\n\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"),
            (b"HELLO 3 AUTH default secret SETNAME me\r\nGET nosuch\r\nHELLO 2\r\nGET nosuch\r\n",
             None),
        ]:
            if reply is not None:
                exchange(s, request, reply)
                continue
            s.sendall(request)
            got = b""
            while not got.endswith(b"*0\r\n$-1\r\n"):
                chunk = s.recv(65536)
                assert chunk, got
                got += chunk
            assert re.fullmatch(_hello_reply(3) + re.escape(b"_\r\n") + _hello_reply(2)
                                + re.escape(b"$-1\r\n"), got), got
        s.sendall(b"COMMAND HELP\r\nCONFIG HELP\r\nPING\r\n")
        lines = Lines(s, b"\r\n")
        for _ in range(2):
            n = int(lines.next()[1:])
            assert all(lines.next().startswith(b"+") for _ in range(n))
        assert lines.next() == b"+PONG\r\n"


@pytest.mark.rule("REDIS-10")
@pytest.mark.wire("redis", "redis:exists")
def test_quit_answers_ok_then_closes() -> None:
    with redis_server() as server:
        s = server.connect()
        s.sendall(b"PING\r\nQUIT\r\nSET after quit\r\n")
        assert expect_end(s) == b"+PONG\r\n+OK\r\n"
        assert server.client().exists("after") == 0


@pytest.mark.rule("REDIS-13", "REDIS-3")
@pytest.mark.wire("redis", "redis:inline")
@pytest.mark.parametrize("poller", POLLERS)
def test_a_protocol_error_is_answered_then_the_connection_closes(poller: str) -> None:
    cases = [  # what follows the bad bytes is never run
        (b"*x\r\nPING\r\n", b"invalid multibulk length"),
        (b"*2\r\nfoo\r\nPING\r\n", b"expected '$', got 'f'"),
        (b"*1\r\n$x\r\nPING\r\n", b"invalid bulk length"),
        (b"set \"a b\r\nPING\r\n", b"unbalanced quotes in request"),
        (b"*1\r\n$4\r\nPINGxxPING\r\n", b"expected '\\r\\n' after bulk string"),
        (b"x" * 70000, b"too big inline request"),
    ]
    with redis_server("--poller", poller) as server:
        for bad, message in cases:
            s = server.connect()
            other = server.connect()
            exchange(other, b"SET other 1\r\n", b"+OK\r\n")
            s.sendall(b"PING\r\nSET a b\r\n" + bad)
            assert expect_end(s) == b"+PONG\r\n+OK\r\n-ERR Protocol error: " + message + b"\r\n"
            exchange(other, b"GET a\r\n", b"$1\r\nb\r\n")  # the other client is untouched
        server.assert_alive()


@pytest.mark.rule("REDIS-7")
@pytest.mark.wire("redis")
def test_the_seed_ping_and_echo_over_a_raw_socket() -> None:
    """The seed's PING and ECHO, as any port of its Redis example has them."""
    with redis_server() as server:
        s = server.connect()
        exchange(s, b"PING\r\n", b"+PONG\r\n")
        exchange(s, resp.encode_command("ping"), b"+PONG\r\n")
        exchange(s, resp.encode_command("ECHO", b"a\r\nb"), b"$4\r\na\r\nb\r\n")


@pytest.mark.rule("REDIS-8")
@pytest.mark.wire("redis")
def test_the_seed_keyspace_commands_over_a_raw_socket() -> None:
    """The seed's SET, GET, DEL (several keys) and FLUSHDB."""
    with redis_server() as server:
        s = server.connect()
        for request, reply in [
            (resp.encode_command("SET", "a", "1") + resp.encode_command("SET", "b", "2")
             + resp.encode_command("SET", "c", "3"), b"+OK\r\n" * 3),
            (resp.encode_command("GET", "b"), b"$1\r\n2\r\n"),
            (resp.encode_command("GET", "nosuch"), b"$-1\r\n"),
            (resp.encode_command("DEL", "a", "b", "nosuch"), b":2\r\n"),
            (resp.encode_command("GET", "a") + resp.encode_command("GET", "b")
             + resp.encode_command("GET", "c"), b"$-1\r\n$-1\r\n$1\r\n3\r\n"),
            (resp.encode_command("FLUSHDB"), b"+OK\r\n"),
            (resp.encode_command("GET", "c"), b"$-1\r\n"),
        ]:
            exchange(s, request, reply)


@pytest.mark.rule("REDIS-10")
@pytest.mark.wire("redis")
def test_the_seed_quit_over_a_raw_socket() -> None:
    """QUIT answers +OK and closes; what follows it in the same write is not run."""
    with redis_server() as server:
        s = server.connect()
        s.sendall(resp.encode_command("QUIT") + resp.encode_command("SET", "after", "quit"))
        assert expect_end(s) == b"+OK\r\n"
        s = server.connect()
        exchange(s, resp.encode_command("GET", "after"), b"$-1\r\n")


@pytest.mark.rule("REDIS-13", "REDIS-14")
@pytest.mark.wire("redis")
@pytest.mark.parametrize("length", [b"-7", b"-2", b"-1"])
def test_a_negative_bulk_length_is_a_protocol_error(length: bytes) -> None:
    """Only a reply may hold the nil bulk string: in a request any negative
    length is refused, and the server lives on."""
    with redis_server() as server:
        s = server.connect()
        s.sendall(b"PING\r\n*1\r\n$" + length + b"\r\nPING\r\n")
        assert expect_end(s) == b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
        server.assert_alive()


# ------------------------------------------------------ hostile input


@pytest.mark.rule("REDIS-14", "REDIS-2")
@pytest.mark.wire("redis")
@pytest.mark.parametrize("poller", POLLERS)
def test_hostile_clients_never_stop_the_server(poller: str) -> None:
    rng = random.Random(1234)
    with redis_server("--poller", poller) as server:
        bystander = server.connect()
        exchange(bystander, b"SET keep me\r\n", b"+OK\r\n")

        # Garbage: answered and/or closed, never hung.
        for _ in range(20):
            s = server.connect()
            s.sendall(rng.randbytes(rng.randrange(1, 8192)))
            s.shutdown(socket.SHUT_WR)
            expect_end(s)
            s.close()

        # Truncated requests, then the client vanishes (one with a reset).
        for partial in [b"*3\r\n$3\r\nSET\r\n$1\r\na", b"*3\r\n$3\r\nSET", b"*", b"PIN",
                        b"*2\r\n$3\r\nGET\r\n$60000000\r\n" + b"x" * MiB]:
            s = server.connect()
            s.sendall(partial)
            if partial.startswith(b"PIN"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            s.close()

        # A bulk length of 1 GB: refused from its header, then the client leaves.
        s = server.connect()
        s.sendall(b"*2\r\n$3\r\nGET\r\n$1073741824\r\n")
        assert expect_end(s) == b"-ERR Protocol error: invalid bulk length\r\n"
        s = server.connect()
        s.sendall(b"*2\r\n$3\r\nGET\r\n$1073741824\r\n")
        s.close()

        # 10,000 pipelined commands in one write, answered in order.
        s = server.connect()
        request = b"".join(
            resp.encode_command("SET", f"p{i}", f"v{i}") if i % 2 == 0 else
            f"GET p{i - 1}\r\n".encode() for i in range(10_000))
        expected = b"".join(
            b"+OK\r\n" if i % 2 == 0 else resp.bulk(f"v{i - 1}".encode())
            for i in range(10_000))
        join = in_thread(lambda: s.sendall(request))
        assert recv_exactly(s, len(expected)) == expected
        join()

        # A client that leaves while a large reply is still being written.
        exchange(s, resp.encode_command("SET", "big", b"b" * MiB), b"+OK\r\n")
        s.sendall(b"GET big\r\n" * 40)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        s.close()

        exchange(bystander, b"GET keep\r\n", b"$2\r\nme\r\n")
        server.assert_alive()


@pytest.mark.rule("REDIS-15", "REDIS-4")
@pytest.mark.wire("redis")
def test_max_buffer_bounds_one_clients_input() -> None:
    limit = MiB
    with redis_server("--max-buffer", str(limit)) as server:
        # A value that fits, sent in pieces.
        value = os.urandom(limit - 100)
        s = server.connect()
        exchange(s, resp.encode_command("SET", "k", value), b"+OK\r\n")
        exchange(s, b"GET k\r\n", resp.bulk(value))
        # A header that would pass the limit is refused before its bytes come.
        s = server.connect()
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$" + str(limit).encode() + b"\r\n")
        assert expect_end(s) == \
            f"-ERR Protocol error: request larger than {limit} bytes\r\n".encode()
        # Inline input with no end piles up to the inline limit only.
        s = server.connect()
        s.sendall(b"y" * 70000)
        assert expect_end(s) == b"-ERR Protocol error: too big inline request\r\n"
        server.assert_alive()


# ---------------------------------------------------------------- WGET


class _Web:
    """A threaded HTTP server on 127.0.0.1:0 answering every GET with ``body``."""

    def __init__(self, body: bytes) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append((self.requestline, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> _Web:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(TIMEOUT)


@contextlib.contextmanager
def silent_listener() -> Iterator[socket.socket]:
    """A listener that never accepts: connects complete, nobody answers."""
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(16)
        yield lst


@pytest.mark.rule("REDIS-16", "REDIS-18")
@pytest.mark.wire("redis", "redis:wget")
def test_wget_returns_the_whole_response() -> None:
    body = os.urandom(300_000)  # many reads on the way in
    with _Web(body) as web, redis_server() as server:
        r = server.client()
        for host in ("127.0.0.1", "localhost"):
            # redis-py leaves execute_command unannotated.
            got = r.execute_command("WGET", f"{host}:{web.port}", 5)  # type: ignore[no-untyped-call]
            head, _, got_body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200 OK\r\n")
            assert b"Content-Length: 300000" in head
            assert got_body == body
        assert web.requests == [("GET / HTTP/1.0", {})] * 2
        # Commands behind a WGET wait for it: replies stay in order.
        s = server.connect()
        s.sendall(f"WGET 127.0.0.1:{web.port} 5\r\nSET after 1\r\nGET after\r\n".encode())
        reply = recv_exactly(s, len(got) + len(b"$%d\r\n\r\n" % len(got)) + 12)
        assert reply.endswith(b"\r\n+OK\r\n$1\r\n1\r\n")
        assert reply.startswith(b"$%d\r\nHTTP/1.0 200 OK" % len(got))


@pytest.mark.rule("REDIS-20", "REDIS-2")
@pytest.mark.wire("redis", "redis:half-close")
@pytest.mark.parametrize(("count", "size"), [(10, 100), (1000, 1000), (200, 100_000)])
def test_a_client_that_ends_its_stream_gets_every_reply(count: int, size: int) -> None:
    # Enough replies, unread, to stop the pipeline at the high-water mark:
    # the commands behind it must still run after the client's end of stream.
    value = os.urandom(size)
    one = b"$%d\r\n%s\r\n" % (size, value)
    with redis_server() as server:
        s = server.connect()
        exchange(s, resp.encode_command("SET", "k", value), b"+OK\r\n")
        s.sendall(b"GET k\r\n" * count + b"PING\r\n*2\r\n$3\r\nGET")  # the last unfinished
        s.shutdown(socket.SHUT_WR)
        assert expect_end(s) == one * count + b"+PONG\r\n"
        server.assert_alive()


@pytest.mark.rule("REDIS-17")
@pytest.mark.wire("redis", "redis:wget")
def test_wget_errors() -> None:
    with socket.socket() as reserved, socket.socket(socket.AF_INET6) as reserved6, \
            redis_server() as server:
        reserved.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        refused = reserved.getsockname()[1]
        reserved6.bind(("::1", 0))
        refused6 = reserved6.getsockname()[1]
        s = server.connect()
        for request, reply in [
            (f"WGET [::1]:{refused6} 5", f"-ERR WGET [::1]:{refused6}: Connection refused"),
            (f"WGET 127.0.0.1:{refused} 5",
             f"-ERR WGET 127.0.0.1:{refused}: Connection refused"),
            ("WGET 127.0.0.1:80 abc", "-ERR timeout is not a float or out of range"),
            ("WGET 127.0.0.1:80 0", "-ERR timeout is not a float or out of range"),
            ("WGET 127.0.0.1:80 -1", "-ERR timeout is not a float or out of range"),
            ("WGET 127.0.0.1:80 inf", "-ERR timeout is not a float or out of range"),
            ("WGET 127.0.0.1:80 nan", "-ERR timeout is not a float or out of range"),
            ("WGET nowhere 1", "-ERR WGET wants host:port, not 'nowhere'"),
            ("WGET :80 1", "-ERR WGET wants host:port, not ':80'"),
            ("WGET host:http 1", "-ERR WGET wants host:port, not 'host:http'"),
            ("WGET 127.0.0.1:0 1",
             "-ERR WGET 127.0.0.1:0: cannot dial \"tcp://127.0.0.1:0\": port 0 cannot be dialed"),
            ("WGET 127.0.0.1:1", "-ERR wrong number of arguments for 'wget' command"),
        ]:
            exchange(s, request.encode() + b"\r\n", reply.encode() + b"\r\n")


@pytest.mark.rule("REDIS-17")
@pytest.mark.wire("redis", "redis:wget")
def test_wget_refuses_a_response_that_is_too_long() -> None:
    with _Web(b"z" * (16 * MiB)) as web, redis_server() as server:
        s = server.connect()
        exchange(s, f"WGET 127.0.0.1:{web.port} 20\r\nPING\r\n".encode(),
                 f"-ERR WGET 127.0.0.1:{web.port}: response longer than 16777216 bytes\r\n"
                 "+PONG\r\n".encode())


@pytest.mark.rule("REDIS-17", "REDIS-18")
@pytest.mark.wire("redis", "redis:wget")
def test_wget_times_out_while_other_clients_are_served() -> None:
    with silent_listener() as lst, redis_server() as server:
        target = f"127.0.0.1:{lst.getsockname()[1]}"
        waiting = server.connect()
        started = time.monotonic()
        waiting.sendall(f"WGET {target} 1\r\nPING\r\n".encode())
        other = server.connect()
        pings = 0
        while time.monotonic() - started < 0.8:
            t = time.monotonic()
            exchange(other, b"PING\r\n", b"+PONG\r\n")
            assert time.monotonic() - t < 0.5  # not held up by the WGET
            pings += 1
            time.sleep(0.02)
        assert pings > 5
        expected = f"-ERR WGET {target}: timed out after 1 seconds\r\n+PONG\r\n".encode()
        assert recv_exactly(waiting, len(expected)) == expected
        assert 0.9 < time.monotonic() - started < 5


@pytest.mark.rule("REDIS-17")
@pytest.mark.wire("redis", "redis:wget")
def test_wget_to_a_full_backlog_times_out_in_the_connect() -> None:
    # Linux drops SYNs to a listener whose backlog is full: the connect hangs.
    with unanswered_listener() as (_, port), redis_server() as server:
        s = server.connect()
        started = time.monotonic()
        s.sendall(f"WGET 127.0.0.1:{port} 0.5\r\n".encode())
        reply = Lines(s, b"\r\n").next()
        # The dial's own timeout, or (if the tick gets there first) ours.
        assert re.fullmatch(rf"-ERR WGET 127\.0\.0\.1:{port}: (dial 'tcp://127\.0\.0\.1:"
                            rf"{port}' timed out|timed out after 0\.5 seconds)\r\n",
                            reply.decode()), reply
        assert 0.4 < time.monotonic() - started < 5


@pytest.mark.rule("REDIS-18", "REDIS-15")
@pytest.mark.wire("redis", "redis:wget")
def test_a_client_leaving_mid_wget_closes_the_fetch() -> None:
    with socket.socket() as lst, redis_server("--max-buffer", str(MiB)) as server:
        lst.bind(("127.0.0.1", 0))
        lst.listen(4)
        lst.settimeout(TIMEOUT)
        target = f"127.0.0.1:{lst.getsockname()[1]}"
        for how in ("leaves", "floods"):
            s = server.connect()
            s.sendall(f"WGET {target} 20\r\n".encode())
            upstream, _ = lst.accept()
            with upstream:
                upstream.settimeout(TIMEOUT)
                assert recv_exactly(upstream, 18) == b"GET / HTTP/1.0\r\n\r\n"
                if how == "leaves":
                    s.close()
                else:
                    # Input piling up behind the WGET passes --max-buffer: closed.
                    join = in_thread(functools.partial(_send_quietly, s,
                                                       b"PING\r\n" * (MiB // 5)))
                    assert expect_end(s) == \
                        f"-ERR Protocol error: request larger than {MiB} bytes\r\n".encode()
                    join()
                t = time.monotonic()
                assert expect_end(upstream) == b""  # the fetch's connection is closed
                assert time.monotonic() - t < 5
        server.assert_alive()


def _send_quietly(s: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        s.sendall(data)


# ----------------------------------------------------- running the server


@pytest.mark.rule("REDIS-11")
@pytest.mark.wire("redis")
def test_shutdown_stops_the_server_and_removes_the_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    with redis_server(unix=sock, stop=False) as server:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(TIMEOUT)
            s.connect(str(sock))
            bystander = server.connect()
            s.sendall(b"SET a b\r\nSHUTDOWN NOSAVE\r\nSET c d\r\n")
            assert expect_end(s) == b"+OK\r\n"  # SHUTDOWN itself answers nothing
            assert expect_end(bystander) == b""
        out, _ = stop_server(server, None)
        assert out.endswith("redis server stopped\n")
        assert not sock.exists()
    # redis-cli's SHUTDOWN works the same way.
    with redis_server(stop=False) as server:
        assert cli("-p", str(server.port), "shutdown") == ""
        stop_server(server, None)


@pytest.mark.feature("examples")
@pytest.mark.rule("REDIS-19")
def test_command_line_defaults_and_signals() -> None:
    script = str(ROOT / "examples" / "redis_server.py")
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert helped.returncode == 0
    for flag in ("--port", "--host", "--unixsocket", "--poller", "--max-buffer", "6380",
                 "127.0.0.1"):
        assert flag in helped.stdout, helped.stdout
    bad = subprocess.run([sys.executable, script, "--port", "70000"], capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert bad.returncode == 1 and "70000" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = subprocess.run([sys.executable, script, "--port", str(taken.getsockname()[1])],
                              capture_output=True, text=True, timeout=TIMEOUT)
    assert busy.returncode == 1 and busy.stderr.startswith("redis server: "), busy.stderr
    assert subprocess.run([sys.executable, script, "--max-buffer", "0"], capture_output=True,
                          timeout=TIMEOUT).returncode == 2

    with redis_server(stop=False) as server:
        assert server.banner.startswith("redis server listening on ('127.0.0.1', ")
        # Bound to 127.0.0.1 only: another loopback address is refused.
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.settimeout(TIMEOUT)
            s.connect(("127.0.0.2", server.port))
        server.assert_alive()
        stop_server(server, signal.SIGINT)


# ------------------------------------------- redis-py's defaults (REDIS-21/22)


@pytest.mark.feature("examples")  # it starts the Redis example
@pytest.mark.rule("REDIS-21", "REDIS-22")
@pytest.mark.parametrize("poller", POLLERS)
def test_redis_py_defaults_transactions_names_select_and_info(poller: str) -> None:
    with redis_server("--poller", poller) as server:
        for protocol in (3, 2):
            r = server.client(protocol=protocol, client_name="evio-test", db=0)
            assert r.client_getname() in ("evio-test", b"evio-test")
            assert isinstance(r.client_id(), int)
            pipe = r.pipeline()  # transaction=True: MULTI ... EXEC
            for i in range(200):
                pipe.set(f"t{i}", f"v{i}")
                pipe.get(f"t{i}")
            results = pipe.execute()
            assert results[0::2] == [True] * 200
            assert results[1::2] == [f"v{i}".encode() for i in range(200)]
            info = r.info()
            assert info["redis_mode"] == "standalone" and "redis_version" in info
            assert info["db0"]["keys"] == 200
            assert r.info("server")["redis_mode"] == "standalone"
            with pytest.raises(redis.ResponseError, match="DB index is out of range"):
                r.select(1)
            assert r.flushdb() is True
            r.close()


@pytest.mark.feature("examples")  # it starts the Redis example
@pytest.mark.rule("REDIS-21")
def test_multi_exec_discard_and_execabort_on_the_wire() -> None:
    with redis_server() as server:
        s = server.connect()
        exchange(s, b"EXEC\r\n", b"-ERR EXEC without MULTI\r\n")
        exchange(s, b"MULTI\r\nSET a 1\r\nGET a\r\nEXEC\r\n",
                 b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n$1\r\n1\r\n")
        exchange(s, b"MULTI\r\nSET b 2\r\nDISCARD\r\nGET b\r\n",
                 b"+OK\r\n+QUEUED\r\n+OK\r\n$-1\r\n")
        exchange(s, b"MULTI\r\nSET c\r\nNOPE\r\nMULTI\r\nWGET x:1 1\r\nSET c 3\r\n"
                    b"EXEC\r\nGET c\r\n",
                 b"+OK\r\n-ERR wrong number of arguments for 'set' command\r\n"
                 b"-ERR unknown command 'NOPE', with args beginning with: \r\n"
                 b"-ERR MULTI calls can not be nested\r\n"
                 b"-ERR WGET is not allowed in a transaction here\r\n+QUEUED\r\n"
                 b"-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n")
        # a transaction split across reads, a byte at a time
        for byte in b"MULTI\r\nSET d 4\r\nEXEC\r\n":
            s.sendall(bytes([byte]))
        expected = b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n"
        assert recv_exactly(s, len(expected)) == expected
        exchange(s, b"CLIENT NOPE\r\n", b"-ERR unknown subcommand 'NOPE'. Try CLIENT HELP.\r\n")
