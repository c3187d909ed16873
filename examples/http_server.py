"""HTTP server: Hello World over HTTP/1.1, with keep-alive, pipelining and TLS.

The evio counterpart of the original's HTTP example::

    python examples/http_server.py                  # http on 8080, https on 4443
    curl http://127.0.0.1:8080/
    curl --cacert /tmp/evio-http-.../ca.pem https://127.0.0.1:4443/
    python examples/http_server.py --port 0 --tlsport 0 --unixsocket /tmp/http.sock
    python examples/http_server.py --no-tls --poller poll
    python examples/http_server.py --loops auto     # one loop per CPU, one process each

Pages: ``GET /`` and ``HEAD /`` answer ``Hello World!``; ``/index.html`` is
a small HTML page; ``POST /echo`` sends the request body back. Other paths
are 404, other methods on those paths 405.

The protocol lives in ``http11.py`` next to this file, a sans-I/O parser:
``data`` feeds it the bytes that arrived and answers every request that is
complete, in order. The TLS port runs the same callbacks: `evio.translate`
puts a `evio.TLSTranslator` on the connections its listener accepts,
so ``data`` sees plaintext either way.

Slow or silent clients: a connection silent for ``--idle-timeout`` seconds
(60) is closed, and so is an HTTPS connection whose TLS handshake has not
finished within ``--handshake-timeout`` seconds (10) -- the loop's own
timers: ``Options(idle_timeout=...)`` and ``evio.translate(...,
handshake_timeout=...)``, which aborts the connection.
A client that trickles (slowloris) is not silent, so two more bounds, as
nginx's ``client_header_timeout`` and ``client_body_timeout``: a request
head must arrive whole within ``--header-timeout`` seconds (10) of its
first byte, and its body within ``--body-timeout`` seconds (30) of the end
of its head; otherwise the client gets ``408 Request Timeout`` and the
connection closes. Each is a timer (``server.call_later``) tied to the
connection, set when a head or a body starts and cancelled when it is
complete; time spent with reading paused because the client does not read
its responses does not count (that is the idle timeout's business).
Plain HTTP sent to the HTTPS port gets a ``400 Bad Request`` saying so, as
Go's net/http does, instead of a bare close.

Memory: a connection's parser keeps at most 16 KiB of an unfinished head
(431 beyond) or under 1 MiB of an unfinished body (413 beyond), and its
pending output is at most the loop's high-water mark (64 KiB) plus the
responses to one read -- at most one 1 MiB ``/echo`` body plus about twelve
times a 64 KiB read of small pipelined requests -- because the loop stops
reading above the mark. So under 3 MiB per connection however it behaves
(plus a TLS session on the HTTPS port), for at most ``--idle-timeout``
seconds of silence or ``--header-timeout`` plus ``--body-timeout`` seconds
of trickling; the number of connections is bounded by the process's
descriptor limit (``ulimit -n``), per loop with ``--loops N``.

Without ``--tlscert`` the server makes a throwaway certificate authority
with ``trustme`` (``pip install trustme``) and prints where its CA file is,
so clients can verify the server: ``curl --cacert CA https://...``.

Stop it with Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import email.utils
import functools
import shutil
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from http11 import HTTPError, Request, RequestParser, encode_response

import evio
from evio import TLSTranslator, server_context

HELLO = b"Hello World!\r\n"
INDEX = b"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>evio</title></head>
<body>
<h1>Hello from evio</h1>
<p>This page was served by a single-threaded Python event loop.</p>
</body>
</html>
"""

# A handler turns a request into (content type, body).
Handler = Callable[[Request], tuple[str, bytes]]


def _hello(req: Request) -> tuple[str, bytes]:
    return "text/plain; charset=utf-8", HELLO


def _index(req: Request) -> tuple[str, bytes]:
    return "text/html; charset=utf-8", INDEX


def _echo(req: Request) -> tuple[str, bytes]:
    return req.header("content-type") or "application/octet-stream", req.body


ROUTES: dict[str, dict[str, Handler]] = {
    "/": {"GET": _hello, "HEAD": _hello},
    "/index.html": {"GET": _index, "HEAD": _index},
    "/echo": {"POST": _echo},
}
"""Path -> method -> handler. HEAD is answered like GET, without the body."""

STATIC = frozenset({"/", "/index.html"})
"""Request-targets whose GET and HEAD responses change only with the date."""


def _path(target: str) -> str:
    """The path of a request-target: origin-form ``/a?q`` or absolute-form
    ``http://host/a?q`` (RFC 9112 section 3.2.2) both give ``/a``."""
    if target.startswith(("http://", "https://")):
        rest = target.partition("://")[2]
        target = "/" + rest.partition("/")[2]
    return target.partition("?")[0].partition("#")[0]


# HTTP-12: the routes
def respond(req: Request, date: str) -> bytes:
    """The response to one request that the parser accepted."""
    common = [("Server", "evio"), ("Date", date)]
    methods = ROUTES.get(_path(req.target))
    if methods is None:
        status, ctype, body = 404, "text/plain; charset=utf-8", b"404 Not Found\r\n"
    elif req.method not in methods:
        status, ctype, body = 405, "text/plain; charset=utf-8", b"405 Method Not Allowed\r\n"
        common.append(("Allow", ", ".join(methods)))
    else:
        status = 200
        ctype, body = methods[req.method](req)
    return encode_response(status, body, [*common, ("Content-Type", ctype)],
                           keep_alive=req.keep_alive, request=req)


# HTTP-14: a refused request closes the connection
def refuse(err: HTTPError, date: str) -> bytes:
    """The response to a request the parser refused; the connection closes.

    The parser keeps ``err`` to raise again; its traceback would keep the
    frames it came through, and their locals (a 1 MiB body and its
    response), for as long as the connection flushes: let it go (REL-20).
    """
    err.__traceback__ = None
    body = f"{err}\r\n".encode("latin-1")
    headers = [("Server", "evio"), ("Date", date),
               ("Content-Type", "text/plain; charset=utf-8")]
    return encode_response(err.status, body, headers, keep_alive=False)


PLAIN_HTTP_ON_HTTPS = (b"HTTP/1.0 400 Bad Request\r\n\r\n"
                       b"Client sent an HTTP request to an HTTPS server.\n")
"""What plain HTTP on the HTTPS port gets (Go's net/http words)."""


class HTTPSTranslator(TLSTranslator):
    """TLS, except that plain HTTP on the port is answered with a 400.

    A TLS connection starts with a handshake record, whose first byte is
    22; an HTTP request starts with a method name. The translator's
    ``alert`` is what the loop sends before closing on its error (TR-7).
    """

    first = True

    def receive(self, wire: bytes) -> tuple[bytes, bytes]:
        if self.first:
            self.first = False
            if wire[:1].isalpha():
                self.alert = PLAIN_HTTP_ON_HTTPS
                raise ssl.SSLError("plain HTTP sent to the HTTPS port")
        return super().receive(wire)


def throwaway_certificate(names: list[str]) -> tuple[Path, Path]:
    """Make a CA and a server certificate with trustme; return (CA file, cert+key file).

    Raises:
        SystemExit: trustme is not installed.
    """
    try:
        import trustme  # only needed when no certificate is given
    except ImportError:
        raise SystemExit(
            "http server: no --tlscert given and trustme is not installed; "
            "pip install trustme, pass --tlscert/--tlskey, or use --no-tls"
        ) from None
    ca = trustme.CA()
    cert = ca.issue_cert(*names)
    folder = Path(tempfile.mkdtemp(prefix="evio-http-"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    return folder / "ca.pem", folder / "server.pem"


def main(argv: list[str] | None = None) -> int:  # noqa: C901 -- flags and wiring, read top to bottom
    # HTTP-16
    parser = argparse.ArgumentParser(description="evio HTTP server (Hello World, TLS)")
    # REL-6: loopback unless --host says otherwise
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8080,
                        help="plain HTTP port (default: 8080; 0 picks one)")
    parser.add_argument("--tlsport", type=int, default=4443,
                        help="HTTPS port (default: 4443; 0 picks one)")
    parser.add_argument("--no-tls", action="store_true", help="do not listen for HTTPS")
    parser.add_argument("--tlscert", metavar="PEM",
                        help="certificate chain (and key, without --tlskey); "
                             "default: a throwaway certificate from trustme")
    parser.add_argument("--tlskey", metavar="PEM", help="private key for --tlscert")
    parser.add_argument("--unixsocket", metavar="PATH",
                        help="also serve plain HTTP on this unix socket")
    parser.add_argument("--poller", choices=evio.available_pollers(),
                        help="poller backend (default: the best available)")
    # LOOPS-10
    parser.add_argument("--loops", type=_loops, default=1, metavar="N",
                        help="run N loops, each in its own process, behind the same "
                             "addresses; 'auto' for one per CPU (default: 1)")
    parser.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="close a connection silent this long (default: 60; 0: never)")
    # REL-19
    parser.add_argument("--handshake-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="close an HTTPS connection whose TLS handshake is not done "
                             "this long after it opened (default: 10)")
    parser.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="answer 408 and close when a request head is not whole this "
                             "long after its first byte (default: 10; 0: never)")
    parser.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="answer 408 and close when a request body is not whole this "
                             "long after its head (default: 30; 0: never)")
    args = parser.parse_args(argv)
    if not 0 <= args.idle_timeout < float("inf"):
        parser.error("--idle-timeout must be 0 or a positive number of seconds")
    if not 0 < args.handshake_timeout < float("inf"):
        parser.error("--handshake-timeout must be a positive number of seconds")
    for name in ("header_timeout", "body_timeout"):
        if not 0 <= getattr(args, name) < float("inf"):
            parser.error(f"--{name.replace('_', '-')} must be 0 or a positive number of seconds")
    if args.tlskey and not args.tlscert:
        parser.error("--tlskey needs --tlscert")
    if args.no_tls and args.tlscert:
        parser.error("--no-tls and --tlscert do not go together")

    host = f"[{args.host}]" if ":" in args.host else args.host
    addrs = [f"tcp://{host}:{args.port}"]
    tls_index = -1
    context: ssl.SSLContext | None = None
    scratch: Path | None = None  # the throwaway certificate's folder
    ca_file: Path | None = None
    if not args.no_tls:
        tls_index = len(addrs)
        addrs.append(f"tcp://{host}:{args.tlsport}")
        certfile, keyfile = args.tlscert, args.tlskey
        if certfile is None:
            names = list(dict.fromkeys([args.host, "127.0.0.1", "::1", "localhost"]))
            ca_file, server_pem = throwaway_certificate(names)
            scratch, certfile = ca_file.parent, str(server_pem)
        try:
            context = server_context(certfile, keyfile)
        except (OSError, ssl.SSLError) as e:
            print(f"http server: cannot load the TLS certificate: {e}", file=sys.stderr)
            return 1
        finally:
            if context is None and scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        context.set_alpn_protocols(["http/1.1"])  # say so, or h2 clients may guess
    if args.unixsocket:
        addrs.append(f"unix://{args.unixsocket}")

    parsers: dict[int, RequestParser] = {}  # one per open connection
    pages: dict[tuple[str, str, str, bool], bytes] = {}  # responses to STATIC pages, this second
    date = email.utils.formatdate(usegmt=True)
    options = evio.Options(idle_timeout=args.idle_timeout or None)
    running: list[evio.Server] = []
    # HTTP-19: the one timer each connection may have -- for the head or the
    # body being received -- and the connections whose timer fired, woken
    # so that data(id, None) answers 408 and closes.
    limits = {"head": args.header_timeout, "body": args.body_timeout}
    deadlines: dict[int, tuple[str, evio.Timer]] = {}
    expired: dict[int, HTTPError] = {}

    def follow(id: int, parser: RequestParser, answered: bool) -> None:
        """Set, keep or cancel ``id``'s timer for what its parser waits for."""
        phase = parser.phase
        current = deadlines.get(id)
        if current is not None:
            if current[0] == phase and not answered:
                return  # still the same head or body: its clock keeps running
            current[1].cancel()
            del deadlines[id]
        limit = limits.get(phase)
        if limit:
            fire = functools.partial(too_slow, id, phase, limit)
            deadlines[id] = (phase, running[0].call_later(limit, fire, id=id))

    def too_slow(id: int, phase: str, limit: float) -> None:
        deadlines.pop(id, None)
        server = running[0]
        if server.paused(id):
            # We stopped reading (the client does not read its responses):
            # the missing bytes may be waiting in the kernel. Not its fault.
            fire = functools.partial(too_slow, id, phase, limit)
            deadlines[id] = (phase, server.call_later(limit, fire, id=id))
            return
        what = "request head" if phase == "head" else "request body"
        expired[id] = HTTPError(408, f"{what} not received within {limit:g} s")
        server.wake(id)  # its data(id, None) answers 408 and closes

    def serving(server: evio.Server) -> None:
        running.append(server)  # kept for call_later and wake (HTTP-19)
        where = ", ".join(str(a) for a in server.addrs)
        print(f"http server listening on {where} (poller: {server.poller})", flush=True)
        if tls_index >= 0:
            print(f"https on {server.addrs[tls_index]!s}", flush=True)
        if ca_file is not None:
            print("no --tlscert given: using a throwaway certificate made by trustme; "
                  f"CA file: {ca_file}", flush=True)

    def opened(id: int, info: evio.Info) -> evio.Options:
        parsers[id] = RequestParser()
        return options

    def answer(req: Request) -> bytes:
        # A static page's response depends only on the request line,
        # keep-alive and the date: build it once per second, not per request.
        key = (req.target, req.method, req.version, req.keep_alive)
        response = pages.get(key)
        if response is None:
            response = respond(req, date)
            if req.target in STATIC and req.method in ("GET", "HEAD"):
                pages[key] = response
        return response

    Reply = tuple[bytes, evio.Action] | bytes | evio.Action | None

    def data(id: int, data: bytes | None) -> Reply:
        if data is None:
            # A wake: too_slow asks for one for a head or body past its time.
            err = expired.pop(id, None)
            if err is not None:
                return refuse(err, date), evio.Action.CLOSE
            return None
        parser = parsers[id]
        reply = answer_all(parser, data)
        if type(reply) is not tuple:  # the connection stays: time what it waits for
            follow(id, parser, reply is not None)  # an answer: a new head started
        return reply

    # HTTP-13: pipelined requests answered in order
    def answer_all(parser: RequestParser, data: bytes) -> Reply:
        # A refused request is answered after the ones before it, and the
        # connection closes: after a framing error we cannot know where the
        # next request starts.
        try:
            parser.feed(data)
            req = parser.next_request()
        except HTTPError as e:
            return refuse(e, date), evio.Action.CLOSE
        if req is None:
            return parser.take_interim() or None  # "100 Continue" if the client waits
        # The common case, one request in the read, is answered without a
        # list to join (bytes + b"" is the same bytes object, not a copy).
        response = pages.get((req.target, req.method, req.version, req.keep_alive)) \
            or answer(req)
        if not req.keep_alive:
            return response, evio.Action.CLOSE
        try:
            req = parser.next_request()
        except HTTPError as e:
            return response + refuse(e, date), evio.Action.CLOSE
        if req is None:
            return response + parser.take_interim()
        # Pipelined requests: answered in order, in one write.
        out = [response]
        try:
            while req is not None:
                out.append(answer(req))
                if not req.keep_alive:
                    return b"".join(out), evio.Action.CLOSE
                req = parser.next_request()
        except HTTPError as e:
            out.append(refuse(e, date))
            return b"".join(out), evio.Action.CLOSE
        out.append(parser.take_interim())
        return b"".join(out)

    def closed(id: int, err: BaseException | None) -> None:
        parsers.pop(id, None)
        deadlines.pop(id, None)  # its timer was tied to it: cancelled already
        expired.pop(id, None)

    def tick() -> float:
        nonlocal date
        today = email.utils.formatdate(usegmt=True)  # the Date header, to the second
        if today != date:
            date = today
            pages.clear()  # built with the old date
        return 0.2

    # HTTP-15: TLS on the HTTPS listener only
    def https(id: int, info: evio.Info) -> TLSTranslator:
        assert context is not None
        return HTTPSTranslator(context, server_side=True)

    events = evio.Events(serving=serving, opened=opened, data=data, closed=closed, tick=tick)
    if context is not None:
        events = evio.translate(
            events,
            lambda id, info: info.addr_index == tls_index,  # only the HTTPS listener
            https,
            handshake_timeout=args.handshake_timeout,  # aborted if not done by then
        )
    try:
        evio.serve(events, *addrs, poller=args.poller, loops=args.loops)
    except (ValueError, OSError) as e:
        print(f"http server: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: evio closed every connection first
        pass
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print("http server stopped", flush=True)
    return 0


def _loops(text: str) -> int | str:
    """``--loops``: a positive number, or ``auto``."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', not {text!r}")
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
