"""TCP proxy: each client gets its own connection to one upstream server.

For every accepted client the proxy dials ``--upstream`` with
``server.dial`` and then relays bytes both ways, all on the loop's one
thread::

    python examples/proxy.py --port 8000 --upstream tcp://127.0.0.1:6379

How it fits evio's callbacks: a callback can only answer *its own*
connection, but a proxy's bytes always go to the *other* one. So bytes read
from one side are put in the other side's outbox, and the other side is
woken with ``server.wake(peer)``; the loop then calls ``data(peer, None)``,
which returns the outbox. Everything here is touched only by callbacks, on
the loop's thread, so no lock is needed.

* Nothing is read from a client before its upstream has connected: the
  proxy pauses the client (``server.pause``) as soon as it is accepted and
  resumes it when the upstream's ``opened`` comes, so bytes a client sends
  meanwhile wait in the kernel's socket buffers, not here, and its sends
  block (**REL-21**). A proxy that read them would hold them all, for as
  long as the dial takes, for every client.
* Back-pressure: when the side that bytes go to has more than `HIGH_WATER`
  bytes of output pending (``server.pending``), the proxy stops reading
  the side they come from (``server.pause``), and reads it again when the
  loop calls ``drained`` for the slow side (``server.resume``). So a client
  that never reads, or an upstream that never reads, holds the proxy to
  about two high-water marks per pair, in either direction.
* Half-close passes through: when one side ends its stream (``eof``), the
  other side's write half is shut once its outbox is sent
  (``server.shutdown_write``), and replies still flow back until that
  side ends too. ``nc -N`` through the proxy gets every byte back.
* When either side closes, the other is closed once its outbox is sent: the
  woken ``data`` call returns the outbox with ``Action.CLOSE``.
* A dial that fails (``opened`` with ``info.closing``, then ``closed`` with
  the error) closes its client the same way.

Memory: a pair holds nothing of the client's while its upstream connects
(for `DIAL_TIMEOUT` seconds at most), then, in each direction, at most
`HIGH_WATER` (64 KiB) plus one read (64 KiB) pending and one read in the
outbox -- under 512 KiB per pair, whoever does not read (**REL-14**).
The number of pairs is bounded by the process's descriptor limit
(``ulimit -n``; each pair takes two).

The guide "Back-pressure in a proxy" walks through this file.

Stop it with Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import TypeAlias

import evio

DIAL_TIMEOUT = 10.0
"""Seconds an upstream has to accept the connection."""
HIGH_WATER = 65536
"""Pending output on one side past which the other side is paused (the
loop's own default high-water mark, so ``drained`` follows)."""


_Reply: TypeAlias = bytes | tuple[bytes | None, evio.Action] | evio.Action | None


@dataclass(slots=True, eq=False)
class _Side:
    """One end of a proxied pair: a client, or the upstream dialed for it."""

    id: int
    peer: int  # the other end's id
    open: bool  # False while an upstream is still connecting
    outbox: list[bytes] = field(default_factory=list)  # to send on this side
    pending: int = 0  # bytes in outbox
    closing: bool = False  # the peer is gone: close after the outbox
    ended: bool = False  # the peer ended its stream: shut our write half after the outbox
    paused: bool = False  # we paused reading here: the peer has too much pending
    waiting: bool = False  # a client paused until its upstream connects (REL-21)

    def take(self) -> bytes:
        out = b"".join(self.outbox)
        self.outbox.clear()
        self.pending = 0
        return out


def main(argv: list[str] | None = None) -> int:  # noqa: C901 -- flags, then the callbacks as closures over one state
    parser = argparse.ArgumentParser(description="evio TCP proxy: relay each client to upstream")
    # REL-6: loopback unless --host says otherwise
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument("--upstream", required=True, metavar="ADDR",
                        help="evio address to relay to, e.g. tcp://127.0.0.1:6379")
    parser.add_argument("--poller", choices=evio.available_pollers(),
                        help="poller backend (default: the best available)")
    args = parser.parse_args(argv)

    try:
        if evio.parse_address(args.upstream).is_udp:
            raise ValueError(f"cannot proxy to {args.upstream!r}: it is a UDP address")
    except ValueError as e:
        parser.error(str(e))

    host = f"[{args.host}]" if ":" in args.host else args.host
    sides: dict[int, _Side] = {}
    server: evio.Server | None = None

    def serving(srv: evio.Server) -> None:
        nonlocal server
        server = srv  # kept for dial and wake
        where = ", ".join(str(a) for a in srv.addrs)
        print(f"proxy listening on {where}, relaying to {args.upstream} "
              f"(poller: {srv.poller})", flush=True)

    def opened(id: int, info: evio.Info) -> _Reply:
        assert server is not None
        if info.addr_index >= 0:
            # A new client: dial its upstream. The dial returns an id at
            # once; its opened comes later, on a later turn of the loop.
            up = server.dial(args.upstream, timeout=DIAL_TIMEOUT)
            # Read nothing from the client until there is somewhere to send
            # it: its bytes wait in the kernel meanwhile (REL-21).
            sides[id] = _Side(id, up, open=True, waiting=server.pause(id))
            sides[up] = _Side(up, id, open=False)
            return None
        if info.closing:
            return None  # the dial failed; closed(id, err) comes next
        # The upstream connected: send what its client sent meanwhile, and
        # close at once if that client has already gone.
        side = sides[id]
        side.open = True
        client = sides.get(side.peer)
        if client is not None and client.waiting:
            client.waiting = False
            server.resume(client.id)  # its bytes may flow now
        if side.ended and not side.closing:
            server.shutdown_write(id)  # after the output returned here
        return side.take() or None, evio.Action.CLOSE if side.closing else evio.Action.NONE

    def data(id: int, data: bytes | None) -> _Reply:
        side = sides[id]
        assert server is not None
        if data is None:
            # Woken by the peer: send its bytes; close after them if it
            # left, or shut our write half after them if it ended its stream.
            out = side.take()
            if side.closing:
                return out, evio.Action.CLOSE
            if side.ended:
                server.shutdown_write(id)  # the FIN goes after `out`
            return out
        peer = sides.get(side.peer)
        if peer is None:
            return None  # the peer is gone and this side is closing: drop it
        peer.outbox.append(data)
        peer.pending += len(data)
        if not peer.open:
            return None  # not reached: the client is paused until then (REL-21)
        if len(peer.outbox) == 1:
            # One wake per batch: while the outbox is not empty, a wake is
            # already on its way and its data() call will take these bytes.
            server.wake(peer.id)
        # Back-pressure: the peer is not taking what it has; stop reading
        # here until the loop says it has drained (drained, below). The
        # outbox itself holds at most one turn's reads: the wake empties it.
        if server.pending(peer.id) > HIGH_WATER and not side.paused:
            side.paused = server.pause(id)
        return None

    def drained(id: int) -> None:
        # This side's pending output fell to the low-water mark: read the
        # other side again if we paused it for this one.
        side = sides.get(id)
        other = sides.get(side.peer) if side is not None else None
        if other is not None and other.paused:
            assert server is not None
            other.paused = False
            server.resume(other.id)

    # REL-15: pass the half-close through
    def eof(id: int) -> None:
        # This side ended its stream: pass the half-close on. The other
        # side's write half is shut once its outbox is sent; this side stays
        # writable for the replies.
        peer = sides.get(sides[id].peer)
        if peer is not None and not peer.closing:
            peer.ended = True
            if peer.open:
                assert server is not None
                server.wake(peer.id)  # its data(id, None) sends, then shuts

    def closed(id: int, err: BaseException | None) -> None:
        side = sides.pop(id)
        if err is not None and not side.open:
            print(f"proxy: cannot reach {args.upstream}: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)
        peer = sides.get(side.peer)
        if peer is not None and not peer.closing:
            peer.closing = True
            if peer.open:
                assert server is not None
                server.wake(peer.id)  # its data(id, None) returns CLOSE

    events = evio.Events(serving=serving, opened=opened, data=data, closed=closed,
                         drained=drained, eof=eof)
    try:
        evio.serve(events, f"tcp://{host}:{args.port}", poller=args.poller)
    except (ValueError, OSError) as e:
        print(f"proxy: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: evio closed every connection first
        pass
    print("proxy stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
