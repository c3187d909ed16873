"""Forking with threads: say so in evio's words, before the fork, once.

Owns: what evio says before it forks a process that has other threads.

Theory of operation
-------------------
``serve(loops=N)`` forks N processes.  ``fork`` copies only the thread that
calls it: a lock another thread held at that moment (the logging module's,
an allocator's, a library's) is held for ever in the child, which
deadlocks the first time it wants it.  Python 3.12 warns about this with a
``DeprecationWarning`` raised from inside ``os.fork`` -- pointing into
evio's supervisor, not at the user's call, and once per fork.

So `evio.serve` looks first (rule EV-24): if other threads run, it warns
once, with a ``RuntimeWarning`` that points at the user's ``serve`` call,
names the threads and says what to do; Python's own warning is silenced
for evio's forks only (`quiet_forks`).  It stays a warning, not an error:
a thread that never takes a lock the loops need (an idle one, a metrics
exporter) is harmless, and only the user can know.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

__all__ = ["quiet_forks", "warn_if_threads"]


def warn_if_threads(n: int, stacklevel: int = 3) -> None:
    """Warn, at the caller's caller, if other threads run while ``n`` loops fork."""
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if not others:
        return
    warnings.warn(
        f"serve(loops={n}) forks {n} processes while {len(others)} other thread(s) run "
        f"({', '.join(others[:5])}): a lock one of them holds at the fork stays held for "
        f"ever in the loops' processes. Start threads in serving (each loop runs it in its "
        f"own process) or after serve() returns, or use loops=1",
        RuntimeWarning, stacklevel=stacklevel)


@contextlib.contextmanager
def quiet_forks() -> Iterator[None]:
    """Silence Python's own multi-threaded fork warning inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
        yield
