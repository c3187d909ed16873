"""Translate: pass chosen connections' bytes through a sans-I/O translator.

Theory of operation
-------------------
Some protocols sit *between* the socket and the application: TLS encrypts,
a compressor squeezes.  Go's evio ran each translated connection on two
goroutines joined by pipes, re-entering the loop through ``Wake``.  Python
has a better fit: the protocol libraries are already *sans-I/O* --
``ssl.SSLObject`` over two ``ssl.MemoryBIO`` buffers, ``zlib`` compress and
decompress objects -- bytes in, bytes out, no sockets, no threads.  So the
loop itself pumps them:

* inbound, every read goes through `Translator.receive`, which
  returns the plaintext for ``data`` *and* any wire bytes the protocol wants
  to send in answer (a TLS handshake is mostly this);
* outbound, every output -- from ``opened``, ``data``, a woken ``data`` --
  goes through `Translator.send` before it is queued;
* on ``CLOSE``, `Translator.close` supplies the protocol's goodbye
  (a TLS ``close_notify``), sent before the socket closes.

`translate` marks an `evio.Events` record with the choice
function and the translator factory; the loop asks ``should(id, info)``
once per connection, as it opens, and keeps the translator in the
connection's record.  A connection that is not translated pays one
attribute test per read and per write, nothing more.

The translators themselves live in `evio.translators`; this module is the
choice (`translate`) and the pump (`Pump`), which `evio.streams` calls at
each of those points.

Errors: a translator that raises (a TLS handshake failure, a plain-text
client on a TLS port, corrupt compressed data) closes *that* connection;
whatever wire bytes the protocol produced (a TLS alert) are sent first, and
the exception becomes ``closed``'s ``err`` unless the connection already had
one.  It is not logged as a callback error: it is the peer's doing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from .callbacks import Policy, Side
from .events import Events, Info
from .lifecycle import LIVE, WRITABLE, Conn, On, State
from .timers import Timers
from .translators import Passthrough, Translator, ZlibTranslator

if TYPE_CHECKING:
    from .events import Buffer

__all__ = ["Passthrough", "Pump", "Translator", "ZlibTranslator", "translate"]

log = logging.getLogger("evio")

Should = Callable[[int, Info], bool]
Factory = Callable[[int, Info], Translator]


# TR-1
def translate(events: Events, should: Should | None, factory: Factory, *,
              handshake_timeout: float | None = None) -> Events:
    """Return events whose chosen connections' bytes pass through translators.

    Args:
        events: The server's callbacks; they see plaintext.
        should: ``should(id, info)`` is asked once per connection as it
            opens; ``True`` translates it. ``None`` translates every one.
        factory: ``factory(id, info)`` makes the connection's translator.
        handshake_timeout: Seconds a translated connection has, from the
            moment it opens, to finish its handshake (its translator's
            ``handshake_done`` turns true); one still handshaking then is
            aborted -- pending output dropped, the peer reset -- with
            ``closed(id, TimeoutError)`` (rule TIMER-5). ``None`` (the
            default): no limit.

    Returns:
        A copy of ``events`` carrying the translation. Pass it to
        `evio.serve`.

    Raises:
        ValueError: ``events`` is already translated, or
            ``handshake_timeout`` is not a positive finite number.
    """
    if events.translation is not None:
        raise ValueError("these events are already translated; translate the original ones")
    t = handshake_timeout
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)
                          or not 0 < t < float("inf")):
        raise ValueError(f"handshake_timeout must be a positive number of seconds, not {t!r}")
    return dataclasses.replace(events, translation=(
        should or _always, factory, None if t is None else float(t)))


def _always(cid: int, info: Info) -> bool:
    return True


def as_bytes(b: Buffer) -> bytes:
    """Translators take ``bytes``: copy views and bytearrays."""
    return b if type(b) is bytes else bytes(b)


class _Stream(Side[Conn], Protocol):
    """What the pump asks of `evio.streams.Streams`."""

    policy: Policy

    def write(self, c: Conn, out: Any) -> None: ...

    def finish(self, c: Conn, on: On, err: BaseException | None) -> None: ...

    def abort(self, c: Conn, err: BaseException | None = None) -> None: ...

    timers: Timers


class Pump:
    """Moves a stream's bytes through its translator, both ways.

    Args:
        streams: The loop's stream connections.
        should: Which connections to translate.
        factory: Makes a connection's translator.
        handshake_timeout: Seconds to finish a handshake, or ``None``.
    """

    def __init__(self, streams: _Stream, should: Should, factory: Factory,
                 handshake_timeout: float | None = None) -> None:
        self.streams = streams
        self.should = should
        self.factory = factory
        self.handshake_timeout = handshake_timeout

    # TR-2, TR-3, TR-8
    def setup(self, c: Conn, info: Info) -> Exception | None:
        """Ask ``should``; make and start the translator. The error, if any."""
        try:
            if self.should(c.id, info):
                c.translator = self.factory(c.id, info)
                # Queued, not sent: a send could fail and close the
                # connection before opened has been called.
                c.pending += c.translator.start()
                if self.handshake_timeout is not None and not c.translator.handshake_done:
                    t = self.streams.timers.at(time.monotonic() + self.handshake_timeout,
                                               partial(self._handshake_due, c))
                    c.user_timers = [t]  # cancelled when the connection goes
        except Exception as e:
            return e
        return None

    def _handshake_due(self, c: Conn) -> None:
        """``handshake_timeout`` ran out: abort ``c`` if it is still handshaking (TIMER-5)."""
        tr = c.translator
        if c.state in LIVE and tr is not None and not tr.handshake_done:
            self.streams.abort(c, TimeoutError(
                f"connection {c.id}: handshake not done in {self.handshake_timeout}s"))

    # TR-4
    def receive(self, c: Conn, wire: Any) -> None:
        """Wire bytes in; its reply out; plaintext to ``data``."""
        tr = c.translator
        assert tr is not None
        try:
            plain, reply = tr.receive(as_bytes(wire))
        except Exception as e:
            self.failed(c, tr, e)
            return
        s = self.streams
        if tr.ended:
            # The peer ended the protocol stream and may be gone already. Its
            # reply is queued, not sent, so that a failed send cannot close
            # the connection before ``data`` has the plaintext; the output of
            # ``data`` queues behind it, in order (TLS records must not be
            # reordered). Then a failed write is orderly (TR-6).
            c.peer_said_goodbye = True
            if reply and c.state in WRITABLE:  # as `write` would, without sending
                c.pending += reply
            if plain and c.state is State.OPEN:
                s.policy.data(s, c, plain)
            s.finish(c, On.PEER_EOF, None)
            return
        if reply:
            s.write(c, reply)
        if plain and c.state is State.OPEN:
            s.policy.data(s, c, plain)

    def encode(self, c: Conn, plain: Any) -> bytes:
        """Outbound plaintext to wire bytes (empty: held back, or it failed)."""
        tr = c.translator
        assert tr is not None
        try:
            return tr.send(as_bytes(plain))
        except Exception as e:
            self.failed(c, tr, e)
            return b""

    # TR-5
    def goodbye(self, c: Conn) -> bytes:
        """Detach the translator and return its goodbye (a TLS ``close_notify``)."""
        tr, c.translator = c.translator, None
        assert tr is not None
        try:
            return tr.close()
        except Exception:
            return b""  # a goodbye is a courtesy; the close goes on

    def eof(self, c: Conn) -> BaseException | None:
        """The peer ended its byte stream: the error for ``closed``, if any."""
        assert c.translator is not None
        try:
            return c.translator.eof()
        except Exception as e:
            return e

    # TR-7
    def failed(self, c: Conn, tr: Translator, e: Exception) -> None:
        """The peer broke the translated protocol: send the alert, close with ``e``."""
        log.debug("translator for connection %d failed: %r", c.id, e)
        c.translator = None  # nothing more goes through it, close_notify included
        alert = getattr(tr, "alert", b"")
        s = self.streams
        if alert and c.state in LIVE:
            s.write(c, alert)
        if c.state is State.OPEN:
            s.finish(c, On.TRANSLATOR_RAISED, e)
        elif c.err is None:
            c.err = e
