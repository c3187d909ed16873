"""Wiring: the one record of a loop's shared parts, and its dispatch table.

Owns: what every side of one loop (streams, accept, UDP, dial) is given by
the loop -- nothing else; each side takes this record, not a list of
arguments, and the dispatch table has its type here, once.

Theory of operation
-------------------
A loop is a handful of objects that all need the same few others: the
callbacks, the poller, the deadline queue, the policy that calls user
code, the table that maps a ready descriptor to its handler, the source of
connection ids and the doorbell.  Passed one by one they made six- and
seven-argument constructors, in a different order in each side, and the
dispatch table was typed three ways.  `Parts` is made once by the loop
(`evio._loop`) and handed to each side, which keeps the fields it uses as
attributes of its own (an attribute read on the hot path, not a chain).

The dispatch table is written by each side for its own descriptors: the
loop (doorbell, signals, supervisor pipe), the acceptor (listeners), the
streams (connections), UDP (datagram sockets) and the dialer (sockets
still connecting).  Only the side that registered a descriptor removes it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

from ._callbacks import Policy
from ._events import Events
from ._pollers import Poller
from ._timers import Timers
from ._wake import Waker

__all__ = ["Dispatch", "Handler", "Parts"]

Handler = Callable[[Any, int], None]
"""``handler(argument, mask)``, called for a ready descriptor.  The argument
is whatever the side registered with it -- a connection record, a
``(index, listener)`` pair, a dial, nothing -- so its type is open here and
known only to that side's handler."""

Dispatch = dict[int, tuple[Handler, Any]]
"""Descriptor -> (its handler, the handler's argument: open, as above)."""


@dataclasses.dataclass(slots=True, frozen=True)
class Parts:
    """What the loop gives every side of itself.

    Attributes:
        events: The callbacks.
        poller: The loop's poller.
        timers: The loop's deadline queue.
        policy: Calls the callbacks and acts on their answers.
        handlers: The dispatch table (`Dispatch`).
        ids: Where connection ids come from; ``next()`` on it is atomic,
            so `evio.Server.dial` draws ids from any thread.
        waker: The doorbell: wakes and jobs from other threads.
        debug: Debug mode is on: the sides check the preconditions of
            their hot-path shortcuts (`evio._debug`, EV-26).
    """

    events: Events
    poller: Poller
    timers: Timers
    policy: Policy
    handlers: Dispatch
    ids: itertools.count[int]
    waker: Waker
    debug: bool = False
