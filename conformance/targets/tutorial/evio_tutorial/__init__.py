"""evio_tutorial: the tutorial's final stage behind the evio API -- a conformance target.

Theory of operation. ``tutorial/stage5_timers_wakeups.py`` is the loop the
tutorial builds: one listener on 127.0.0.1, ``opened(id)``, ``data(id,
bytes | None)``, ``closed(id)``, ``tick()``, and a server with ``wake`` and
``stop``. This adapter only translates: evio's records and answers in, the
stage's out, and back. It adds no behaviour of its own -- no second
listener, no other family, no options -- so what the suite finds is what the
tutorial's loop does. What it cannot translate is declared lacking in
conformance/targets/tutorial/manifest.toml.

This module owns the translation between the two APIs.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "tutorial"))

import stage5_timers_wakeups as stage

__all__ = ["Action", "Events", "Info", "InputStream", "Options", "Server",
           "available_pollers", "serve"]


class Action(enum.Enum):
    """evio's actions; DETACH has no counterpart in the tutorial."""

    NONE = 0
    DETACH = 1
    CLOSE = 2
    SHUTDOWN = 3


_TO_STAGE = {Action.NONE: stage.Action.NONE, Action.CLOSE: stage.Action.CLOSE,
             Action.SHUTDOWN: stage.Action.SHUTDOWN}


@dataclass(frozen=True, slots=True)
class Info:
    """What ``opened`` learns (the tutorial tells only the id: addresses are None)."""

    closing: bool
    addr_index: int
    local_addr: Any
    remote_addr: Any


@dataclass(frozen=True, slots=True)
class Options:
    """evio's per-connection options; the tutorial has none, so only the
    defaults can be translated (anything else is a TypeError from ``opened``)."""

    tcp_keepalive: float | None = None
    reuse_input_buffer: bool = False
    high_water: int = 65536
    low_water: int = 16384
    idle_timeout: float | None = None
    max_pending: int | None = None


@dataclass(slots=True)
class Events:
    """evio's callbacks; the adapter translates serving, opened, data, closed, tick."""

    serving: Callable[..., Any] | None = None
    opened: Callable[..., Any] | None = None
    closed: Callable[..., Any] | None = None
    detached: Callable[..., Any] | None = None
    data: Callable[..., Any] | None = None
    prewrite: Callable[..., Any] | None = None
    postwrite: Callable[..., Any] | None = None
    tick: Callable[..., Any] | None = None
    eof: Callable[..., Any] | None = None
    drained: Callable[..., Any] | None = None
    udp_idle_timeout: float | None = 60.0
    udp_max_remotes: int = 65536
    translation: Any = None


class InputStream:
    """evio's helper for split messages (pure data; no loop involved)."""

    def __init__(self) -> None:
        self._kept = b""

    def begin(self, packet: Any) -> bytes:
        return self._kept + bytes(packet)

    def end(self, rest: Any) -> None:
        self._kept = bytes(rest)


def available_pollers() -> list[str]:
    """The tutorial's loop uses ``selectors.DefaultSelector``: one 'poller'."""
    return ["tutorial"]


class Server:
    """evio's server over the tutorial's: wake and stop translate, nothing else."""

    def __init__(self, inner: stage.Server) -> None:
        self._inner = inner
        self.addrs: tuple[Any, ...] = (inner.addr,)
        self.poller = "tutorial"
        self.loop_index = 0
        self.loops = 1

    def wake(self, id: int) -> bool:
        return bool(self._inner.wake(id))

    def stop(self) -> None:
        self._inner.stop()


def _reply(value: Any, who: str, opened: bool = False) -> stage.Reply:
    """evio's answer (EV-3, EV-4) as the tutorial's ``bytes | (bytes, Action) | None``."""
    out: Any = value
    action = Action.NONE
    if isinstance(value, Action):
        out, action = None, value
    elif opened and isinstance(value, Options):
        out = None
        if value != Options():
            raise TypeError(f"{who}: the tutorial's loop has no per-connection options")
    elif isinstance(value, tuple) and len(value) == 2:
        out, action = value[0], value[1] if value[1] is not None else Action.NONE
    elif isinstance(value, tuple) and opened and len(value) == 3:
        out, action = value[0], value[2] if value[2] is not None else Action.NONE
    if out is not None and not isinstance(out, bytes | bytearray | memoryview):
        raise TypeError(f"{who} returned {value!r}")
    if not isinstance(action, Action) or action is Action.DETACH:
        raise TypeError(f"{who} returned {value!r}: the tutorial cannot apply it")
    data = b"" if out is None else (out.tobytes() if isinstance(out, memoryview) else bytes(out))
    return (data, _TO_STAGE[action]) if action is not Action.NONE else data


def _address(addr: str) -> int:
    scheme, sep, rest = addr.partition("://")
    if not sep:
        scheme, rest = "tcp", addr
    host, _, port = rest.rpartition(":")
    if scheme not in ("tcp", "tcp4") or host != "127.0.0.1" or not port.isdigit():
        raise ValueError(f"address {addr!r}: the tutorial's loop listens on "
                         f"tcp://127.0.0.1:PORT only")
    return int(port)


def serve(events: Events, *addrs: str, poller: str | None = None, loops: int = 1,
          stop_signals: tuple[int, ...] = ()) -> None:
    """Run ``events`` on the tutorial's loop.

    Raises:
        TypeError: ``events`` is not an `Events`.
        ValueError: not exactly one ``tcp://127.0.0.1:PORT`` address, another
            poller, or more than one loop.
    """
    if not isinstance(events, Events):
        raise TypeError(f"events must be an evio_tutorial.Events, not {type(events).__name__}")
    if len(addrs) != 1:
        raise ValueError("the tutorial's loop serves exactly one address")
    if poller not in (None, "tutorial") or loops != 1:
        raise ValueError(f"poller {poller!r}, loops {loops!r}: the tutorial has one of each")
    port = _address(addrs[0])
    box: list[stage.Server] = []

    def serving(srv: stage.Server) -> None:
        box.append(srv)
        if events.serving is not None and events.serving(Server(srv)) is Action.SHUTDOWN:
            srv.stop()

    def opened(id: int) -> stage.Reply:
        assert events.opened is not None
        return _reply(events.opened(id, Info(False, 0, box[0].addr, None)), "opened", True)

    def data(id: int, data: bytes | None) -> stage.Reply:
        assert events.data is not None
        return _reply(events.data(id, data), "data")

    def closed(id: int) -> None:
        assert events.closed is not None
        if events.closed(id, None) is Action.SHUTDOWN:
            box[0].stop()

    def tick() -> float | None:
        assert events.tick is not None
        answer = events.tick()
        delay, action = answer, Action.NONE
        if isinstance(answer, tuple):
            delay, action = answer
        elif isinstance(answer, Action) or answer is None:
            delay, action = None, answer or Action.NONE
        if action is Action.SHUTDOWN:
            box[0].stop()
        return None if delay is None else float(delay)

    stage.serve(stage.Events(
        serving=serving,
        opened=opened if events.opened else None,
        data=data if events.data else None,
        closed=closed if events.closed else None,
        tick=tick if events.tick else None,
    ), port)
