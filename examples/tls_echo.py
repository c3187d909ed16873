"""TLS echo server: the echo server again, with TLS pumped by the loop.

Every byte a client sends comes back, encrypted. The TLS work is done by
``evio.TLSTranslator`` -- an ``ssl.SSLObject`` over two memory buffers --
which ``evio.translate`` puts between the socket and the callbacks. The
callbacks below see only plaintext and are the plain echo server's; no
thread or coroutine is spent per connection::

    python examples/tls_echo.py                        # throwaway certificate
    python examples/tls_echo.py --cert chain.pem --key key.pem --port 4443
    python examples/tls_echo.py --also-plain 5000      # and plain echo on 5000

Without ``--cert`` and ``--key`` the server makes a throwaway CA and a
certificate for ``localhost``, ``127.0.0.1`` and ``::1`` (that needs the
``trustme`` package, a test dependency), and prints where it wrote the CA
so that clients can verify the server::

    openssl s_client -connect 127.0.0.1:4443 -CAfile CA.pem -servername localhost

``--also-plain PORT`` listens on a second, plain port on the same loop: the
``should`` function passed to ``evio.translate`` chooses which connections
speak TLS by the listener that accepted them (``info.addr_index``).

A connection silent for ``--idle-timeout`` seconds (60) is closed, and so
is one whose TLS handshake has not finished within ``--handshake-timeout``
seconds (10): a client that stops mid-handshake is not held for ever.
Both are the loop's own timers: ``Options(idle_timeout=...)`` from
``opened``, and ``evio.translate(..., handshake_timeout=...)``, which
aborts the connection and reports ``closed(id, TimeoutError)``.

Memory: as for the plain echo server, a client that sends without
reading costs at most the high-water mark (64 KiB) plus one read's worth
of encrypted output (64 KiB of plaintext and its record overhead) pending,
because the loop stops reading above the mark; add one TLS session
(OpenSSL's state and buffers). Measured: about 290 KiB per such client;
the stated bound is 512 KiB per client. A handshake never
finished costs that session for ``--handshake-timeout`` seconds at most,
an idle connection for ``--idle-timeout``. The number of connections is
bounded by the process's descriptor limit (``ulimit -n``).

Stop it with Ctrl-C (or SIGTERM): every TLS connection is sent a
``close_notify`` and closed, and the throwaway files are removed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import evio
from evio import TLSTranslator, server_context

TLS_LISTENER = 0
"""The TLS address is the first one given to ``serve()``; a plain one follows."""


def throwaway_certificate(directory: Path) -> tuple[Path, Path]:
    """Make a CA and a certificate for this machine's loopback names.

    Returns:
        ``(key_and_chain, ca)``: a PEM file with the private key and the
        certificate chain (for ``server_context``), and the CA's certificate
        (for clients).

    Raises:
        ImportError: ``trustme`` is not installed.
    """
    import trustme  # a test dependency: only needed when no certificate is given

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    key_and_chain = directory / "server.pem"
    ca_file = directory / "ca.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(key_and_chain))
    ca.cert_pem.write_to_path(str(ca_file))
    return key_and_chain, ca_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="evio TLS echo server (ssl.SSLObject pumped by the loop, no threads)")
    # REL-6: loopback unless --host says otherwise
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=4443, help="TLS port (default: 4443)")
    parser.add_argument("--cert", metavar="PEM",
                        help="certificate chain (may hold the key too); without --cert and "
                             "--key a throwaway certificate is made (needs trustme)")
    parser.add_argument("--key", metavar="PEM", help="private key, if not in --cert")
    parser.add_argument("--also-plain", type=int, metavar="PORT",
                        help="also serve plain (unencrypted) echo on this port")
    parser.add_argument("--poller", choices=evio.available_pollers(),
                        help="poller backend (default: the best available)")
    parser.add_argument("--quiet", action="store_true", help="do not log connections")
    parser.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="close a connection silent this long (default: 60; 0: never)")
    # REL-19
    parser.add_argument("--handshake-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="close a connection whose TLS handshake is not done this long "
                             "after it opened (default: 10)")
    args = parser.parse_args(argv)
    if not 0 <= args.idle_timeout < float("inf"):
        parser.error("--idle-timeout must be 0 or a positive number of seconds")
    if not 0 < args.handshake_timeout < float("inf"):
        parser.error("--handshake-timeout must be a positive number of seconds")
    if args.key and not args.cert:
        parser.error("--key needs --cert")

    if args.cert:
        return run(args, args.cert, args.key)
    # No certificate given: make one now, and remove it when we stop.
    with tempfile.TemporaryDirectory(prefix="evio-tls-") as workdir:
        try:
            key_and_chain, ca_file = throwaway_certificate(Path(workdir))
        except ImportError:
            print("tls echo: no --cert/--key given, and making a throwaway certificate "
                  "needs trustme (pip install trustme); or pass --cert and --key",
                  file=sys.stderr)
            return 1
        print(f"tls echo: no --cert/--key given; made a throwaway certificate for "
              f"localhost, 127.0.0.1 and ::1; clients verify it with CA file {ca_file}",
              flush=True)
        return run(args, str(key_and_chain), None)


def run(args: argparse.Namespace, cert: str, key: str | None) -> int:
    try:
        context = server_context(cert, key)
    except OSError as e:  # a missing file, a bad PEM, a key that does not match (SSLError)
        print(f"tls echo: cannot load the certificate: {e}", file=sys.stderr)
        return 1
    host = f"[{args.host}]" if ":" in args.host else args.host
    addrs = [f"tcp://{host}:{args.port}"]
    if args.also_plain is not None:
        addrs.append(f"tcp://{host}:{args.also_plain}")

    # TLS connections whose handshake we have not logged yet, by id.
    sessions: dict[int, TLSTranslator] = {}
    options = evio.Options(idle_timeout=args.idle_timeout or None)

    # Which connections speak TLS: asked once per connection, as it opens.
    def should(id: int, info: evio.Info) -> bool:
        return info.addr_index == TLS_LISTENER

    # The translator for a chosen connection: one SSLObject, two MemoryBIOs.
    def factory(id: int, info: evio.Info) -> TLSTranslator:
        tls = TLSTranslator(context, server_side=True)
        sessions[id] = tls
        return tls

    def serving(server: evio.Server) -> None:
        where = ", ".join(f"{a!s} ({'TLS' if i == TLS_LISTENER else 'plain'})"
                          for i, a in enumerate(server.addrs))
        print(f"tls echo server listening on {where} (poller: {server.poller})", flush=True)

    def opened(id: int, info: evio.Info) -> evio.Options:
        if not args.quiet:
            kind = "TLS" if id in sessions else "plain"
            print(f"{id}: opened from {info.remote_addr!s} ({kind})", flush=True)
        return options

    def data(id: int, data: bytes | None) -> bytes | None:
        if data is None:  # a wake: nobody sends one here
            return None
        # The first plaintext proves the handshake is done: say what it chose.
        tls = sessions.pop(id, None)
        if tls is not None and not args.quiet:
            obj = tls.ssl_object
            cipher = obj.cipher()
            print(f"{id}: {obj.version()}, {cipher[0] if cipher else '?'}", flush=True)
        return data  # the whole protocol, as in echo_server.py

    def closed(id: int, err: BaseException | None) -> None:
        sessions.pop(id, None)
        if not args.quiet:
            print(f"{id}: closed" + (f" ({err!r})" if err else ""), flush=True)

    events = evio.Events(serving=serving, opened=opened, data=data, closed=closed)
    # The callbacks above see plaintext; `should` keeps the plain port plain
    # (passing None instead would translate every connection). A handshake
    # not done in time is aborted: closed(id, TimeoutError).
    events = evio.translate(events, should, factory, handshake_timeout=args.handshake_timeout)
    try:
        evio.serve(events, *addrs, poller=args.poller)
    except (ValueError, OSError) as e:
        print(f"tls echo server: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: evio closed every connection first
        pass
    print("tls echo server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
