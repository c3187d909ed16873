"""Translators: sans-I/O byte transformers for one connection each.

Theory of operation
-------------------
A translator is a protocol layer with no socket: bytes in, bytes out, in
both directions -- the shape of ``ssl.SSLObject`` over memory buffers and of
``zlib``'s compress and decompress objects.  Because it never touches a
socket or blocks, the loop can pump it in line with its own reads and
writes (`evio.translate` says how); a translator is therefore easy to test
on its own, with plain byte strings.

This module holds the interface, `Translator`, and two small ones:
`Passthrough` (the identity, a template) and `ZlibTranslator` (a
compressed stream).  TLS lives in `evio.tls`.
"""

from __future__ import annotations

import zlib

__all__ = ["Passthrough", "Translator", "ZlibTranslator"]


class Translator:
    """Bytes in, bytes out, in both directions, for one connection.

    Subclasses override what they need; the base class passes bytes through
    unchanged. No method may block or touch a socket.

    Attributes:
        ended: Set by `receive` when the peer ended the protocol
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

    @property
    def handshake_done(self) -> bool:
        """Whether the protocol's opening exchange is over.

        `evio.translate`'s ``handshake_timeout`` closes a connection whose
        translator still answers ``False`` when it runs out (TIMER-5). A
        protocol without a handshake keeps this default: always ``True``.
        """
        return True


class Passthrough(Translator):
    """The identity translator: useful as a template and in tests."""


# ZLIB-1
class ZlibTranslator(Translator):
    """A zlib stream in both directions.

    Each output is compressed and sync-flushed, so the peer can decompress
    it at once; `close` ends the stream. Inbound data is decompressed
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

    # ZLIB-2
    def receive(self, wire: bytes) -> tuple[bytes, bytes]:
        # Ask for one byte more than allowed: getting it is the only sure
        # sign (zlib may hold output back with no input left unconsumed).
        plain = self._d.decompress(wire, self._max + 1)
        if len(plain) > self._max:
            raise ValueError(f"compressed input expands beyond {self._max} bytes in one read")
        if self._d.eof:
            self.ended = True
        return plain, b""

    def send(self, plain: bytes) -> bytes:
        return self._c.compress(plain) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def close(self) -> bytes:
        return self._c.flush(zlib.Z_FINISH)
