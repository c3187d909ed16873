"""Echo server: every byte a client sends comes straight back.

The smallest useful evio server, and the one ``make run`` starts::

    python examples/echo_server.py --port 5000
    python examples/echo_server.py --unixsocket /tmp/echo.sock --poller poll
    python examples/echo_server.py --loops auto     # one loop per CPU, one process each
    systemd-socket-activate -l 127.0.0.1:5000 python examples/echo_server.py --systemd

Memory: a client that sends without reading costs at most the loop's
high-water mark (64 KiB) plus one read (64 KiB) of pending output, because
the loop stops reading a connection above the mark (**REL-1**, **REL-2**);
its bytes then wait in the kernel's socket buffers, not here. Nothing else
is kept per connection but its small record. The number of connections is
bounded by the process's descriptor limit (``ulimit -n``; accept backs off
when it is reached), and ``--loops N`` runs N such processes.

Stop it with Ctrl-C (or SIGTERM): the loop shuts down cleanly, closing every
connection and removing the unix socket file.
"""

from __future__ import annotations

import argparse
import sys

import evio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="evio echo server")
    # REL-6: loopback unless --host says otherwise
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=5000, help="TCP port (default: 5000)")
    parser.add_argument("--unixsocket", metavar="PATH",
                        help="also listen on this unix socket")
    parser.add_argument("--poller", choices=evio.available_pollers(),
                        help="poller backend (default: the best available)")
    # LOOPS-10
    parser.add_argument("--loops", type=_loops, default=1, metavar="N",
                        help="run N loops, each in its own process, behind the same "
                             "addresses; 'auto' for one per CPU (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="do not log connections")
    parser.add_argument("--systemd", action="store_true",
                        help="serve the sockets systemd passed (socket activation) "
                             "instead of binding --host/--port")
    args = parser.parse_args(argv)

    host = f"[{args.host}]" if ":" in args.host else args.host
    addrs = [f"tcp://{host}:{args.port}"]
    if args.systemd:
        # LISTEN_PID / LISTEN_FDS: the sockets start at descriptor 3 (fd://3 ...)
        addrs = evio.listen_fds(unset_environment=True)
        if not addrs:
            print("echo server: --systemd, but no socket was passed (LISTEN_FDS)",
                  file=sys.stderr)
            return 1
    if args.unixsocket:
        addrs.append(f"unix://{args.unixsocket}")

    def serving(server: evio.Server) -> None:
        where = ", ".join(str(a) for a in server.addrs)
        print(f"echo server listening on {where} (poller: {server.poller})", flush=True)

    def opened(id: int, info: evio.Info) -> None:
        if not args.quiet:
            print(f"{id}: opened from {info.remote_addr or 'unix peer'!s}", flush=True)

    def data(id: int, data: bytes) -> bytes:
        return data  # the whole protocol

    def closed(id: int, err: BaseException | None) -> None:
        if not args.quiet:
            print(f"{id}: closed" + (f" ({err})" if err else ""), flush=True)

    events = evio.Events(serving=serving, opened=opened, data=data, closed=closed)
    try:
        evio.serve(events, *addrs, poller=args.poller, loops=args.loops)
    except (ValueError, OSError) as e:
        print(f"echo server: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: evio closed every connection first
        pass
    print("echo server stopped", flush=True)
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
