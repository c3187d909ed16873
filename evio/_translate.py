"""Translate: the user-facing translation API -- the choice, the interface,
the built-in translators (identity, zlib, TLS).

Owns: every name a user needs to put a protocol layer between the socket
and ``data``; how the loop pumps a translator lives with the connection
(`evio._streams`, "translated connections").

Theory of operation
-------------------
Some protocols sit *between* the socket and the application: TLS encrypts,
a compressor squeezes.  Go's evio ran each translated connection on two
goroutines joined by pipes, re-entering the loop through ``Wake``.  Python
has a better fit: the protocol libraries are already *sans-I/O* --
``ssl.SSLObject`` over two ``ssl.MemoryBIO`` buffers, ``zlib`` compress and
decompress objects -- bytes in, bytes out, no sockets, no threads.  A
translator therefore never touches a socket or blocks, and is easy to test
on its own, with plain byte strings.  The loop pumps it in line with its
own reads and writes:

* inbound, every read goes through `Translator.receive`, which returns the
  plaintext for ``data`` *and* any wire bytes the protocol wants to send in
  answer (a TLS handshake is mostly this);
* outbound, every output -- from ``opened``, ``data``, a woken ``data`` --
  goes through `Translator.send` before it is queued;
* on ``CLOSE``, `Translator.close` supplies the protocol's goodbye (a TLS
  ``close_notify``), sent before the socket closes.

`translate` marks an `evio.Events` record with the choice function and the
translator factory; the loop asks ``should(id, info)`` once per connection,
as it opens, and keeps the translator in the connection's record.  A
connection that is not translated pays one attribute test per read and per
write, nothing more.  Every attribute the loop reads from a translator is
declared on `Translator` (``ended``, ``alert``, ``handshake_done``).

Errors: a translator that raises (a TLS handshake failure, a plain-text
client on a TLS port, corrupt compressed data) closes *that* connection;
whatever wire bytes the protocol produced (`Translator.alert`) are sent
first, and the exception becomes ``closed``'s ``err`` unless the connection
already had one.  It is not logged as a callback error: it is the peer's
doing.

TLS on the loop
---------------
Python's ``ssl`` module has two faces.  ``SSLSocket`` owns a socket and
blocks; ``SSLObject`` owns nothing: it reads TLS records from one
``ssl.MemoryBIO`` (the *incoming* buffer we fill with bytes from the wire)
and writes records to another (the *outgoing* buffer we empty onto the
wire).  Every call either completes or raises ``SSLWantReadError``, which
here simply means "feed me more bytes from the peer".  So:

* `TLSTranslator.receive` writes the wire bytes into the incoming buffer,
  advances the handshake if it is not done, reads whatever plaintext is now
  complete, and returns it with whatever the outgoing buffer holds (server
  hello, certificates, session tickets, alerts);
* `TLSTranslator.send` encrypts plaintext -- or, while the handshake is
  still running, holds it and encrypts it the moment the handshake
  completes;
* `TLSTranslator.close` writes ``close_notify``.

The traps:

* A handshake *failure* still produces bytes to send (an alert).  The
  exception is raised after those bytes are saved in
  `TLSTranslator.alert`; the loop sends them before closing.
* The peer's ``close_notify`` is not an error: ``read`` returns ``b""``
  (or raises ``SSLZeroReturnError``). We mark the stream ended and return
  what plaintext came before it.
* A peer that speaks plain text to a TLS port gets an ``SSLError`` on the
  first bytes; only that connection closes.

Defaults: servers and clients refuse protocol versions below TLS 1.2;
clients verify the certificate chain and the host name, and send SNI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._events import Events, Info

__all__ = [
    "Passthrough",
    "TLSTranslator",
    "Translator",
    "ZlibTranslator",
    "client_context",
    "server_context",
    "translate",
]

Should = Callable[[int, "Info"], bool]
"""``should(id, info)``: whether to translate a connection as it opens."""
Factory = Callable[[int, "Info"], "Translator"]
"""``factory(id, info)``: the connection's translator."""


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


class Translator:
    """Bytes in, bytes out, in both directions, for one connection.

    Subclasses override what they need; the base class passes bytes through
    unchanged. No method may block or touch a socket.

    Attributes:
        ended: Set by `receive` when the peer ended the protocol
            stream (a TLS ``close_notify``): the loop then closes the
            connection after sending what is pending.
        alert: Wire bytes to send before closing when a method raised
            (a TLS alert telling the peer why); the loop reads it then.
    """

    ended: bool = False
    alert: bytes = b""

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


# ------------------------------------------------------------ TLS

_READ = 65536


# TLS-3
def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server-side context with our defaults (TLS 1.2 or newer).

    Args:
        certfile: PEM file with the certificate chain (and key, if
            ``keyfile`` is ``None``).
        keyfile: PEM file with the private key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


# TLS-6
def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """A client-side context that verifies peers (system CAs, or ``cafile``)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class TLSTranslator(Translator):
    """One TLS session, server or client side, pumped by the loop.

    Args:
        context: An ``ssl.SSLContext`` (see `server_context` and
            `client_context`).
        server_side: True for the accepting side.
        server_hostname: For a client: the name to verify and send as SNI.
            Required when the context checks host names.
    """

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        self._server_side = server_side
        self._ready = False
        self._held: list[bytes] = []
        self.alert = b""

    @property
    def handshake_done(self) -> bool:
        """Whether the handshake has completed."""
        return self._ready

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The underlying ``ssl.SSLObject`` (peer certificate, cipher, ALPN ...)."""
        return self._tls

    def start(self) -> bytes:
        if not self._server_side:
            self._handshake()  # writes the client hello
        return self._out.read()

    # TLS-1
    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError:
            self.alert = self._out.read()  # the alert that tells the peer why
            raise
        self._ready = True
        held, self._held = self._held, []
        for plain in held:
            self._tls.write(plain)

    # TLS-4
    def receive(self, wire: bytes) -> tuple[bytes, bytes]:
        self._in.write(wire)
        if not self._ready:
            self._handshake()
            if not self._ready:
                return b"", self._out.read()
        chunks = []
        tls, incoming = self._tls, self._in
        try:
            # Stop when nothing is left to decrypt, rather than asking once
            # more and catching SSLWantReadError: that costs a raise per read.
            while incoming.pending or tls.pending():
                chunk = tls.read(_READ)
                if not chunk:  # no data raises SSLWantReadError: b"" is the end
                    self.ended = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.ended = True  # close_notify: an orderly end
        except ssl.SSLError:
            self.alert = self._out.read()
            raise
        return b"".join(chunks), self._out.read()

    def send(self, plain: bytes) -> bytes:
        if not self._ready:  # TLS-2: held until the handshake completes
            self._held.append(plain)
            return b""
        self._tls.write(plain)
        return self._out.read()

    def eof(self) -> BaseException | None:
        if not self._ready:
            return ssl.SSLEOFError("the peer ended the stream during the TLS handshake")
        return None  # after the handshake a missing close_notify is tolerated

    # TLS-5
    def close(self) -> bytes:
        if self._ready:
            # close_notify is written; we do not wait for the peer's.
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
                self._tls.unwrap()
        return self._out.read()
