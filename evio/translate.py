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

* inbound, every read goes through :meth:`Translator.receive`, which
  returns the plaintext for ``data`` *and* any wire bytes the protocol wants
  to send in answer (a TLS handshake is mostly this);
* outbound, every output -- from ``opened``, ``data``, a woken ``data`` --
  goes through :meth:`Translator.send` before it is queued;
* on ``CLOSE``, :meth:`Translator.close` supplies the protocol's goodbye
  (a TLS ``close_notify``), sent before the socket closes.

:func:`translate` marks an :class:`~evio.Events` record with the choice
function and the translator factory; the loop asks ``should(id, info)``
once per connection, as it opens, and keeps the translator in the
connection's record.  A connection that is not translated pays one
attribute test per read and per write, nothing more.

Errors: a translator that raises (a TLS handshake failure, a plain-text
client on a TLS port, corrupt compressed data) closes *that* connection;
whatever wire bytes the protocol produced (a TLS alert) are sent first, and
the exception becomes ``closed``'s ``err`` unless the connection already had
one.  It is not logged as a callback error: it is the peer's doing.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from .events import Events, Info

if TYPE_CHECKING:
    from .events import Buffer

__all__ = ["Passthrough", "Translator", "ZlibTranslator", "translate"]


class Translator:
    """Bytes in, bytes out, in both directions, for one connection.

    Subclasses override what they need; the base class passes bytes through
    unchanged. No method may block or touch a socket.

    Attributes:
        ended: Set by :meth:`receive` when the peer ended the protocol
            stream (a TLS ``close_notify``): the loop then closes the
            connection after sending what is pending.
    """

    ended: bool = False

    def start(self) -> bytes:
        """Wire bytes to send as the connection opens (a TLS client hello)."""
        return b""

    def receive(self, wire: bytes) -> tuple[bytes, bytes]:
        """Feed bytes read from the socket.

        Returns:
            ``(plain, reply)``: plaintext for ``data`` (maybe empty), and
            wire bytes to send back (maybe empty).

        Raises:
            Exception: the peer sent something the protocol rejects; the
                connection closes with it.
        """
        return wire, b""

    def send(self, plain: bytes) -> bytes:
        """Turn outbound plaintext into wire bytes (may hold it back until
        the protocol is ready, e.g. during a TLS handshake)."""
        return plain

    def close(self) -> bytes:
        """Wire bytes that end the protocol stream (a TLS ``close_notify``)."""
        return b""

    def eof(self) -> BaseException | None:
        """The peer ended its byte stream: is that an error for the protocol?

        Returns:
            The error for ``closed`` (a TLS handshake cut short), or ``None``
            when ending here is orderly.
        """
        return None


class Passthrough(Translator):
    """The identity translator: useful as a template and in tests."""


class ZlibTranslator(Translator):
    """A zlib stream in both directions.

    Each output is compressed and sync-flushed, so the peer can decompress
    it at once; :meth:`close` ends the stream. Inbound data is decompressed
    as it arrives; corrupt input raises ``zlib.error``.

    Args:
        level: Compression level, 0-9.
        max_plain: Largest plaintext one read may expand to; more is a
            ``ValueError`` (a "zip bomb" guard).
    """

    def __init__(self, level: int = 6, max_plain: int = 16 << 20) -> None:
        self._c = zlib.compressobj(level)
        self._d = zlib.decompressobj()
        self._max = max_plain

    def receive(self, wire: bytes) -> tuple[bytes, bytes]:
        plain = self._d.decompress(wire, self._max)
        if self._d.unconsumed_tail:
            raise ValueError(f"compressed input expands beyond {self._max} bytes in one read")
        if self._d.eof:
            self.ended = True
        return plain, b""

    def send(self, plain: bytes) -> bytes:
        return self._c.compress(plain) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def close(self) -> bytes:
        return self._c.flush(zlib.Z_FINISH)


Should = Callable[[int, Info], bool]
Factory = Callable[[int, Info], Translator]


def translate(events: Events, should: Should | None, factory: Factory) -> Events:
    """Return events whose chosen connections' bytes pass through translators.

    Args:
        events: The server's callbacks; they see plaintext.
        should: ``should(id, info)`` is asked once per connection as it
            opens; ``True`` translates it. ``None`` translates every one.
        factory: ``factory(id, info)`` makes the connection's translator.

    Returns:
        A copy of ``events`` carrying the translation. Pass it to
        `serve()`.

    Raises:
        ValueError: ``events`` is already translated.
    """
    if events.translation is not None:
        raise ValueError("these events are already translated; translate the original ones")
    return dataclasses.replace(events, translation=(should or _always, factory))


def _always(cid: int, info: Info) -> bool:
    return True


def as_bytes(b: Buffer) -> bytes:
    """Translators take ``bytes``: copy views and bytearrays."""
    return b if type(b) is bytes else bytes(b)
