"""Memory: giving back what a burst of short-lived records took.

Owns: giving back to the system the memory a burst of short-lived records
took.

Theory of operation
-------------------
A UDP server makes a small record per remote address (`evio._udp`), and a
flood of spoofed sources makes hundreds of thousands of them, then forgets
them all once they fall silent.  Every object is freed, yet the process
keeps most of the memory the flood took.  Where it stays (measured on
CPython 3.11 and glibc, one flood of 150k-200k remotes, RSS about 18 MB
before):

* **CPython's small-object allocator** (objects up to 512 bytes) carves
  1 MiB *arenas* into pools and returns an arena to the system only when
  every block in it is free.  The flood's records fill twenty-odd arenas;
  after it, any one block still in use keeps a whole arena resident.
* **The interpreter's free lists** are such blocks: a freed tuple, float,
  dict or list is kept for reuse (up to 2,000 tuples of each length, and
  so on), and the last ones freed are the flood's, scattered across its
  arenas.  About 1,700 blocks held 8 arenas, +8 MB, for good: an idle
  server never runs the full collection that empties those lists.
* **The C heap** (``malloc``) keeps the big hash tables of the remote
  tables once freed: glibc returns the top of its heap to the system, not
  free pages below a block still in use (up to +4 MB in our runs).

So once a sweep has forgotten every remote of a table that had grown large
(`GIVE_BACK_AT`), `give_back` runs one full collection (``gc.collect()``:
it empties the free lists, and the arenas they alone held are unmapped)
and, where the C library has it, ``malloc_trim(0)`` (glibc: free pages
anywhere in the heap go back).  Both cost time once per flood, not per
datagram: a full collection walks every container object in the process
(tens of milliseconds for a million), which is why small tables skip it.

When it runs matters.  A float freed *after* the collection goes back to
the float free list, which nothing empties again, and keeps its block --
and its arena -- for good.  So `give_back` runs in the wakes phase of the
turn after the sweep (posted to the doorbell, not put on the timer queue,
whose entries carry clock readings), and the loop keeps no object of a
turn past it: the timeout and the list of poll reports are temporaries,
and with no timer left the clock reading is dropped too.  A server with no
state of its own then gives back all but about a megabyte (measured on
`examples/udp_echo.py` after 300,000 sources: +0.6 to +1.7 MB).  That
megabyte is one arena with no block in use: CPython keeps the last wholly
free arena rather than unmap it, so that a loop allocating and freeing
around an arena boundary does not map and unmap one every time
(bpo-37257).  Its pages stay resident, and nothing outside the allocator
can hand them back.

What this cannot reach is a live object that happened to be allocated in
one of the flood's arenas, and it would be a trick to pretend otherwise:
the application's own objects made during the flood (a counter bumped per
remote), or, in a server that ticks, the timer queue's entries and clock
readings, which each tick renews from the blocks the last one freed.
Each keeps at most one arena (1 MiB); the spec page states the bounds
that follow.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable

__all__ = ["GIVE_BACK_AT", "give_back"]

GIVE_BACK_AT = 4096
"""A table of remotes that grew to this many is given back once empty."""


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on a C library without it (macOS, musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_trim = _malloc_trim()


def give_back() -> None:
    """Return freed memory to the system: empty the free lists, trim the C heap."""
    gc.collect()
    if _trim is not None:
        _trim(0)
