"""UDP: datagrams on the same loop, with a "connection" per remote address.

Owns: datagram listeners and the remotes they know, from the first datagram
to being forgotten.

Theory of operation
-------------------
UDP has no connections, but servers still think in peers: a DNS-like or
game server answers whoever sent the datagram.  So evio gives each remote
address an id, the first time a datagram arrives from it, and then behaves
as for a stream: ``opened`` once, ``data`` per datagram, ``closed`` when the
server forgets the remote (a ``CLOSE`` action, or shutdown).

What is different, and why:

* **Boundaries are kept.**  Each ``data`` call is exactly one datagram, up
  to 64 KiB, and each output is sent back as exactly one datagram.
* **Nothing is buffered.**  A stream must deliver every byte, so it queues
  what the socket will not take.  A datagram that cannot be sent *now*
  (``EAGAIN``: the socket's send buffer is full) is dropped, as the network
  may drop any datagram; ``postwrite`` reports 0 bytes sent and 0 pending.
  Queueing would turn a burst into latency and memory for packets whose
  senders have likely given up.  A send that fails for another reason (a
  datagram too large: ``EMSGSIZE``) forgets the remote with that error.
* **A read drains a batch.**  One readiness report may stand for many
  datagrams; the loop reads up to `UDP_BATCH` before polling again,
  so a busy UDP socket costs one poll per batch, not per datagram, and still
  cannot starve the stream connections.
* **Remotes are forgotten.**  A UDP server hears of a remote once and never
  of its leaving, so a table of remotes grows with every source address
  that ever sent a datagram (300k spoofed sources: tens of megabytes, for
  ever).  A remote is forgotten when it has been silent for
  ``Events.udp_idle_timeout`` seconds (60 by default), and when a new
  remote would make more than ``Events.udp_max_remotes`` (65,536), the
  least recently heard one is forgotten first; each gets ``closed(id,
  None)``.  The table of remotes is kept in the order they were last heard
  from (a remote heard again moves to the end), so both are cheap: the
  least recently heard is always first.  Once a sweep has forgotten every
  remote of a table that had grown large, the memory is given back on the
  next turn (`evio._reclaim`: freed is not the same as returned).
* ``wake`` and ``dial`` do not apply; ``DETACH`` has no socket to hand over
  (the socket is shared by every remote) and acts as ``CLOSE``.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

from ._addresses import Listener, SockAddr
from ._events import Buffer, Events, Info, Options
from ._pollers import READ
from ._reclaim import GIVE_BACK_AT, give_back
from ._timers import Timer
from ._wiring import Parts

__all__ = ["UDP_BATCH", "UDP_MAX", "UdpSide", "is_udp"]

log = logging.getLogger("evio")

UDP_MAX = 65536
"""The receive buffer: larger than any datagram IPv4 or IPv6 can carry."""
UDP_BATCH = 64
"""At most this many datagrams are read per readiness report."""


@dataclass(slots=True, eq=False)
class Peer:
    """One remote address a UDP listener has heard from.

    Attributes:
        id: The id callbacks receive.
        index: The listener's index in ``serve``'s addresses.
        listener: The listener it talks through.
        remote: Its address.
        reuse_input: ``data`` gets a view into the shared receive buffer.
        heard: ``time.monotonic()`` of the batch that brought its last datagram.
    """

    id: int
    index: int
    listener: Listener
    remote: SockAddr
    reuse_input: bool = False
    heard: float = 0.0


def check_settings(events: Events) -> None:
    """Check the UDP settings of ``events``; `serve` calls it before it binds.

    Raises:
        ValueError: ``events.udp_idle_timeout`` is not a positive, finite
            number of seconds or ``None``, or ``events.udp_max_remotes``
            is not a positive integer.
    """
    idle, most = events.udp_idle_timeout, events.udp_max_remotes
    if idle is not None and (isinstance(idle, bool) or not isinstance(idle, int | float)
                             or not 0 < idle < float("inf")):
        raise ValueError(f"udp_idle_timeout must be a positive, finite number of seconds "
                         f"or None, not {idle!r}")
    if type(most) is not int or most < 1:
        raise ValueError(f"udp_max_remotes must be a positive integer, not {most!r}")


class UdpSide:
    """The loop's UDP listeners and the remotes they know (a `evio._callbacks.Side`).

    Args:
        parts: The loop's parts (the deadline queue forgets idle remotes,
            the doorbell gives a flood's memory back on the next turn).

    Raises:
        ValueError: see `check_settings`.
    """

    def __init__(self, parts: Parts) -> None:
        events = parts.events
        check_settings(events)
        self.idle = events.udp_idle_timeout
        self.most = events.udp_max_remotes
        self.timers = parts.timers
        self.post = parts.waker.post  # a job for the next turn's wakes phase
        self.sweep: Timer | None = None
        self.ev = events
        self.poller = parts.poller
        self.policy = parts.policy
        self.handlers = parts.handlers
        self.new_id = parts.ids.__next__
        self.peers: dict[int, Peer] = {}  # by id
        self.by_remote: dict[tuple[int, SockAddr], Peer] = {}  # by (listener fd, remote)
        self.most_heard = 0  # the most remotes known at once since the last give_back
        self.buf = bytearray(UDP_MAX)
        self.view = memoryview(self.buf)

    def listen(self, index: int, lst: Listener) -> None:
        """Watch a UDP listener."""
        fd = lst.sock.fileno()
        self.handlers[fd] = (self.readable, (index, lst))
        self.poller.register(fd, READ)

    def readable(self, entry: tuple[int, Listener], mask: int) -> None:
        """Read up to a batch of datagrams from one UDP listener."""
        index, lst = entry
        stopping = self.policy.stopping
        # One clock read per batch, not per datagram; a local, not kept on
        # self, so the last one of a flood does not outlive it (`evio._reclaim`).
        now = time.monotonic()
        for _ in range(UDP_BATCH):
            try:
                n, remote = lst.sock.recvfrom_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # An ICMP error left on the socket by an earlier send; it
                # concerns one datagram, not the listener.
                log.debug("UDP receive on %s: %s", lst.address.text, e)
                continue
            self._datagram(index, lst, remote, n, now)
            if stopping():
                return

    # UDP-1, UDP-2, UDP-11
    def _datagram(self, index: int, lst: Listener, remote: SockAddr, n: int,
                  now: float) -> None:
        """One datagram of ``n`` bytes: ``opened`` for a new remote, then ``data``."""
        key = (lst.sock.fileno(), remote)
        by_remote = self.by_remote
        peer = by_remote.get(key)
        if peer is None:
            if len(by_remote) >= self.most:
                self.forget(next(iter(by_remote.values())).id, None)  # least recently heard
            peer = Peer(self.new_id(), index, lst, remote, heard=now)
            self.peers[peer.id] = peer
            by_remote[key] = peer
            if len(by_remote) > self.most_heard:
                self.most_heard = len(by_remote)
            if self.sweep is None and self.idle is not None:
                self.sweep = self.timers.at(now + self.idle, self._sweep)
            self.policy.opened(self, peer, Info(False, index, lst.bound, remote))
            if peer.id not in self.peers:
                return  # opened closed it, or raised
        else:
            peer.heard = now
            if by_remote[next(reversed(by_remote))] is not peer:
                del by_remote[key]
                by_remote[key] = peer  # to the end: the most recently heard
        if self.ev.data is None:
            return
        view = self.view[:n]
        try:
            self.policy.data(self, peer, view if peer.reuse_input else bytes(view))
        finally:
            view.release()

    # ---------------------------------------------------------- the Side

    # UDP-3, UDP-5
    def send(self, peer: Peer, out: Buffer) -> None:
        """Send ``out`` as one datagram; one that does not fit now is dropped."""
        policy = self.policy
        if self.ev.prewrite is not None and not policy.around(
                self, peer, "prewrite", (peer.id, len(out))):
            return
        try:
            n = peer.listener.sock.sendto(out, peer.remote)
        except (BlockingIOError, InterruptedError):
            n = 0  # the send buffer is full: the datagram is dropped
        except OSError as e:
            if self.ev.postwrite is None or policy.around(self, peer, "postwrite",
                                                          (peer.id, 0, 0)):
                self.forget(peer.id, e)
            return
        if self.ev.postwrite is not None:
            policy.around(self, peer, "postwrite", (peer.id, n, 0))

    # UDP-4
    def end(self, peer: Peer) -> None:
        """``CLOSE``: forget the remote."""
        self.forget(peer.id, None)

    def abort(self, peer: Peer, err: BaseException | None = None) -> None:
        """``Action.ABORT``: nothing is pending for a remote; as ``CLOSE``."""
        self.end(peer)

    # DETACH-5: for UDP, DETACH acts as CLOSE
    def detach(self, peer: Peer, where: str) -> None:
        """``Action.DETACH``: a remote has no socket of its own to hand over,
        so it acts as ``CLOSE``."""
        self.end(peer)

    def raised(self, peer: Peer, where: str, e: Exception) -> None:
        """A callback for this remote raised: forget it with ``e``."""
        self.forget(peer.id, e)

    def configure(self, peer: Peer, options: Options) -> None:
        """Of the `Options`, only ``reuse_input_buffer`` applies to UDP."""
        peer.reuse_input = options.reuse_input_buffer

    def live(self, peer: Peer) -> bool:
        """Whether the remote is still known."""
        return peer.id in self.peers

    # UDP-10, REL-18: forget idle remotes
    def _sweep(self) -> None:
        """Forget every remote silent for ``udp_idle_timeout``; look again later."""
        self.sweep = None
        idle = self.idle
        assert idle is not None
        now = time.monotonic()
        while self.by_remote and not self.policy.stopping():
            oldest = next(iter(self.by_remote.values()))
            if oldest.heard + idle > now:
                self.sweep = self.timers.at(oldest.heard + idle, self._sweep)
                break
            self.forget(oldest.id, None)
        if not self.by_remote:
            # Dicts never shrink as keys go: free their tables once all are
            # gone; after a flood, give the memory back (`evio._reclaim`).
            # clear(), not new dicts: a new one would land in one of the
            # flood's arenas and keep it.
            self.peers.clear()
            self.by_remote.clear()
            if self.most_heard >= GIVE_BACK_AT:
                # On the next turn, in its wakes phase: this frame still
                # holds the last remote forgotten, and the loop its clock
                # reading; both would go back to the free lists after the
                # collection emptied them, and keep their blocks.
                self.most_heard = 0
                self.post(give_back)

    # UDP-6
    def forget(self, cid: int, err: BaseException | None) -> None:
        """Forget a remote and call ``closed``; its next datagram opens a new id."""
        peer = self.peers.pop(cid, None)
        if peer is None:
            return
        del self.by_remote[(peer.listener.sock.fileno(), peer.remote)]
        self.policy.closed(cid, err)


def is_udp(lst: Listener) -> bool:
    """Whether a listener is a UDP socket."""
    return lst.sock.type == socket.SOCK_DGRAM
