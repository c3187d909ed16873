"""The records of the evio API: actions, callbacks, per-connection facts and options.

Plain frozen data, checked when built. This module owns what a callback
receives and what it may return, and turning a return value into
(output, options, action) -- the one place a wrong answer becomes the
TypeError of EV-6.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Action(enum.Enum):
    """What the loop does after a callback returns."""

    NONE = 0
    DETACH = 1
    CLOSE = 2
    SHUTDOWN = 3


class OutputLimitError(Exception):
    """A connection's pending output passed its ``max_pending`` limit."""


@dataclass(frozen=True, slots=True)
class Info:
    """What ``opened`` learns about a connection."""

    closing: bool
    addr_index: int
    local_addr: Any
    remote_addr: Any


def _positive(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number of seconds, not {value!r}")


@dataclass(frozen=True, slots=True)
class Options:
    """Per-connection options, returned from ``opened``."""

    tcp_keepalive: float | None = None
    reuse_input_buffer: bool = False
    high_water: int = 65536
    low_water: int = 16384
    idle_timeout: float | None = None
    max_pending: int | None = None

    def __post_init__(self) -> None:
        _positive("tcp_keepalive", self.tcp_keepalive)
        _positive("idle_timeout", self.idle_timeout)
        if not (isinstance(self.low_water, int) and isinstance(self.high_water, int)
                and 0 <= self.low_water <= self.high_water):
            raise ValueError(f"the water marks must be 0 <= low_water <= high_water, not "
                             f"{self.low_water!r} and {self.high_water!r}")
        if self.max_pending is not None and (
                isinstance(self.max_pending, bool) or not isinstance(self.max_pending, int)
                or self.max_pending < 0):
            raise ValueError(f"max_pending must be a non-negative integer, not "
                             f"{self.max_pending!r}")


@dataclass(slots=True)
class Events:
    """The callbacks a server is made of; every one is optional."""

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
    """Joins messages that arrive split across reads (EV-15)."""

    def __init__(self) -> None:
        self._kept = b""

    def __len__(self) -> int:
        """How many bytes the last `end` kept."""
        return len(self._kept)

    def begin(self, packet: Any) -> bytes:
        """Return what the last `end` kept, followed by ``packet``, as bytes."""
        return self._kept + bytes(packet)

    def end(self, rest: Any) -> None:
        """Keep a copy of ``rest`` for the next `begin`."""
        self._kept = bytes(rest)


_OUTPUT = (bytes, bytearray, memoryview)


def _output(value: Any, who: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, memoryview):
        return value.tobytes()  # any format or shape: its bytes in order
    if isinstance(value, _OUTPUT):
        return bytes(value)
    raise TypeError(f"{who} returned a {type(value).__name__} ({value!r}) as output: "
                    f"expected bytes, bytearray, memoryview or None")


def _action(value: Any, who: str) -> Action:
    if value is None:
        return Action.NONE
    if isinstance(value, Action):
        return value
    raise TypeError(f"{who} returned a {type(value).__name__} ({value!r}) as an action: "
                    f"expected an Action or None")


def reply(value: Any, who: str, opened: bool = False) -> tuple[bytes, Options | None, Action]:
    """Split a callback's answer into (output, options, action) (EV-3, EV-4, EV-6).

    Raises:
        TypeError: the answer is none of the shapes ``who`` may return.
    """
    if type(value) is bytes:
        return value, None, Action.NONE
    if value is None:
        return b"", None, Action.NONE
    if isinstance(value, _OUTPUT):
        return _output(value, who), None, Action.NONE
    if isinstance(value, Action):
        return b"", None, value
    if opened and isinstance(value, Options):
        return b"", value, Action.NONE
    if isinstance(value, tuple):
        who = f"{who} (in a tuple)"
        if len(value) == 2:
            return _output(value[0], who), None, _action(value[1], who)
        if opened and len(value) == 3:
            options = value[1]
            if options is not None and not isinstance(options, Options):
                raise TypeError(f"{who} returned a {type(options).__name__} ({options!r}) as "
                                f"options: expected Options or None")
            return _output(value[0], who), options, _action(value[2], who)
    raise TypeError(f"{who} returned a {type(value).__name__} ({value!r}): expected None, "
                    f"bytes, an Action or a tuple")


def action_only(value: Any, who: str) -> Action:
    """The action of a callback that may return only ``None`` or an Action (EV-5)."""
    return _action(value, who)
