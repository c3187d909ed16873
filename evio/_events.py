"""Events and actions: what the loop calls, and what a callback may answer.

Owns: the vocabulary between the user and the loop: the callbacks record,
the actions, the options, and the reading of a callback's answer.

Theory of operation
-------------------
A server is a set of optional callbacks -- an `Events` record -- and
the loop calls each one at a fixed point in a connection's life.  A callback
answers with *output* (bytes to send) and an *action* (what to do next).

The answer is the hot path: ``data`` runs once per read, and most servers
just return bytes.  So the common case is the short one -- return ``bytes``
(or ``None`` for nothing) -- and the loop checks ``type(r) is bytes`` before
anything else.  The longer shapes (an `Action` alone, a tuple of
output and action, `Options` from ``opened``) are unpacked by
`split_reply()` off the hot path.  Any other shape is a ``TypeError``,
handled like an exception raised by the callback (see the spec page
*Events and actions*).

Everything the user receives is a frozen record (`Info`); everything
the user hands in is validated once, when it is built (`Options`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from ._addresses import SockAddr
from ._detach import DetachedConn

if TYPE_CHECKING:
    from ._server import Server

__all__ = [
    "Action",
    "Events",
    "Info",
    "InputStream",
    "OpenedReply",
    "Options",
    "Out",
    "OutputLimitError",
    "Reply",
    "TickReply",
    "split_reply",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
FOREVER = 1e18
"""Seconds that stand for "never": a longer timeout or delay is cut to it,
as a float (``10**400`` is a valid int that no float can hold)."""


class Action(enum.Enum):
    """What the loop does after a callback returns.

    Attributes:
        NONE: Carry on.
        DETACH: Take the connection out of the loop and hand its socket to
            the ``detached`` callback.
        CLOSE: Send what is pending, then close the connection.
        SHUTDOWN: Stop the server: close every connection and return from
            `serve()`.
        ABORT: Close the connection at once, dropping its pending output
            (output returned with it included); a TCP peer sees a reset
            (like asyncio's ``transport.abort()``). For a UDP remote, as
            ``CLOSE``.
    """

    NONE = 0
    DETACH = 1
    CLOSE = 2
    SHUTDOWN = 3
    ABORT = 4


@dataclass(frozen=True, slots=True)
class Options:
    """Per-connection options, returned from ``opened``.

    Attributes:
        tcp_keepalive: Seconds of idleness before TCP keep-alive probes
            start, and between probes; ``None`` leaves keep-alive off.
            Ignored for unix sockets.
        reuse_input_buffer: When true, ``data`` receives a ``memoryview``
            into the loop's shared read buffer, valid only during that call
            (the loop releases it afterwards). When false (the default),
            ``data`` receives ``bytes`` that the callback owns.
        high_water: When more than this many bytes of output are pending,
            the loop stops reading the connection ...
        low_water: ... until no more than this many are pending.
        idle_timeout: Seconds without a byte read or written after which
            the connection is closed with ``closed(id, TimeoutError)``;
            ``None`` (the default) never.
        max_pending: A hard limit on pending output: when more than this
            many bytes are pending, the connection is closed at once, its
            pending output dropped, with ``closed(id, OutputLimitError)``.
            ``None`` (the default): no limit beyond the water marks.
        linger_timeout: Once a TCP connection that is closing has handed
            all its output to the kernel, it shuts its write side and
            lingers -- reading and discarding what the peer still sends --
            until the kernel holds none of its output unacknowledged, the
            peer ends its stream, or this many seconds have passed (rule
            LOOP-14); only then is the socket closed and ``closed``
            called. Default 2; ``0`` closes at once (a peer that sent
            bytes we did not read may then get a reset that cuts the
            reply).
        linger_bytes: Most bytes a lingering close discards before it
            closes anyway. Default 1 MiB.

    Raises:
        ValueError: ``tcp_keepalive`` or ``idle_timeout`` is not a positive
            finite number, the water marks are not ``0 <= low_water <=
            high_water``, ``max_pending`` or ``linger_bytes`` is not a
            non-negative integer, or ``linger_timeout`` is not a finite
            number ``>= 0``.
    """

    tcp_keepalive: float | None = None
    reuse_input_buffer: bool = False
    high_water: int = 65536
    low_water: int = 16384
    idle_timeout: float | None = None
    max_pending: int | None = None
    linger_timeout: float = 2.0
    linger_bytes: int = 1048576  # 1 MiB

    def __post_init__(self) -> None:
        lt, lb = self.linger_timeout, self.linger_bytes
        if isinstance(lt, bool) or not isinstance(lt, int | float) or not 0 <= lt < float("inf"):
            raise ValueError(f"linger_timeout must be a number of seconds >= 0, not {lt!r}")
        if not (type(lb) is int and lb >= 0):
            raise ValueError(f"linger_bytes must be a non-negative integer, not {lb!r}")
        for name in ("tcp_keepalive", "idle_timeout"):
            v = getattr(self, name)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf")
            ):
                raise ValueError(f"{name} must be a positive number of seconds, not {v!r}")
        hi, lo = self.high_water, self.low_water
        if not (type(hi) is int and type(lo) is int and 0 <= lo <= hi):
            raise ValueError(
                f"water marks must be integers with 0 <= low_water <= high_water, "
                f"not low_water={lo!r}, high_water={hi!r}"
            )
        mp = self.max_pending
        if mp is not None and not (type(mp) is int and mp >= 0):
            raise ValueError(f"max_pending must be a non-negative integer or None, not {mp!r}")


class OutputLimitError(BufferError):
    """A connection had more output pending than its ``Options.max_pending``.

    ``closed(id, err)`` receives it; the connection's pending output was
    dropped (like Redis's ``client-output-buffer-limit``).
    """


# EV-14: frozen
@dataclass(frozen=True, slots=True)
class Info:
    """What ``opened`` learns about a connection.

    Attributes:
        closing: True when the connection is already closing as it opens
            (a failed dial); ``closed`` follows at once.
        addr_index: Index into `addrs` of the listener that
            accepted it; ``-1`` for a dialed connection.
        local_addr: Our end's address (``getsockname()``), a `SockAddr`;
            ``None`` when the socket was reset before it could be read, or
            for a dial that failed.
        remote_addr: The peer's address (``getpeername()``; ``""`` for an
            unnamed unix socket peer).
    """

    closing: bool
    addr_index: int
    local_addr: SockAddr | None
    remote_addr: SockAddr | None


Out: TypeAlias = bytes | bytearray | memoryview
"""Output a callback may return: bytes-like (``str`` is refused: encode it)."""

Reply: TypeAlias = Out | Action | tuple[Out | None, Action | None] | None
"""What ``data``, ``eof`` and ``drained`` may return; see `split_reply()`.
Precise enough that a type checker refuses ``return "text"`` (rule EV-23)."""

OpenedReply: TypeAlias = Reply | Options | tuple[Out | None, Options | None, Action | None]
"""What ``opened`` may return: a `Reply`, `Options`, or ``(out, options, action)``."""

TickReply: TypeAlias = float | tuple[float, Action] | Action | None
"""What ``tick`` may return: a delay, ``(delay, action)``, an `Action`, or ``None``."""


@dataclass(slots=True, kw_only=True)
class Events:
    """The callbacks a server is made of. Every one is optional.

    All callbacks run on the loop's thread, one at a time. Every field is
    given by keyword (``Events(data=data)``): ``Events(data)`` is a
    ``TypeError``, not a server whose ``serving`` is ``data`` (rule EV-23).

    Attributes:
        serving: ``serving(server)`` once, when every address is bound and
            before any connection is accepted. May return ``None`` or an
            `Action` (only ``SHUTDOWN`` has an effect).
        opened: ``opened(id, info)`` once per connection, before any
            ``data``. May return what ``data`` may, and also
            `Options`, or ``(out, options, action)``.
        closed: ``closed(id, err)`` exactly once per opened connection;
            ``err`` is ``None`` for an orderly end, else the exception that
            ended it. May return ``None`` or an `Action`.
        detached: ``detached(id, conn)`` after a ``DETACH`` action.
        data: ``data(id, data)`` for each read. May return ``None``, bytes
            (``bytes``, ``bytearray`` or ``memoryview``) to send, an
            `Action`, or ``(out, action)``.
        prewrite: ``prewrite(id, amount)`` just before each write attempt.
            May return ``None`` or an `Action`.
        postwrite: ``postwrite(id, amount, remaining)`` just after each
            write attempt: ``amount`` written, ``remaining`` still pending.
            May return ``None`` or an `Action`.
        eof: ``eof(id)`` when the peer ends its stream (a read returns 0
            bytes) on a connection that is not translated. Setting it
            chooses half-close: the connection stays open for writing
            (*writing only*) until a callback returns ``CLOSE`` or
            `evio.Server.shutdown_write` is called. May return what
            ``data`` may. Unset (the default): the connection finishes.
        drained: ``drained(id)`` once each time a connection's pending
            output falls to its low-water mark after having been above its
            high-water mark. May return what ``data`` may.
        tick: ``tick()`` right after ``serving``, then again after the delay
            it returns. May return a delay in seconds, ``(delay, action)``,
            or ``None`` / an `Action` alone to stop ticking.
        udp_idle_timeout: Seconds after its last datagram at which a UDP
            remote is forgotten (``closed(id, None)``); ``None``: never.
        udp_max_remotes: Most UDP remotes known at once; a new remote past
            it makes the least recently heard one forgotten first.
        translation: ``(should, factory, handshake_timeout)``, set by
            `evio.translate`: which stream connections pass through a
            translator, how to make one, and how long its handshake may
            take. Leave it ``None`` and use `evio.translate`.
    """

    serving: Callable[[Server], Action | None] | None = None
    opened: Callable[[int, Info], OpenedReply] | None = None
    closed: Callable[[int, BaseException | None], Action | None] | None = None
    detached: Callable[[int, DetachedConn], Action | None] | None = None
    # ``data`` gets bytes, a memoryview (reuse_input_buffer) or None (a
    # wake): Any, so that a callback may declare just the ones it expects.
    data: Callable[[int, Any], Reply] | None = None
    prewrite: Callable[[int, int], Action | None] | None = None
    postwrite: Callable[[int, int, int], Action | None] | None = None
    tick: Callable[[], TickReply] | None = None
    eof: Callable[[int], Reply] | None = None
    drained: Callable[[int], Reply] | None = None
    udp_idle_timeout: float | None = 60.0
    udp_max_remotes: int = 65536
    # The factory's return is a `evio.Translator`; Any here because this module
    # sits below the translation module (which imports it), and a type-only
    # import back would make a cycle (LOOP-25).
    translation: tuple[Callable[[int, Info], bool], Callable[[int, Info], Any],
                       float | None] | None = None


_NO_OUTPUT = (None, Action.NONE)


# EV-3: what data may return
def split_reply(r: object) -> tuple[Buffer | None, Action]:
    """Unpack what ``data`` (or ``opened``, without options) returned.

    Args:
        r: ``None``; ``bytes``/``bytearray``/``memoryview``; an
            `Action`; or a 2-tuple ``(out, action)`` where ``out`` is
            ``None`` or bytes-like and ``action`` is an `Action` or
            ``None``.

    Returns:
        ``(out, action)``.

    Raises:
        TypeError: ``r`` is none of those shapes.
    """
    if r is None:
        return _NO_OUTPUT
    if isinstance(r, bytes | bytearray | memoryview):
        return (octets(r) if type(r) is memoryview else r), Action.NONE
    if type(r) is Action:
        return None, r
    if type(r) is tuple and len(r) == 2:
        out, action = r
        if (out is None or isinstance(out, bytes | bytearray | memoryview)) and (
            action is None or type(action) is Action
        ):
            return (octets(out) if type(out) is memoryview else out), action or Action.NONE
    hint = " (to send text, return text.encode())" if isinstance(r, str) or (
        type(r) is tuple and r and isinstance(r[0], str)) else ""
    raise TypeError(
        "a callback must return None, bytes, an Action or (bytes, Action); "
        f"got {_describe(r)}{hint}"
    )


def octets(view: memoryview) -> memoryview:
    """``view`` as one flat run of bytes: what it holds, byte for byte.

    The loop counts and slices output in bytes, as ``send`` does; a view
    of wider items (an ``array('i')``), of several dimensions or with
    strides would be counted in items.  A flat byte view comes back as it
    is; a contiguous one is recast without a copy; a strided one is copied.
    """
    if view.itemsize == 1 and view.ndim == 1 and view.c_contiguous:
        return view
    return view.cast("B") if view.c_contiguous else memoryview(view.tobytes())


# EV-4: what opened may return
def split_opened(r: object) -> tuple[Buffer | None, Options | None, Action]:
    """Unpack what ``opened`` returned: anything `split_reply()` takes,
    an `Options`, or ``(out, options, action)``.

    Raises:
        TypeError: the shape is not one of those.
    """
    if type(r) is Options:
        return None, r, Action.NONE
    if type(r) is tuple and len(r) == 3:
        out, options, action = r
        if options is None or type(options) is Options:
            o, a = split_reply((out, action))
            return o, options, a
        raise TypeError(f"opened's options must be an evio.Options; got {_describe(options)}")
    out, action = split_reply(r)
    return out, None, action


# EV-5: action-only callbacks
def split_action(r: object, who: str) -> Action:
    """An action-only answer (``serving``, ``closed``, ``prewrite`` ...).

    Raises:
        TypeError: ``r`` is neither ``None`` nor an `Action`.
    """
    if r is None:
        return Action.NONE
    if type(r) is Action:
        return r
    raise TypeError(f"{who} must return None or an evio.Action; got {_describe(r)}")


# TICK-2, TICK-3, TICK-4
def split_tick(r: object) -> tuple[float | None, Action]:
    """Unpack what ``tick`` returned into ``(delay or None, action)``.

    ``None`` as the delay means the ticker stops.

    Raises:
        TypeError: the shape is not a number, ``(number, Action)``, an
            `Action` or ``None``.
        ValueError: the delay is negative or not finite.
    """
    delay: object
    action: object = Action.NONE
    if r is None:
        return None, Action.NONE
    if type(r) is Action:
        return None, r
    if type(r) is tuple and len(r) == 2:
        delay, action = r
    else:
        delay = r
    if isinstance(delay, bool) or not isinstance(delay, int | float) or type(action) is not Action:
        raise TypeError(
            f"tick must return seconds, (seconds, Action), an Action or None; got {_describe(r)}"
        )
    if not 0 <= delay < float("inf"):
        raise ValueError(f"tick returned a delay of {delay!r}; it must be >= 0 and finite")
    return float(min(delay, FOREVER)), action


# EV-6: TypeError naming the value
def _describe(r: object) -> str:
    text = repr(r)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(r).__name__} {text}"


# EV-15
class InputStream:
    """Reassembles messages that arrive split across reads.

    Call `begin` with each packet to get everything not yet consumed,
    parse as much as you can, then hand the unconsumed tail to `end`.

    Example:
        ```python
        stream = InputStream()              # one per connection
        buf = stream.begin(packet)
        while b"\\n" in buf:
            line, _, buf = buf.partition(b"\\n")
            ...
        stream.end(buf)
        ```
    """

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept = b""

    def begin(self, packet: Buffer) -> bytes:
        """Return what was kept by the last `end`, followed by ``packet``.

        The result is always ``bytes`` the caller owns, even when ``packet``
        is a view into the loop's reusable buffer.
        """
        kept, self._kept = self._kept, b""
        return kept + packet if kept else bytes(packet)

    def end(self, rest: Buffer) -> None:
        """Keep ``rest`` (the unconsumed tail) for the next `begin`."""
        self._kept = bytes(rest)

    def __len__(self) -> int:
        """How many bytes are kept."""
        return len(self._kept)
