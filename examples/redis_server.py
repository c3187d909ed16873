"""Redis clone: a small key-value server that real Redis clients talk to.

It speaks RESP (see ``resp.py``, the parser it uses) and knows a dozen
commands, enough for ``redis-cli``, ``redis-benchmark`` and redis-py::

    python examples/redis_server.py                      # 127.0.0.1:6380
    python examples/redis_server.py --port 0 --unixsocket /tmp/redis.sock
    redis-cli -p 6380 set greeting hello

Commands: PING [msg], ECHO msg, SET key value, GET key, DEL key [key ...],
EXISTS key [key ...], FLUSHDB, QUIT, SHUTDOWN, MULTI / EXEC / DISCARD
(redis-py's default pipeline); what clients send on their own: HELLO (RESP2
and RESP3), COMMAND (COUNT, DOCS, INFO, LIST), CONFIG GET, CLIENT (SETNAME,
GETNAME, SETINFO, ID), SELECT 0, INFO; and ``WGET host:port timeout``, which
fetches ``http://host:port/`` with ``server.dial`` and answers with the
whole response.

How it fits evio's callbacks
----------------------------
Every callback runs on the loop's one thread, so the keyspace is a plain
dict and no command takes a lock. A read may hold half a command or a
hundred (pipelining): each connection has its own `resp.Parser`, fed in
``data``, and the replies to every complete command go back as one
``data`` reply, in order.

WGET is the command that cannot answer at once. It dials the web server
(``server.dial`` returns an id straight away; ``opened`` fires later), and
the client *waits*: its later commands stay in its parser, unparsed-but-
kept, so replies never overtake each other. The HTTP response arrives as
``data`` calls on the *dialed* connection and is collected there; when it
ends (``closed``), the answer is put on the client's record and the client
is woken with ``server.wake``. Its ``data(id, None)`` call returns the
answer, then goes on with the commands that queued up behind it. The same
mailbox-and-wake shape as ``proxy.py``, with no thread anywhere: a dial is
already asynchronous. A WGET's timeout is a loop timer
(``server.call_later``); when it fires, the client gets its error and the
dialed connection is closed with ``server.close``.

A client that ends its stream after its last command (``shutdown(SHUT_WR)``)
still gets every reply: ``eof`` keeps the connection open for writing
while commands wait behind unread replies, and ``_run`` closes it once
none is left (REDIS-20). An end of stream during a WGET is the client
leaving, as in Redis: its WGET is closed (REDIS-18).

Why one loop: the echo and HTTP examples take ``--loops N`` and run N
loops in N processes, but this server does not. Its keyspace is a dict in
one process's memory; a loop in another process could neither see a SET
made here nor change it, so clients would read different data depending
on which loop the kernel gave them. Sharing it would need a store outside
the loops (shared memory, a lock, a primary), which is exactly what evio's
one thread lets this server do without.

Memory
------
Per client: at most ``--max-buffer`` bytes (64 MiB) of an unfinished or
waiting request (a longer one is an error, then the client is closed);
the one request being run, once complete, exists up to three times for
that moment (the reads, the joined request, its arguments), so the server
as a whole holds at most two more ``--max-buffer`` beside its clients';
replies pending stop its pipeline at `HIGH_WATER` (64 KiB) plus one batch
(**REL-16**), and more than ``--max-output`` (256 MiB) pending closes it
(**REL-17**); a WGET keeps at most `MAX_RESPONSE` (16 MiB). A client idle
for ``--timeout`` seconds is closed, and so is one whose command has not
arrived whole ``--command-timeout`` seconds (30) after its first byte --
a client trickling a command a byte at a time is never idle (REDIS-23).
The number of clients is bounded by the process's descriptor limit
(``ulimit -n``). The keyspace is what
clients SET: like Redis without ``maxmemory``, it has no bound of its own.

Stop it with SHUTDOWN, Ctrl-C or SIGTERM: the loop shuts down cleanly,
closing every connection and removing the unix socket file.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeAlias

import resp

import evio

HTTP_REQUEST = b"GET / HTTP/1.0\r\n\r\n"
"""What WGET sends; HTTP/1.0, so the web server closes after its answer."""
MAX_RESPONSE = 16 * 1024 * 1024
"""The longest response WGET keeps; a longer one is an error."""
HIGH_WATER = 65536
"""Replies pending past which a client's pipelined commands wait (the
loop's own high-water mark, so ``drained`` follows)."""
DEFAULT_MAX_OUTPUT = 256 * 1024 * 1024
"""``--max-output``'s default: replies one client may have pending."""
DEFAULT_COMMAND_TIMEOUT = 30.0
"""``--command-timeout``'s default: seconds for a command to arrive whole."""

_NONE = evio.Action.NONE
_Reply: TypeAlias = evio.Reply


@dataclass(slots=True, eq=False)
class _Fetch:
    """A WGET in flight: the dialed connection and what it has received."""

    id: int  # the dialed connection
    client: int  # who is waiting
    target: str  # host:port as the client wrote it, for messages
    timeout: float
    timer: evio.Timer | None = None  # fires at the deadline; cancelled once answered
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    done: bool = False  # answered (or abandoned): the connection only has to close


@dataclass(slots=True, eq=False)
class _Client:
    """One client connection."""

    id: int
    parser: resp.Parser
    fetch: _Fetch | None = None  # the WGET it waits for; its commands wait too
    answer: bytes = b""  # that WGET's reply, put here before the wake
    action: evio.Action = evio.Action.NONE  # QUIT or SHUTDOWN ends the batch
    resp3: bool = False  # the client said HELLO 3
    null: bytes = resp.NIL  # "no value" in the client's protocol
    held: bool = False  # too many replies pending: commands wait for drained()
    ended: bool = False  # it ended its stream: answer what it sent, then close
    timer: evio.Timer | None = None  # a command started and not finished (REDIS-23)
    late: bool = False  # that timer fired: data(id, None) answers and closes
    multi: list[tuple[_Command, list[bytes]]] | None = None  # MULTI's queue, until EXEC
    multi_size: int = 0  # bytes of arguments queued
    multi_failed: bool = False  # a queued command was refused: EXEC answers EXECABORT
    name: bytes = b""  # CLIENT SETNAME


@dataclass(frozen=True, slots=True)
class _Command:
    """One command: its name as Redis writes it in errors, and its arity.

    ``arity`` follows Redis: ``n`` means exactly ``n`` words, the name
    included; ``-n`` means at least ``n``.
    """

    name: str
    arity: int
    run: Callable[[RedisClone, _Client, list[bytes]], bytes]
    ends_batch: bool = False  # may make the client wait or close: look before the next


class RedisClone:
    """The server's state and its evio callbacks.

    Args:
        max_buffer: Most bytes one client may have buffered in a request
            that is not finished (`resp.Parser`'s ``max_buffer``).
        timeout: Seconds of silence after which a client is closed (Redis's
            ``timeout``); ``None``: never.
        max_output: Most bytes of replies one client may have pending
            (Redis's ``client-output-buffer-limit``); past it the client
            is closed. ``None``: no limit.
        command_timeout: Seconds a command may take to arrive whole once
            its first byte has; then the client gets an error and is
            closed. ``None``: no bound.
    """

    def __init__(self, max_buffer: int = resp.DEFAULT_MAX_BUFFER, timeout: float | None = None,
                 max_output: int | None = DEFAULT_MAX_OUTPUT,
                 command_timeout: float | None = DEFAULT_COMMAND_TIMEOUT) -> None:
        self.max_buffer = max_buffer
        self.timeout = timeout
        self.command_timeout = command_timeout
        self.max_output = max_output
        self.db: dict[bytes, bytes] = {}
        self.clients: dict[int, _Client] = {}
        self.fetches: dict[int, _Fetch] = {}  # by the dialed connection's id
        self.server: evio.Server | None = None

    def events(self) -> evio.Events:
        return evio.Events(serving=self.serving, opened=self.opened, data=self.data,
                           closed=self.closed, drained=self.drained,
                           eof=self.eof)

    # ------------------------------------------------------------ callbacks

    def serving(self, server: evio.Server) -> None:
        self.server = server  # kept for dial and wake
        where = ", ".join(str(a) for a in server.addrs)
        print(f"redis server listening on {where} (poller: {server.poller})", flush=True)

    def opened(self, id: int, info: evio.Info) -> evio.OpenedReply:
        if info.addr_index >= 0:
            self.clients[id] = _Client(id, resp.Parser(max_buffer=self.max_buffer))
            # Plain bytes, not the loop's reusable buffer: a plain connection
            # takes the loop's fast read path (LOOP-28), cheaper than a view.
            return evio.Options(idle_timeout=self.timeout, max_pending=self.max_output)
        # A WGET's connection. If it failed, closed(id, err) follows.
        f = self.fetches[id]
        if info.closing:
            return None
        if f.done:
            return evio.Action.CLOSE  # timed out, or its client left, while connecting
        return HTTP_REQUEST

    def data(self, id: int, data: memoryview | bytes | None) -> _Reply:
        c = self.clients.get(id)
        if c is None:
            return self._fetched(self.fetches[id], data)
        if c.fetch is not None or c.held:
            # Waiting for a WGET or for replies to drain: keep the input,
            # but not without bound.
            if data is not None:
                c.parser.feed(data)
                if c.parser.buffered > self.max_buffer:
                    message = f"ERR Protocol error: request larger than {self.max_buffer} bytes"
                    return resp.error(message), evio.Action.CLOSE
            return None
        if data is None and c.late:
            message = f"ERR command not received whole within {self.command_timeout:g} seconds"
            return resp.error(message), evio.Action.CLOSE
        reply = self._run(c, data)
        if self.command_timeout is not None:
            self._follow(c, reply is not None)
        return reply

    def _follow(self, c: _Client, answered: bool) -> None:
        """REDIS-23: time the command the client has started, if any.

        Set when bytes of an unfinished command are held, kept while it
        stays unfinished, restarted when a command was answered, cancelled
        when nothing is held.
        """
        if not c.parser.buffered:
            if c.timer is not None:
                c.timer.cancel()
                c.timer = None
        elif c.timer is None or answered:
            if c.timer is not None:
                c.timer.cancel()
            self._arm(c)

    def _arm(self, c: _Client) -> None:
        assert self.server is not None and self.command_timeout is not None
        c.timer = self.server.call_later(self.command_timeout, lambda: self._too_slow(c),
                                         id=c.id)

    def _too_slow(self, c: _Client) -> None:
        assert self.server is not None
        c.timer = None
        if c.fetch is not None or c.held or self.server.paused(c.id):
            # It waits for us (a WGET, or replies it has not read): the rest
            # of its command may be in the kernel, unread. Not its fault.
            self._arm(c)
            return
        c.late = True
        self._wake(c.id)  # its data(id, None) answers the error and closes

    def closed(self, id: int, err: BaseException | None) -> None:
        c = self.clients.pop(id, None)
        if c is not None:
            f = c.fetch
            if f is not None and not f.done:
                f.done = True  # nobody waits for it now: close it
                self._stop_fetch(f)
            return
        f = self.fetches.pop(id)
        if f.done:
            return
        if err is not None:
            self._answer(f, f"{_reason(err)}")
        else:
            self._answer(f, resp.bulk(b"".join(f.chunks)))

    def eof(self, id: int) -> _Reply:
        # The peer ended its stream (a client's shutdown(SHUT_WR), or a WGET's
        # web server done sending). A client still gets a reply to every
        # command it sent: the connection stays open for writing while its
        # commands wait behind unread replies, and `_run` closes it once none
        # is left. During a WGET an end of stream is leaving (REDIS-18): the
        # connection finishes, and closed() closes the WGET's.
        c = self.clients.get(id)
        if c is None or c.fetch is not None:
            return evio.Action.CLOSE  # for a WGET's connection: closed() answers
        c.ended = True
        if c.held:
            return None  # drained() goes on
        return self._run(c)

    def drained(self, id: int) -> _Reply:
        # The client read its replies down to the low-water mark: go on
        # with the commands that waited.
        c = self.clients.get(id)
        if c is None or not c.held:
            return None
        c.held = False
        return self._run(c)

    # ------------------------------------------------------------- clients

    def _run(self, c: _Client, data: memoryview | bytes | None = None) -> _Reply:  # noqa: C901 -- the command loop: each branch is a reason to stop
        """Run the client's complete commands, in order, until it must wait.

        The hot path of the server: the parser reads every complete command
        of the batch in one pass, and each is looked up, checked for arity
        and run here, without a call per command in between. Replies go out
        as one write. A command that makes the client wait (WGET) or ends
        the batch (QUIT, SHUTDOWN) stops it; the commands after it stay in
        the parser, unparsed.

        A client that pipelines commands without reading their replies
        waits too: once a batch of replies passes `HIGH_WATER` bytes, the
        rest of its commands stay in the parser and the client is woken to
        go on; if by then its replies are still pending above the mark, it
        waits for ``drained``. So one client's pipeline of large replies
        cannot fill memory or hold the loop. (On a read the check is not
        needed: the loop reads a connection only while its pending output
        is at most the same mark.)
        """
        out = []
        more = False  # commands left for the next turn
        if c.answer:
            out.append(c.answer)
            c.answer = b""
        if data is None:
            assert self.server is not None
            if self.server.pending(c.id) > HIGH_WATER:
                c.held = True  # over the loop's high-water mark: drained() follows
                return b"".join(out) or None
        if c.fetch is None:
            size = 0
            try:
                while True:
                    if c.multi is not None:  # inside MULTI: queue until EXEC (REDIS-21)
                        self._transaction(c, data, out)
                        data = None
                        if c.multi is not None:
                            break  # EXEC has not arrived yet
                    for argv in c.parser.commands(data):
                        if len(argv) == 1 and (reply := _CONSTANT.get(argv[0])) is not None:
                            out.append(reply)  # PING: the reply is prebuilt
                            continue
                        command = _BY_NAME.get(argv[0])  # PING, ping: no lower() needed
                        if command is None:
                            name = argv[0]  # no case-folded copy of a name no command has
                            command = COMMANDS.get(name.lower()) if len(name) <= 16 else None
                            if command is None:
                                out.append(_unknown_command(argv))
                                continue
                        n, arity = len(argv), command.arity
                        if (arity > 0 and n != arity) or n < -arity:
                            out.append(_wrong_arguments(command.name))
                            continue
                        reply = command.run(self, c, argv)
                        out.append(reply)
                        if command.ends_batch and (c.fetch is not None or c.action is not _NONE
                                                   or c.multi is not None):
                            break
                        size += len(reply)
                        if size > HIGH_WATER:
                            self._wake(c.id)  # the rest next turn, once these are written
                            more = True
                            break
                    else:
                        break  # every complete command is answered
                    data = None  # fed already
                    if c.multi is None:
                        break  # a WGET, QUIT or SHUTDOWN, or the high-water mark
            except resp.ProtocolError as e:
                # Like Redis: answer the commands before it, then the error, then close.
                # The parser keeps ``e``; its traceback would keep this frame's
                # replies while the connection flushes (REL-20).
                e.__traceback__ = None
                out.append(resp.error(f"ERR {e}"))
                return b"".join(out), evio.Action.CLOSE
        if c.action is not _NONE:
            return b"".join(out), c.action
        if c.ended and not more and c.fetch is None:
            return b"".join(out) or None, evio.Action.CLOSE  # every command answered
        if len(out) == 1:
            return out[0] or None
        return b"".join(out) or None

    # -------------------------------------------------------- transactions

    def _transaction(self, c: _Client, data: memoryview | bytes | None, out: list[bytes]) -> None:
        """Inside MULTI: queue each command (``+QUEUED``) until EXEC or DISCARD.

        As Redis does: a command refused while queuing (unknown, wrong
        arity, one that cannot run in a transaction here) is answered with
        its error and makes EXEC answer EXECABORT; EXEC runs the queue at
        once, in order, and answers with the array of their replies. The
        queue is bounded by ``max_buffer`` bytes of arguments.
        """
        assert c.multi is not None
        for argv in c.parser.commands(data):
            name = argv[0].lower() if len(argv[0]) <= 16 else b""
            if name == b"exec" or name == b"discard":
                if len(argv) != 1:
                    out.append(_wrong_arguments(name.decode()))
                    c.multi_failed = True
                    continue
                queued, failed = c.multi, c.multi_failed
                c.multi, c.multi_size, c.multi_failed = None, 0, False
                if name == b"discard":
                    out.append(resp.OK)
                elif failed:
                    out.append(resp.error("EXECABORT Transaction discarded because of "
                                          "previous errors."))
                else:
                    replies = [command.run(self, c, args) for command, args in queued]
                    out.append(b"*%d\r\n" % len(replies) + b"".join(replies))
                return
            command = COMMANDS.get(name)
            n = len(argv)
            if command is None:
                out.append(_unknown_command(argv))
            elif (command.arity > 0 and n != command.arity) or n < -command.arity:
                out.append(_wrong_arguments(command.name))
            elif command.ends_batch or name == b"multi":
                out.append(resp.error(f"ERR {command.name.upper()} is not allowed in a "
                                      f"transaction here" if name != b"multi"
                                      else "ERR MULTI calls can not be nested"))
            elif c.multi_size + sum(map(len, argv)) > self.max_buffer:
                out.append(resp.error(f"ERR transaction larger than {self.max_buffer} bytes"))
            else:
                c.multi.append((command, argv))
                c.multi_size += sum(map(len, argv))
                out.append(b"+QUEUED\r\n")
                continue
            c.multi_failed = True

    # REDIS-21
    def multi(self, c: _Client, argv: list[bytes]) -> bytes:
        c.multi, c.multi_size, c.multi_failed = [], 0, False
        return resp.OK

    def exec_(self, c: _Client, argv: list[bytes]) -> bytes:
        return resp.error("ERR EXEC without MULTI")

    def discard(self, c: _Client, argv: list[bytes]) -> bytes:
        return resp.error("ERR DISCARD without MULTI")

    # ------------------------------------------------ what clients send first

    # REDIS-22
    def client(self, c: _Client, argv: list[bytes]) -> bytes:
        sub, n = argv[1].lower(), len(argv)
        if sub == b"setname" and n == 3:
            if any(b <= 32 or b >= 127 for b in argv[2]):
                return resp.error("ERR Client names cannot contain spaces, newlines or "
                                  "special characters.")
            c.name = argv[2]
            return resp.OK
        if sub == b"getname" and n == 2:
            return resp.bulk(c.name) if c.name else c.null
        if sub == b"setinfo" and n == 4:
            return resp.OK  # LIB-NAME / LIB-VER: noted by Redis, nothing to do here
        if sub == b"id" and n == 2:
            return resp.integer(c.id)
        if sub in (b"setname", b"getname", b"setinfo", b"id"):
            return _wrong_arguments(f"client|{sub.decode()}")
        return _unknown_subcommand(argv[1], "CLIENT")

    def select(self, c: _Client, argv: list[bytes]) -> bytes:
        index = resp.parse_integer(argv[1])
        if index is None:
            return resp.error("ERR value is not an integer or out of range")
        return resp.OK if index == 0 else resp.error("ERR DB index is out of range")

    def info(self, c: _Client, argv: list[bytes]) -> bytes:
        text = (f"# Server\r\nredis_version:7.2.0\r\nredis_mode:standalone\r\n"
                f"server_name:evio-redis-clone\r\nprocess_id:{os.getpid()}\r\n"
                f"\r\n# Clients\r\nconnected_clients:{len(self.clients)}\r\n"
                f"\r\n# Keyspace\r\n" + (f"db0:keys={len(self.db)},expires=0\r\n"
                                           if self.db else ""))
        return resp.bulk(text.encode())

    # ---------------------------------------------------------------- WGET

    def _fetched(self, f: _Fetch, data: memoryview | bytes | None) -> _Reply:
        """``data`` for a WGET's connection: keep the bytes, or close it."""
        if f.done:
            return evio.Action.CLOSE  # bytes after an answer
        if data is None:
            return None
        f.size += len(data)
        if f.size > MAX_RESPONSE:
            self._answer(f, f"response longer than {MAX_RESPONSE} bytes")
            return evio.Action.CLOSE
        f.chunks.append(bytes(data))
        return None

    def _timed_out(self, f: _Fetch) -> None:
        """The WGET's timer fired: answer the client, close the connection."""
        f.timer = None
        if not f.done:
            self._answer(f, f"timed out after {f.timeout:g} seconds")
            self._stop_fetch(f)

    def _stop_fetch(self, f: _Fetch) -> None:
        """Close a WGET's connection now that nobody waits for it.

        ``server.close`` acts at the end of this turn; a dial still
        connecting is not closed by it (False), and its ``opened`` sees
        ``done`` and answers ``CLOSE`` instead.
        """
        assert self.server is not None
        self.server.close(f.id)

    def _answer(self, f: _Fetch, reply: bytes | str) -> None:
        """Give the waiting client its WGET reply (bytes) or error (a reason)."""
        f.done = True
        f.chunks.clear()
        if f.timer is not None:
            f.timer.cancel()
            f.timer = None
        if isinstance(reply, str):
            reply = resp.error(f"ERR WGET {f.target}: {reply}")
        c = self.clients.get(f.client)
        if c is not None and c.fetch is f:
            c.fetch = None
            c.answer = reply  # in place before the wake, never after
            self._wake(c.id)

    def _wake(self, id: int) -> None:
        assert self.server is not None
        self.server.wake(id)  # False only if it is gone or we are stopping: nothing to do

    # ------------------------------------------------------------ commands

    # REDIS-7
    def ping(self, c: _Client, argv: list[bytes]) -> bytes:
        if len(argv) > 2:
            return _wrong_arguments("ping")
        return resp.bulk(argv[1]) if len(argv) == 2 else b"+PONG\r\n"

    def echo(self, c: _Client, argv: list[bytes]) -> bytes:
        return resp.bulk(argv[1])

    # REDIS-8
    def set(self, c: _Client, argv: list[bytes]) -> bytes:
        if len(argv) > 3:
            return resp.error("ERR syntax error")  # no EX, NX, ... here
        self.db[argv[1]] = argv[2]
        return resp.OK

    def get(self, c: _Client, argv: list[bytes]) -> bytes:
        value = self.db.get(argv[1])
        return c.null if value is None else resp.bulk(value)

    def delete(self, c: _Client, argv: list[bytes]) -> bytes:
        db = self.db
        return resp.integer(sum(db.pop(key, None) is not None for key in argv[1:]))

    def exists(self, c: _Client, argv: list[bytes]) -> bytes:
        db = self.db
        return resp.integer(sum(key in db for key in argv[1:]))  # a key named twice counts twice

    def flushdb(self, c: _Client, argv: list[bytes]) -> bytes:
        if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
            return resp.error("ERR syntax error")
        self.db.clear()
        return resp.OK

    # REDIS-10
    def quit(self, c: _Client, argv: list[bytes]) -> bytes:
        c.action = evio.Action.CLOSE
        return resp.OK

    # REDIS-11
    def shutdown(self, c: _Client, argv: list[bytes]) -> bytes:
        if any(a.upper() not in (b"NOSAVE", b"SAVE", b"NOW", b"FORCE") for a in argv[1:]):
            return resp.error("ERR syntax error")
        c.action = evio.Action.SHUTDOWN
        return b""  # like Redis: no reply, the connection just closes

    def command(self, c: _Client, argv: list[bytes]) -> bytes:
        if len(argv) == 1:
            return b"*0\r\n"  # no command table to describe; clients cope
        sub = argv[1].lower()
        if sub == b"count":
            return _wrong_arguments("command|count") if len(argv) != 2 else \
                resp.integer(len(COMMANDS))
        if sub == b"list":
            return _wrong_arguments("command|list") if len(argv) != 2 else \
                resp.array(resp.bulk(name) for name in COMMANDS)
        if sub == b"docs":
            return b"*0\r\n"  # redis-cli asks on start; no docs is a valid answer
        if sub == b"info":
            return resp.array(c.null for _ in argv[2:])  # null: not described
        if sub == b"help" and len(argv) == 2:
            return _help("COMMAND", "COUNT", "DOCS [name ...]", "INFO [name ...]", "LIST")
        return _unknown_subcommand(argv[1], "COMMAND")

    # REDIS-12
    def hello(self, c: _Client, argv: list[bytes]) -> bytes:
        resp3 = c.resp3
        if len(argv) > 1:
            version = resp.parse_integer(argv[1])
            if version is None:
                return resp.error("ERR Protocol version is not an integer or out of range")
            if version not in (2, 3):
                return resp.error("NOPROTO unsupported protocol version")
            resp3 = version == 3
        # Options are accepted and ignored: there are no users and no names here.
        i = 2
        while i < len(argv):
            option = argv[i].upper()
            if option == b"AUTH" and i + 2 < len(argv):
                i += 3
            elif option == b"SETNAME" and i + 1 < len(argv):
                i += 2
            else:
                return resp.error(b"ERR Syntax error in HELLO option '" + argv[i] + b"'")
        c.resp3 = resp3
        c.null = resp.NULL if resp3 else resp.NIL
        info = [
            (b"server", resp.bulk(b"redis")),
            # Clients compare versions: this is the Redis whose replies we follow.
            (b"version", resp.bulk(b"7.0.0")),
            (b"proto", resp.integer(3 if resp3 else 2)),
            (b"id", resp.integer(c.id)),
            (b"mode", resp.bulk(b"standalone")),
            (b"role", resp.bulk(b"master")),
            (b"modules", b"*0\r\n"),
        ]
        return resp.mapping(((resp.bulk(k), v) for k, v in info), resp3)

    def config(self, c: _Client, argv: list[bytes]) -> bytes:
        sub = argv[1].lower()
        if sub == b"get":
            if len(argv) < 3:
                return _wrong_arguments("config|get")
            found = [(name, value) for name, value in CONFIG.items()
                     if any(fnmatch.fnmatchcase(name, p.lower().decode("latin-1"))
                            for p in argv[2:])]
            return resp.mapping(((resp.bulk(k.encode()), resp.bulk(v.encode())) for k, v in found),
                                c.resp3)
        if sub == b"help" and len(argv) == 2:
            return _help("CONFIG", "GET <pattern> [<pattern> ...]")
        return _unknown_subcommand(argv[1], "CONFIG")

    # REDIS-16, REDIS-17
    def wget(self, c: _Client, argv: list[bytes]) -> bytes:
        assert self.server is not None
        target = argv[1].decode("utf-8", "backslashreplace")
        try:
            timeout = float(argv[2])
        except ValueError:
            timeout = math.nan
        if not 0 < timeout < math.inf:
            return resp.error("ERR timeout is not a float or out of range")
        host, colon, port = target.rpartition(":")
        if not colon or not host or not port.isascii() or not port.isdigit():
            return resp.error(f"ERR WGET wants host:port, not '{target}'")
        try:
            id = self.server.dial(f"tcp://{host}:{port}", timeout)
        except (ValueError, RuntimeError) as e:
            return resp.error(f"ERR WGET {target}: {e}")
        f = _Fetch(id, c.id, target, timeout)
        f.timer = self.server.call_later(timeout, partial(self._timed_out, f))
        self.fetches[id] = f
        c.fetch = f  # the answer comes from closed(), or from its timer
        return b""


COMMANDS: dict[bytes, _Command] = {
    c.name.encode(): c for c in [
        _Command("ping", -1, RedisClone.ping),
        _Command("echo", 2, RedisClone.echo),
        _Command("set", -3, RedisClone.set),
        _Command("get", 2, RedisClone.get),
        _Command("del", -2, RedisClone.delete),
        _Command("exists", -2, RedisClone.exists),
        _Command("flushdb", -1, RedisClone.flushdb),
        _Command("quit", -1, RedisClone.quit, ends_batch=True),
        _Command("shutdown", -1, RedisClone.shutdown, ends_batch=True),
        _Command("command", -1, RedisClone.command),
        _Command("config", -2, RedisClone.config),
        _Command("hello", -1, RedisClone.hello),
        _Command("wget", 3, RedisClone.wget, ends_batch=True),
        _Command("multi", 1, RedisClone.multi, ends_batch=True),
        _Command("exec", 1, RedisClone.exec_),
        _Command("discard", 1, RedisClone.discard),
        _Command("client", -2, RedisClone.client),
        _Command("select", 2, RedisClone.select),
        _Command("info", -1, RedisClone.info),
    ]
}
"""Every command, by its lower-case name."""

_BY_NAME = {**COMMANDS, **{name.upper(): c for name, c in COMMANDS.items()}}
"""Every command by its lower- and upper-case name: most clients send one of the two."""

_CONSTANT = {b"ping": b"+PONG\r\n", b"PING": b"+PONG\r\n"}
"""Replies to one-word commands that never change, as Redis's ``shared.pong``."""

CONFIG = {"save": "", "appendonly": "no"}
"""What CONFIG GET reports: a server that persists nothing (redis-benchmark asks)."""


# REDIS-9
def _unknown_command(argv: list[bytes]) -> bytes:
    # Redis's exact wording: at most 128 bytes of the name; arguments
    # quoted, each followed by a space, until 128 bytes of them are shown.
    args = b""
    for a in argv[1:]:
        if len(args) >= 128:
            break
        args += b"'" + a[:128 - len(args)] + b"' "
    return resp.error(b"ERR unknown command '" + argv[0][:128]
                      + b"', with args beginning with: " + args)


def _wrong_arguments(name: str) -> bytes:
    return resp.error(f"ERR wrong number of arguments for '{name}' command")


def _unknown_subcommand(sub: bytes, command: str) -> bytes:
    return resp.error(b"ERR unknown subcommand '" + sub[:128]
                      + f"'. Try {command} HELP.".encode())


def _help(command: str, *lines: str) -> bytes:
    text = [f"{command} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:", *lines]
    return resp.array(resp.simple(line) for line in text)


def _reason(err: BaseException) -> str:
    """A failed dial's error as a short phrase: ``Connection refused``."""
    if isinstance(err, OSError) and err.strerror and not isinstance(err, TimeoutError):
        return err.strerror
    return str(err) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    # REDIS-19
    parser = argparse.ArgumentParser(
        description="evio Redis clone",
        epilog="It runs one loop, unlike the echo and HTTP examples (--loops): its data "
               "lives in one process's memory, which loops in other processes could "
               "neither see nor change.")
    # REL-6: loopback unless --host says otherwise
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=6380,
                        help="TCP port (default: 6380, next to a real Redis on 6379)")
    parser.add_argument("--unixsocket", metavar="PATH", help="also listen on this unix socket")
    parser.add_argument("--poller", choices=evio.available_pollers(),
                        help="poller backend (default: the best available)")
    parser.add_argument("--max-buffer", type=int, default=resp.DEFAULT_MAX_BUFFER,
                        metavar="BYTES",
                        help="most bytes of an unfinished request one client may have "
                             "buffered; more is a protocol error (default: 64 MiB)")
    parser.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                        help="close a client idle this long, like Redis's timeout "
                             "(default: 0, never)")
    parser.add_argument("--max-output", type=int, default=DEFAULT_MAX_OUTPUT, metavar="BYTES",
                        help="close a client with more replies pending than this, like "
                             "Redis's client-output-buffer-limit (default: 256 MiB; 0: no limit)")
    parser.add_argument("--command-timeout", type=float, default=DEFAULT_COMMAND_TIMEOUT,
                        metavar="SECONDS",
                        help="close a client whose command is not whole this long after its "
                             "first byte (default: 30; 0: never)")
    args = parser.parse_args(argv)
    if args.max_buffer < 1:
        parser.error("--max-buffer must be at least 1")
    if not 0 <= args.timeout < math.inf:
        parser.error("--timeout must be 0 or a positive number of seconds")
    if args.max_output < 0:
        parser.error("--max-output must be 0 or more")
    if not 0 <= args.command_timeout < math.inf:
        parser.error("--command-timeout must be 0 or a positive number of seconds")

    host = f"[{args.host}]" if ":" in args.host else args.host
    addrs = [f"tcp://{host}:{args.port}"]
    if args.unixsocket:
        addrs.append(f"unix://{args.unixsocket}")
    app = RedisClone(args.max_buffer, args.timeout or None, args.max_output or None,
                     args.command_timeout or None)
    try:
        evio.serve(app.events(), *addrs, poller=args.poller)
    except (ValueError, OSError) as e:
        print(f"redis server: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: evio closed every connection first
        pass
    print("redis server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
