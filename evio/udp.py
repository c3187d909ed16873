"""UDP: datagrams on the same loop, with a "connection" per remote address.

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
  datagrams; the loop reads up to :data:`UDP_BATCH` before polling again,
  so a busy UDP socket costs one poll per batch, not per datagram, and still
  cannot starve the stream connections.
* ``wake`` and ``dial`` do not apply; ``DETACH`` has no socket to hand over
  (the socket is shared by every remote) and acts as ``CLOSE``.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from .addresses import Listener
from .events import Action, Events, Info, split_action, split_opened, split_reply

__all__ = ["UDP_BATCH", "UDP_MAX", "UdpSide"]

log = logging.getLogger("evio")

UDP_MAX = 65536
"""The receive buffer: larger than any datagram IPv4 or IPv6 can carry."""
UDP_BATCH = 64
"""At most this many datagrams are read per readiness report."""


class _Loop(Protocol):
    ev: Events
    stopping: bool

    def new_id(self) -> int: ...


@dataclass(slots=True, eq=False)
class _Peer:
    id: int
    index: int
    listener: Listener
    remote: Any
    reuse: bool = False


class UdpSide:
    """The loop's UDP listeners and the remotes it knows."""

    def __init__(self, loop: _Loop) -> None:
        self.loop = loop
        self.peers: dict[int, _Peer] = {}  # by id
        self.by_remote: dict[tuple[int, Any], _Peer] = {}  # by (listener fd, remote)
        self.buf = bytearray(UDP_MAX)
        self.view = memoryview(self.buf)

    def readable(self, index: int, lst: Listener) -> None:
        """Read up to a batch of datagrams from one UDP listener."""
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
            self._datagram(index, lst, remote, n)
            if self.loop.stopping:
                return

    def _datagram(self, index: int, lst: Listener, remote: Any, n: int) -> None:
        ev = self.loop.ev
        key = (lst.sock.fileno(), remote)
        peer = self.by_remote.get(key)
        if peer is None:
            peer = _Peer(self.loop.new_id(), index, lst, remote)
            self.peers[peer.id] = peer
            self.by_remote[key] = peer
            if ev.opened is not None:
                try:
                    out, options, action = split_opened(
                        ev.opened(peer.id, Info(False, index, lst.bound, remote))
                    )
                except Exception as e:
                    self._fail(peer, e, "opened")
                    return
                if options is not None:
                    peer.reuse = options.reuse_input_buffer
                if not self._answer(peer, out, action):
                    return
        if ev.data is None:
            return
        view = self.view[:n]
        try:
            try:
                packet: Any = view if peer.reuse else bytes(view)
                out, action = split_reply(ev.data(peer.id, packet))
            except Exception as e:
                self._fail(peer, e, "data")
                return
            self._answer(peer, out, action)
        finally:
            view.release()

    def _answer(self, peer: _Peer, out: Any, action: Action) -> bool:
        """Send ``out`` as one datagram, apply ``action``; False if forgotten."""
        if out and not self._send(peer, out):
            return False
        if action is Action.CLOSE or action is Action.DETACH:
            self.forget(peer.id, None)
            return False
        if action is Action.SHUTDOWN:
            self.loop.stopping = True
        return True

    def _send(self, peer: _Peer, out: Any) -> bool:
        ev = self.loop.ev
        if ev.prewrite is not None and not self._around(peer, ev.prewrite, (peer.id, len(out))):
            return False
        try:
            n = peer.listener.sock.sendto(out, peer.remote)
        except (BlockingIOError, InterruptedError):
            n = 0  # the send buffer is full: the datagram is dropped
        except OSError as e:
            self.forget(peer.id, e)
            return False
        if ev.postwrite is not None:
            return self._around(peer, ev.postwrite, (peer.id, n, 0))
        return True

    def _around(self, peer: _Peer, cb: Any, args: tuple[int, ...]) -> bool:
        try:
            action = split_action(cb(*args), "prewrite/postwrite")
        except Exception as e:
            self._fail(peer, e, "prewrite/postwrite")
            return False
        if action is Action.CLOSE or action is Action.DETACH:
            self.forget(peer.id, None)
            return False
        if action is Action.SHUTDOWN:
            self.loop.stopping = True
        return True

    def _fail(self, peer: _Peer, e: Exception, where: str) -> None:
        log.error("%s raised for UDP remote %d; forgetting it", where, peer.id, exc_info=e)
        self.forget(peer.id, e)

    def forget(self, cid: int, err: BaseException | None) -> None:
        """Forget a remote and call ``closed``; its next datagram opens a new id."""
        peer = self.peers.pop(cid, None)
        if peer is None:
            return
        del self.by_remote[(peer.listener.sock.fileno(), peer.remote)]
        closed = self.loop.ev.closed
        if closed is None:
            return
        try:
            action = split_action(closed(cid, err), "closed")
        except Exception:
            log.exception("closed raised for UDP remote %d; ignored", cid)
            return
        if action is Action.SHUTDOWN:
            self.loop.stopping = True


def is_udp(lst: Listener) -> bool:
    """Whether a listener is a UDP socket."""
    return lst.sock.type == socket.SOCK_DGRAM
