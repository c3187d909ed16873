"""TLS on the loop: ``ssl.SSLObject`` over memory buffers, no threads.

Theory of operation
-------------------
Python's ``ssl`` module has two faces.  ``SSLSocket`` owns a socket and
blocks; ``SSLObject`` owns nothing: it reads TLS records from one
``ssl.MemoryBIO`` (the *incoming* buffer we fill with bytes from the wire)
and writes records to another (the *outgoing* buffer we empty onto the
wire).  Every call either completes or raises ``SSLWantReadError``, which
here simply means "feed me more bytes from the peer".  That makes TLS a
`evio.translators.Translator`:

* `TLSTranslator.receive` writes the wire bytes into the incoming buffer, advances
  the handshake if it is not done, reads whatever plaintext is now
  complete, and returns it with whatever the outgoing buffer holds (server
  hello, certificates, session tickets, alerts);
* `TLSTranslator.send` encrypts plaintext -- or, while the handshake is still
  running, holds it and encrypts it the moment the handshake completes;
* `TLSTranslator.close` writes ``close_notify``.

The traps:

* A handshake *failure* still produces bytes to send (an alert).  The
  exception is raised after those bytes are saved, and
  `TLSTranslator.alert` holds them; the loop sends them before closing.
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
import ssl

from .translators import Translator

__all__ = ["TLSTranslator", "client_context", "server_context"]

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
