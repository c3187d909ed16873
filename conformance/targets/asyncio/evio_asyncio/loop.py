"""serve() and Server on asyncio: one event loop, one protocol object per connection.

Theory of operation. `serve` binds every address itself (so a failed bind
leaves nothing bound, ADDR-7), makes a fresh asyncio event loop, and hands
the listening sockets to ``loop.create_server``, which only starts accepting
after ``serving`` has answered. Every accepted or dialed connection gets a
`_Conn` protocol: asyncio calls it when bytes arrive, when the peer ends its
stream, when its write buffer crosses the water marks, and when it is lost;
the protocol turns each into the evio callback and applies the answer
(output is ``transport.write``, ``CLOSE`` is ``transport.close`` which sends
what is pending first). Water marks are asyncio's own write-buffer limits;
passing the high one pauses reading. Threads reach the loop only through
``call_soon_threadsafe`` (wake, dial, stop). A shutdown closes the
listeners, then every connection in id order, each with its ``closed``.

This module owns the running server: binding, the loop, connections,
wakes, dials, ticks and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from .records import Action, Events, Info, Options, OutputLimitError, action_only, reply

log = logging.getLogger("evio")

_FAMILIES = {"tcp": None, "tcp4": socket.AF_INET, "tcp6": socket.AF_INET6,
             "udp": None, "udp4": socket.AF_INET, "udp6": socket.AF_INET6,
             "unix": socket.AF_UNIX}


def available_pollers() -> list[str]:
    """The one 'poller' this implementation has: asyncio's own event loop."""
    return ["asyncio"]


@dataclass(frozen=True, slots=True)
class Address:
    """One parsed address (as the spec page *Addresses* describes it)."""

    text: str
    network: str
    host: str = ""
    port: int = 0
    path: str = ""
    reuseport: bool = False
    portable: bool = False
    mode: int = 0o600

    @property
    def is_udp(self) -> bool:
        """Whether this is a datagram address."""
        return self.network.startswith("udp")


def parse_address(text: str) -> Address:
    """Parse ``scheme://address[?reuseport=..&mode=..]`` (or bare ``host:port``).

    Raises:
        ValueError: a malformed address; the message names it.
    """
    if not isinstance(text, str):
        raise ValueError(f"address {text!r} is not a string")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    scheme = scheme.lower()
    portable = scheme.endswith("-net")
    network = scheme.removesuffix("-net")
    if network not in _FAMILIES:
        raise ValueError(f"address '{text}': unknown scheme {scheme!r}")
    rest, _, query = rest.partition("?")
    reuse, mode = False, 0o600
    for key, values in parse_qs(query, keep_blank_values=True).items():
        value = values[-1].lower()
        if key == "reuseport":
            if value not in ("true", "yes", "1", "false", "no", "0"):
                raise ValueError(f"address '{text}': reuseport={value!r} is not a yes or no")
            reuse = value in ("true", "yes", "1")
        elif key == "mode" and network == "unix":
            try:
                mode = int(value, 8)
            except ValueError:
                raise ValueError(f"address '{text}': mode={value!r} is not octal") from None
            if not 0 <= mode <= 0o777:
                raise ValueError(f"address '{text}': mode={value!r} is out of range")
        else:
            raise ValueError(f"address '{text}': unknown option {key!r}")
    if network == "unix":
        if not rest:
            raise ValueError(f"address '{text}': no path")
        if len(os.fsencode(rest)) > 107:
            raise ValueError(f"address '{text}': the path is longer than a unix socket takes")
        return Address(text, network, path=rest, reuseport=reuse, portable=portable, mode=mode)
    host, colon, port_text = rest.rpartition(":")
    if not colon or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(f"address '{text}': expected host:port with a numeric port")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"address '{text}': port {port} is out of range")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")) or len(host) == 2:
            raise ValueError(f"address '{text}': malformed [IPv6] host")
        if network.endswith("4"):
            raise ValueError(f"address '{text}': an IPv6 host in an IPv4 address")
        host = host[1:-1]
    elif network.endswith("6") and host.replace(".", "").isdigit():
        raise ValueError(f"address '{text}': an IPv4 host in an IPv6 address")
    elif ":" in host:
        raise ValueError(f"address '{text}': an IPv6 host must be in brackets")
    return Address(text, network, host, port, reuseport=reuse, portable=portable)


def _parse(addr: str, dialing: bool = False) -> tuple[int | None, Any, bool]:
    """(family or None for tcp, address, reuseport) of a stream address.

    Raises:
        ValueError: a malformed address, or one this implementation cannot serve.
    """
    a = parse_address(addr)
    if a.network.startswith("udp"):
        raise ValueError(f"address '{addr}': udp is not supported by evio_asyncio")
    if a.network == "unix":
        return socket.AF_UNIX, a.path, a.reuseport
    if dialing and (not a.host or a.port == 0):
        raise ValueError(f"address '{addr}': dialing needs a host and a non-zero port")
    return _FAMILIES[a.network], (a.host, a.port), a.reuseport


def _bind(addr: str) -> tuple[socket.socket, str | None]:
    family, where, reuse = _parse(addr)
    if family == socket.AF_UNIX:
        path = str(where)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(path)
            s.listen(1024)
        except BaseException:
            s.close()
            raise
        return s, path
    host, port = where
    infos = socket.getaddrinfo(host or None, port, family or socket.AF_UNSPEC,
                               socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    fam, _, _, _, sockaddr = infos[0]
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(sockaddr)
        s.listen(1024)
    except BaseException:
        s.close()
        raise
    return s, None


class _Conn(asyncio.Protocol):
    """One stream connection: asyncio's events in, evio's callbacks out."""

    def __init__(self, srv: _Loop, cid: int, index: int) -> None:
        self.srv, self.id, self.index = srv, cid, index
        self.transport: asyncio.Transport | None = None
        self.reading = True  # False once CLOSE, an error or the peer's end stops it
        self.user_paused = False
        self.water_paused = False
        self.half = False  # the peer ended its stream and eof() kept us open
        self.done = False  # closed() has been called
        self.err: BaseException | None = None
        self.options = Options()
        self.idle: asyncio.TimerHandle | None = None
        self.wake_pending = False

    # -- asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.srv.conns[self.id] = self
        sock = transport.get_extra_info("socket")
        info = Info(False, self.index, sock.getsockname(), _peer(sock))
        self.call("opened", self.srv.events.opened, (self.id, info), opened=True)
        if self.wake_pending and not self.done:
            self.wake_pending = False
            self.woken()

    def data_received(self, data: bytes) -> None:
        self.touch()
        if not self.reading:
            return
        if self.options.reuse_input_buffer:
            view = memoryview(data)
            try:
                self.call("data", self.srv.events.data, (self.id, view))
            finally:
                view.release()
        else:
            self.call("data", self.srv.events.data, (self.id, data))

    def eof_received(self) -> bool:
        if self.srv.events.eof is None or not self.reading:
            self.reading = False
            return False
        self.half = True
        self.reading = False
        self.call("eof", self.srv.events.eof, (self.id,))
        return True

    def pause_writing(self) -> None:
        self.water_paused = True
        self.sync_reading()

    def resume_writing(self) -> None:
        self.water_paused = False
        self.sync_reading()
        if not self.done:
            self.call("drained", self.srv.events.drained, (self.id,))

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(self.err or exc)

    # -- evio's side
    def call(self, name: str, fn: Callable[..., Any] | None, args: tuple[Any, ...],
             opened: bool = False) -> None:
        if fn is None or self.done:
            return
        try:
            out, options, action = reply(fn(*args), name, opened)
        except Exception as e:  # EV-9: this connection ends, nothing else does
            log.exception("%s raised (connection %d)", name, self.id)
            self.fail(e)
            return
        if options is not None:
            self.apply(options)
        self.send(out)
        self.act(action)

    def apply(self, options: Options) -> None:
        assert self.transport is not None
        self.options = options
        self.transport.set_write_buffer_limits(high=options.high_water, low=options.low_water)
        sock = self.transport.get_extra_info("socket")
        if options.tcp_keepalive is not None and sock.family != socket.AF_UNIX:
            secs = max(1, math.ceil(options.tcp_keepalive))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for opt in ("TCP_KEEPIDLE", "TCP_KEEPINTVL"):
                if hasattr(socket, opt):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), secs)
        self.touch()

    def send(self, out: bytes) -> None:
        if not out or self.transport is None or self.transport.is_closing():
            return
        t = self.transport
        ev = self.srv.events
        # asyncio tries to send at once only when nothing is queued; that is the
        # one write attempt this implementation can report (LOOP-21 partly).
        attempt = t.get_write_buffer_size() == 0 and (ev.prewrite or ev.postwrite)
        if attempt and ev.prewrite is not None and not self.hook("prewrite", ev.prewrite, len(out)):
            return
        t.write(out)
        if attempt and ev.postwrite is not None:
            remaining = t.get_write_buffer_size()
            if not self.hook("postwrite", ev.postwrite, len(out) - remaining, remaining):
                return
        self.touch()
        limit = self.options.max_pending
        if limit is not None and self.transport.get_write_buffer_size() > limit:
            self.err = OutputLimitError(f"more than {limit} bytes of output pending")
            self.transport.abort()

    def hook(self, name: str, fn: Callable[..., Any], *args: int) -> bool:
        """Call prewrite or postwrite; False when it ended the connection (EV-10)."""
        try:
            action = action_only(fn(self.id, *args), name)
        except Exception as e:
            log.exception("%s raised (connection %d)", name, self.id)
            self.err = self.err or e
            if self.transport is not None:
                self.transport.abort()
            return False
        if action is not Action.NONE:
            self.act(action)
        return True

    def act(self, action: Action) -> None:
        if action is Action.CLOSE:
            self.close()
        elif action is Action.SHUTDOWN:
            self.srv.shutdown()
        elif action is Action.DETACH:
            self.fail(TypeError("Action.DETACH: evio_asyncio cannot hand a connection "
                                "to a detached callback"))

    def close(self) -> None:
        self.reading = False
        if self.transport is not None:
            self.transport.close()  # sends what is pending, then connection_lost

    def fail(self, err: BaseException) -> None:
        self.err = self.err or err
        self.close()

    def sync_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.user_paused or self.water_paused:
            if t.is_reading():
                t.pause_reading()
        elif not t.is_reading():
            t.resume_reading()

    def touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        timeout = self.options.idle_timeout
        if timeout is not None and not self.done:
            self.idle = self.srv.aloop.call_later(timeout, self.expire)

    def expire(self) -> None:
        self.err = self.err or TimeoutError(f"idle for {self.options.idle_timeout} s")
        if self.transport is not None:
            self.transport.abort()

    def woken(self) -> None:
        if self.reading and not self.done:
            self.call("data", self.srv.events.data, (self.id, None))

    def finish(self, err: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self.reading = False
        if self.idle is not None:
            self.idle.cancel()
        self.srv.forget(self.id)
        fn = self.srv.events.closed
        if fn is not None:
            try:
                action = action_only(fn(self.id, err), "closed")
            except Exception:
                log.exception("closed raised (connection %d)", self.id)
                return
            if action is Action.SHUTDOWN:
                self.srv.shutdown()


def _peer(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return ""


class Server:
    """The running server, as ``serving`` receives it.

    ``wake``, ``dial`` and ``stop`` are safe from any thread; the rest
    belongs to the loop's thread.
    """

    def __init__(self, impl: _Loop) -> None:
        self._impl = impl
        self.addrs: tuple[Any, ...] = impl.addrs
        self.poller = "asyncio"
        self.loop_index = 0
        self.loops = 1

    def wake(self, id: int) -> bool:
        """Ask the loop to call ``data(id, None)`` soon; False for an unknown,
        closed or stopped id (WAKE-1)."""
        return self._impl.wake(id)

    def dial(self, addr: str, timeout: float | None = None) -> int:
        """Connect to ``addr`` on the loop; return the new id at once (DIAL-1).

        Raises:
            ValueError: a malformed, UDP or port-0 address, or a bad timeout.
            RuntimeError: the server has stopped.
        """
        return self._impl.dial(addr, timeout)

    def stop(self) -> None:
        """Shut the server down as SHUTDOWN does; safe anywhere, never raises."""
        self._impl.stop()

    def pending(self, id: int) -> int:
        """Bytes of output queued for ``id`` and not yet sent (0 if unknown)."""
        c = self._impl.conns.get(id)
        if c is None or c.transport is None:
            return 0
        return int(c.transport.get_write_buffer_size())

    def paused(self, id: int) -> bool:
        """Whether reading ``id`` is paused by its water marks."""
        c = self._impl.conns.get(id)
        return bool(c is not None and c.water_paused)

    def pause(self, id: int) -> bool:
        """Stop reading ``id`` until `resume`; False if it no longer reads."""
        return self._pause(id, True)

    def resume(self, id: int) -> bool:
        """Undo `pause`; False if ``id`` no longer reads."""
        return self._pause(id, False)

    def _pause(self, id: int, on: bool) -> bool:
        c = self._impl.conns.get(id)
        if c is None or not c.reading or c.done:
            return False
        c.user_paused = on
        c.sync_reading()
        return True

    def shutdown_write(self, id: int) -> bool:
        """Send our end of stream on ``id`` after its pending output."""
        c = self._impl.conns.get(id)
        if c is None or c.transport is None or c.transport.is_closing():
            return False
        if c.half:  # the peer has ended too: nothing more can happen
            c.close()
        else:
            c.transport.write_eof()
        return True


class _Loop:
    def __init__(self, events: Events, socks: list[socket.socket],
                 paths: list[str | None]) -> None:
        self.events = events
        self.socks = socks
        self.paths = paths
        self.addrs = tuple(s.getsockname() for s in socks)
        self.aloop = asyncio.new_event_loop()
        self.conns: dict[int, _Conn] = {}
        self.dialing: dict[int, asyncio.Task[None] | None] = {}  # None: not started yet
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.woken: set[int] = set()
        self.pending_wakes: set[int] = set()  # WAKE-5: for dials still connecting
        self.targets: dict[int, Any] = {}  # dial id -> where it dials (for a failed Info)
        self.stopping = False
        self.stopped = False
        self.done: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.interrupted = False
        self.next_tick = 0.0

    # -- thread-safe entries
    def wake(self, id: int) -> bool:
        with self.lock:
            if self.stopping or (id not in self.conns and id not in self.dialing):
                return False
            first = not self.woken
            self.woken.add(id)
        if first:
            with contextlib.suppress(RuntimeError):
                self.aloop.call_soon_threadsafe(self.run_wakes)
        return True

    def dial(self, addr: str, timeout: float | None) -> int:
        family, where, _ = _parse(addr, dialing=True)
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, int | float)
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise ValueError(f"dial timeout {timeout!r} must be a positive number of seconds")
        with self.lock:
            if self.stopping:
                raise RuntimeError("the server has stopped")
            cid = next(self.ids)
            placeholder: Any = None
            self.dialing[cid] = placeholder
        self.targets[cid] = where
        self.aloop.call_soon_threadsafe(self.start_dial, cid, family, where, timeout)
        return cid

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: it has stopped
            self.aloop.call_soon_threadsafe(self.shutdown)

    # -- on the loop
    def forget(self, id: int) -> None:
        with self.lock:
            self.conns.pop(id, None)
            self.woken.discard(id)

    def run_wakes(self) -> None:
        with self.lock:
            ids, self.woken = sorted(self.woken), set()
        for id in ids:
            if self.stopping:
                return
            c = self.conns.get(id)
            if c is not None:
                c.woken()
            elif id in self.dialing:
                self.keep_wake(id)

    def keep_wake(self, id: int) -> None:
        self.pending_wakes.add(id)

    def start_dial(self, cid: int, family: int | None, where: Any, timeout: float | None) -> None:
        if self.stopping:
            return
        self.dialing[cid] = self.aloop.create_task(self.do_dial(cid, family, where, timeout))

    async def do_dial(self, cid: int, family: int | None, where: Any,
                      timeout: float | None) -> None:
        conn = _Conn(self, cid, -1)
        conn.wake_pending = False
        try:
            async with asyncio.timeout(timeout):
                if family == socket.AF_UNIX:
                    await self.aloop.create_unix_connection(lambda: self.opening(conn), where)
                else:
                    host, port = where
                    await self.aloop.create_connection(
                        lambda: self.opening(conn), host, port, family=family or 0)
        except asyncio.CancelledError:
            self.failed_dial(cid, ConnectionAbortedError("the server is shutting down"))
            raise
        except (OSError, TimeoutError) as e:
            self.failed_dial(cid, e if not isinstance(e, asyncio.TimeoutError)
                             else TimeoutError(f"dial timed out after {timeout} s"))

    def opening(self, conn: _Conn) -> _Conn:
        with self.lock:
            self.dialing.pop(conn.id, None)
            self.targets.pop(conn.id, None)
            conn.wake_pending = conn.id in self.pending_wakes or conn.id in self.woken
            self.pending_wakes.discard(conn.id)
            self.woken.discard(conn.id)
        return conn

    def failed_dial(self, cid: int, err: BaseException) -> None:
        with self.lock:
            self.dialing.pop(cid, None)
            self.pending_wakes.discard(cid)
            self.woken.discard(cid)
        ev = self.events
        if ev.opened is not None:
            try:
                ev.opened(cid, Info(True, -1, None, self.targets.pop(cid, None)))
            except Exception:
                log.exception("opened raised (connection %d)", cid)
        if ev.closed is not None:
            try:
                if action_only(ev.closed(cid, err), "closed") is Action.SHUTDOWN:
                    self.shutdown()
            except Exception:
                log.exception("closed raised (connection %d)", cid)

    def shutdown(self) -> None:
        with self.lock:
            self.stopping = True
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def fatal(self, err: BaseException) -> None:
        self.error = self.error or err
        self.shutdown()

    def tick(self) -> None:
        if self.stopping or self.events.tick is None:
            return
        try:
            answer = self.events.tick()
        except Exception as e:
            self.fatal(e)
            return
        delay: Any = answer
        action = Action.NONE
        if isinstance(answer, tuple) and len(answer) == 2:
            delay, action = answer
        elif isinstance(answer, Action) or answer is None:
            delay, action = None, answer or Action.NONE
        if action is Action.SHUTDOWN:
            self.shutdown()
            return
        if delay is None:
            return
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            self.fatal(TypeError(f"tick returned a {type(delay).__name__} ({answer!r}): "
                                 f"expected seconds, (seconds, Action), an Action or None"))
            return
        if not math.isfinite(delay) or delay < 0:
            self.fatal(ValueError(f"tick returned {answer!r}: a delay must be finite and >= 0"))
            return
        self.next_tick = max(self.next_tick + delay, time.monotonic())
        self.aloop.call_at(self.aloop.time() + (self.next_tick - time.monotonic()), self.tick)

    def on_signal(self, sig: int) -> None:
        if sig == signal.SIGINT:
            self.interrupted = True
        self.shutdown()

    async def main(self) -> None:
        self.done = self.aloop.create_future()
        servers = []
        for i, s in enumerate(self.socks):
            def factory(i: int = i) -> _Conn:
                return _Conn(self, next(self.ids), i)
            if s.family == socket.AF_UNIX:
                servers.append(await self.aloop.create_unix_server(
                    factory, sock=s, start_serving=False))
            else:
                servers.append(await self.aloop.create_server(
                    factory, sock=s, start_serving=False))
        try:
            if self.events.serving is not None:
                try:
                    if action_only(self.events.serving(Server(self)),
                                   "serving") is Action.SHUTDOWN:
                        self.shutdown()
                except Exception as e:
                    self.fatal(e)
            if not self.stopping:
                for srv in servers:
                    await srv.start_serving()
                if self.events.tick is not None:
                    self.next_tick = time.monotonic()
                    self.tick()
            await self.done
        finally:
            for srv in servers:
                srv.close()
            await self.close_all()

    async def close_all(self) -> None:
        with self.lock:
            self.stopping = True
        for task in list(self.dialing.values()):
            if task is not None:
                task.cancel()
        ids = sorted(set(self.conns) | set(self.dialing))
        for id in ids:
            task = self.dialing.get(id)
            if id in self.dialing:
                if task is not None:
                    with contextlib.suppress(BaseException):
                        await task
                if id in self.dialing:  # not started yet
                    self.failed_dial(id, ConnectionAbortedError("the server is shutting down"))
                continue
            c = self.conns.get(id)
            if c is None:
                continue
            if c.transport is not None:
                c.transport.abort()
            c.finish(c.err)
        await asyncio.sleep(0)  # let the aborted transports close their sockets


def serve(events: Events, *addrs: str, poller: str | None = None, loops: int | str = 1,
          stop_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
          ) -> None:
    """Bind every address and run the loop until it is asked to stop.

    Args:
        events: The callbacks.
        *addrs: One or more ``tcp``, ``tcp4``, ``tcp6`` or ``unix`` addresses.
        poller: ``None`` or ``"asyncio"``.
        loops: Only ``1``.
        stop_signals: Signals that stop the server when they still have their
            default handler and ``serve`` runs on the main thread.

    Raises:
        TypeError: ``events`` is not an `Events`.
        ValueError: a bad address, poller or ``loops``; nothing is bound.
        OSError: a bind failed; nothing stays bound.
        KeyboardInterrupt: SIGINT stopped the loop.
        Exception: what ``serving`` or ``tick`` raised, after the shutdown.
    """
    if not isinstance(events, Events):
        raise TypeError(f"events must be an evio_asyncio.Events, not {type(events).__name__}")
    if poller not in (None, "asyncio"):
        raise ValueError(f"unknown poller {poller!r}: evio_asyncio has only 'asyncio'")
    if loops != 1:
        raise ValueError(f"loops={loops!r}: evio_asyncio runs one loop only")
    if not addrs:
        raise ValueError("serve() needs at least one address")
    for a in addrs:
        _parse(a)
    socks: list[socket.socket] = []
    paths: list[str | None] = []
    try:
        for a in addrs:
            s, path = _bind(a)
            socks.append(s)
            paths.append(path)
    except BaseException:
        for s, path in zip(socks, paths, strict=False):
            s.close()
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        raise
    impl = _Loop(events, socks, paths)
    installed: list[int] = []
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in stop_signals:
                current = signal.getsignal(sig)
                if current in (signal.SIG_DFL, signal.default_int_handler):
                    impl.aloop.add_signal_handler(sig, impl.on_signal, sig)
                    installed.append(sig)
        task = impl.aloop.create_task(impl.main())
        while True:
            try:
                impl.aloop.run_until_complete(task)
                break
            except BaseException as e:  # a KeyboardInterrupt from a callback (LOOP-24)
                if task.done():
                    raise
                impl.error = impl.error or e
                impl.shutdown()  # then run on until every connection is closed
    finally:
        for sig in installed:
            impl.aloop.remove_signal_handler(sig)
        impl.stopped = True
        with contextlib.suppress(Exception):
            impl.aloop.run_until_complete(impl.aloop.shutdown_default_executor())
        impl.aloop.close()
        for s, path in zip(socks, paths, strict=True):
            s.close()
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
    if impl.error is not None:
        raise impl.error
    if impl.interrupted:
        raise KeyboardInterrupt
