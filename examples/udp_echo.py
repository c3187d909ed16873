"""UDP echo server: every datagram goes back to its sender as one datagram.

::

    python examples/udp_echo.py --port 5001

The same callbacks as the TCP echo server, on a ``udp://`` address. What
changes is what the loop promises: each ``data`` call is exactly one
datagram, each reply is sent as exactly one datagram, and nothing is queued
-- a reply the socket cannot take at once is dropped, as the network itself
might have dropped it. An empty datagram gets no reply, because empty
output sends nothing.

evio gives each sender address an id the first time it is heard from, so
``opened`` runs once per remote, not once per datagram; the remotes are
forgotten (``closed``) when the server stops.

Memory: nothing is buffered -- a reply the socket cannot take is dropped,
and a read is one datagram (at most 64 KiB). What a remote costs is its
small record, and the loop keeps at most ``udp_max_remotes`` (65,536) of
them, forgetting each one idle for ``udp_idle_timeout`` (``--idle-timeout``,
60 s by default, **UDP-10**, **UDP-11**): a flood from many source
addresses is bounded by that count, and its memory is given back, all but
a megabyte or two, once the sources fall silent (**REL-18**).

Stop it with Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import sys

import evio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="evio UDP echo server")
    # REL-6: loopback unless --host says otherwise
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=5001, help="UDP port (default: 5001)")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="seconds of silence before a remote is forgotten (default: 60)")
    parser.add_argument("--poller", choices=evio.available_pollers(),
                        help="poller backend (default: the best available)")
    args = parser.parse_args(argv)

    host = f"[{args.host}]" if ":" in args.host else args.host

    def serving(server: evio.Server) -> None:
        where = ", ".join(str(a) for a in server.addrs)
        print(f"udp echo server listening on {where} (poller: {server.poller})", flush=True)

    def data(id: int, packet: bytes) -> bytes:
        return packet  # one datagram in, the same datagram out

    events = evio.Events(serving=serving, data=data, udp_idle_timeout=args.idle_timeout)
    try:
        evio.serve(events, f"udp://{host}:{args.port}", poller=args.poller)
    except (ValueError, OSError) as e:
        print(f"udp echo server: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: evio closed every connection first
        pass
    print("udp echo server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
