"""Loops: N loops in N processes behind the same addresses, under a supervisor.

Theory of operation
-------------------
One loop uses one core, and in CPython one process cannot use more (the
interpreter lock).  So ``serve(..., loops=N)`` runs N loops in N *forked*
processes, and the process that called `evio.serve` becomes their
supervisor.  Forking, not spawning, because the children need two things
no pickle can carry: the `evio.Events` (closures) and the listening sockets,
already bound.  (So call ``serve()`` before starting threads of your own: a
forked child gets only the thread that forked it, and any lock another
thread held stays held.)

**Binding.**  The parent binds everything before the first fork, so an
address error is raised by ``serve()`` with no process started, as for one
loop.  Then each loop must serve every address, and there are two ways:

1. On Linux, ``SO_REUSEPORT`` lets several sockets bind one port, and the
   kernel spreads incoming connections (and UDP remotes, by a hash of the
   four-tuple) over them.  So the parent binds one socket *per loop* for
   every TCP and UDP address: the first one with the port asked for, the
   others on the port the first got (port 0 then means one port for all).
   The kernel balances; no loop is woken for a connection it will not get.
2. Elsewhere -- macOS and the BSDs accept ``SO_REUSEPORT`` but do not
   balance with it -- and always for unix sockets, one listening socket is
   inherited by every child.  Every loop is woken for a new connection;
   one accept wins, the others see ``EAGAIN`` (`evio.accept` expects it).

The parent keeps every socket open, and accepts on none, until ``serve()``
returns.  That is what makes a restart invisible to clients: connections
the kernel hashed to a dead loop's socket wait in its backlog until the
replacement (which inherits that very socket) accepts them -- none is
refused.  A unix socket file is removed once, by the parent, at the end;
the children's copies of the listeners forget the path.

**One pipe stops them all.**  Before forking, the parent makes one pipe.
Each child closes the write end at once and gives the read end to its loop
to watch; the parent never writes.  The read end becomes readable -- end
of file -- only when the last write end closes, which happens in exactly
two cases: the parent closes it to stop the loops, or the parent died
(even by SIGKILL: the kernel closes a dead process's descriptors).  Either
way each loop shuts down as for ``Server.stop()``.  A signal from the
parent cannot outlive a SIGKILL, ``prctl(PR_SET_PDEATHSIG)`` is Linux-only;
the pipe is portable, and is one more descriptor the loop polls.

**What a child's end means** is read from how it ended:

* it sent a report on its own pipe: ``serving`` or ``tick`` raised.  The
  report is the pickled exception and its traceback text; the parent stops
  the others and raises it.  Such a loop is never restarted: it would only
  raise again.
* exit status 0: its loop stopped -- ``SHUTDOWN``, ``Server.stop()``, a
  SIGINT of its own, or the pipe above.  Any loop stopping stops them all.
* anything else (a signal, ``os._exit``): it died.  The parent forks a new
  one for the same index after a back-off -- 0.1 s, doubling to 5 s for a
  slot that keeps dying, back to 0.1 s once one has lived 10 s -- and logs
  a warning on the ``evio`` logger.  The other loops never notice.

Each report pipe also wakes the parent the moment its child exits (end of
file), so the parent sleeps in a poller (`evio.pollers`) with nothing to
poll; a one-second timeout covers a pipe a grandchild inherited.

**Signals.**  On the main thread the parent takes SIGINT and SIGTERM for
as long as it supervises: either stops every loop.  After every child has
been reaped the handlers are put back, and a SIGINT met with Python's
default handler in place is raised as ``KeyboardInterrupt``, as for one
loop.  Children get back the handlers the parent had before, and every
child leaves by ``os._exit``: it must never return into the parent's stack
or run its ``atexit`` hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from .addresses import Address, Listener, bind_all
from .events import Events
from .pollers import READ, Poller, make_poller

__all__ = ["AUTO", "loop_count", "supervise"]

log = logging.getLogger("evio")

AUTO = "auto"
"""``serve(..., loops=AUTO)``: one loop per CPU this process may run on."""
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
BACKOFF_RESET = 10.0  # a loop that lived this long starts its slot's back-off afresh
GRACE = 10.0  # seconds the loops get to shut down before SIGKILL
_RAISED = 70  # a child's exit status when it sent a report (EX_SOFTWARE)

RunLoop = Callable[[Events, list[Listener], str | None, int, int, int], None]
"""How a child runs its loop: ``(events, listeners, poller, index, loops, parent_fd)``."""


def loop_count(loops: object) -> int:
    """The number of loops ``loops`` asks for.

    Raises:
        ValueError: ``loops`` is not a positive int or `AUTO`.
    """
    if loops == AUTO:
        affinity = getattr(os, "sched_getaffinity", None)
        return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    if isinstance(loops, bool) or not isinstance(loops, int) or loops < 1:
        raise ValueError(f"loops must be a positive int or {AUTO!r}, not {loops!r}")
    return loops


def kernel_balances(a: Address) -> bool:
    """Whether each loop gets its own socket for ``a`` (``SO_REUSEPORT``, Linux)."""
    return (a.network != "unix" and a.fd < 0 and sys.platform.startswith("linux")
            and hasattr(socket, "SO_REUSEPORT"))  # an inherited socket is shared (ADDR-12)


def bind_per_loop(parsed: list[Address], n: int) -> list[list[Listener]]:
    """Bind every address for ``n`` loops: one list of listeners per loop.

    A listener that is shared appears, as the same object, in every list.
    All or nothing, like `evio.addresses.bind_all`.
    """
    first = bind_all([dataclasses.replace(a, reuseport=True) if kernel_balances(a) else a
                      for a in parsed])
    slots = [first]
    try:
        for _ in range(1, n):
            slot: list[Listener] = []
            slots.append(slot)
            for lst in first:
                a = lst.address
                if kernel_balances(a):
                    port = lst.sock.getsockname()[1]
                    slot.append(bind_all([dataclasses.replace(a, port=port)])[0])
                else:
                    slot.append(lst)
    except BaseException:
        _close_all(slots)
        raise
    return slots


def _close_all(slots: list[list[Listener]]) -> None:
    seen: set[int] = set()
    for slot in slots:
        for lst in slot:
            if id(lst) not in seen:
                seen.add(id(lst))
                lst.close()  # a unix socket file goes with its listener, once


def supervise(events: Events, parsed: list[Address], n: int,
              poller: str | Poller | None, run: RunLoop) -> None:
    """`evio.serve` with ``loops`` > 1: bind, fork ``n`` loops, supervise them.

    Returns once every child has been reaped and every listener closed.

    Raises:
        ValueError: ``poller`` is a `evio.Poller` instance (one cannot be
            shared by processes) or an unknown name.
        OSError: a bind failed; nothing stays bound.
        KeyboardInterrupt: SIGINT stopped the loops.
        Exception: what a loop's ``serving`` or ``tick`` raised.
    """
    if isinstance(poller, Poller):
        raise ValueError("loops > 1 needs a poller name, not a Poller instance: "
                         "each loop's process makes its own")
    make_poller(poller).close()  # an unknown name is a ValueError before anything is bound
    slots = bind_per_loop(parsed, n)
    try:
        sup = _Supervisor(events, slots, poller, run)
        sup.run()
    finally:
        _close_all(slots)
    if sup.error is not None:
        raise sup.error
    if sup.interrupted:
        raise KeyboardInterrupt


@dataclasses.dataclass(slots=True)
class _Child:
    """One loop's process, as the parent sees it."""

    index: int
    pid: int
    report: int  # read end of the child's report pipe; -1 once closed
    started: float
    chunks: list[bytes] = dataclasses.field(default_factory=list)


class _Supervisor:
    """The parent's side: fork, watch, restart, stop, reap. Not reusable."""

    def __init__(self, events: Events, slots: list[list[Listener]],
                 poller: str | None, run: RunLoop) -> None:
        self.events, self.slots, self.poller, self.run_loop = events, slots, poller, run
        self.children: dict[int, _Child] = {}  # by pid
        self.restarts: dict[int, float] = {}  # index -> when to fork it again
        self.failures = [0] * len(slots)  # consecutive deaths, per index
        self.error: BaseException | None = None
        self.interrupted = False
        self.stopping = False
        self.deadline = 0.0  # when stopping: SIGKILL whoever is left after this
        self.signalled: int | None = None
        self.old_handlers: dict[int, Any] = {}
        self.old_wakeup = -1
        self.bell: tuple[socket.socket, socket.socket] | None = None
        self.watch = make_poller(None)  # the children's report pipes, and the bell
        self.parent_r, self.parent_w = os.pipe()

    # ------------------------------------------------------------ the parent

    def run(self) -> None:
        try:
            self._install_signals()
            for i in range(len(self.slots)):
                self._spawn(i)
            while self.children or (self.restarts and not self.stopping):
                self._wait()
                self._reap()
                if self.signalled is not None:
                    self._stop(f"signal {signal.Signals(self.signalled).name}")
                now = time.monotonic()
                for i, due in list(self.restarts.items()):
                    if due <= now and not self.stopping:
                        del self.restarts[i]
                        self._spawn(i)
                if self.stopping and self.children and now >= self.deadline:
                    for pid in self.children:
                        log.warning("loop %d (pid %d) did not stop in %.0f s: killing it",
                                    self.children[pid].index, pid, GRACE)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    self.deadline = float("inf")
        finally:
            self._stop("serve() is returning")
            for pid in list(self.children):  # only after an error of our own
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self._forget(self.children.pop(pid))
            self._uninstall_signals()
            os.close(self.parent_r)
            self.watch.close()

    def _wait(self) -> None:
        """Sleep until a child's pipe stirs, a signal, a restart is due, or 1 s."""
        timeout = 1.0
        if self.restarts and not self.stopping:
            timeout = min(timeout, max(0.0, min(self.restarts.values()) - time.monotonic()))
        if self.stopping:
            timeout = min(timeout, max(0.0, self.deadline - time.monotonic()))
        if any(c.report < 0 for c in self.children.values()):
            timeout = min(timeout, 0.002)  # one is exiting: reap it soon
        ready = {fd for fd, _ in self.watch.poll(timeout)}
        for c in self.children.values():
            if c.report in ready:
                chunk = os.read(c.report, 65536)
                if chunk:
                    c.chunks.append(chunk)
                else:  # the child is exiting; _reap polls for it from here on
                    self.watch.unregister(c.report)
                    os.close(c.report)
                    c.report = -1
        if self.bell is not None and self.bell[0].fileno() in ready:
            with contextlib.suppress(BlockingIOError):
                self.bell[0].recv(4096)

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # someone else reaped it: treat as died
                done, status = pid, 1 << 8
            if done == 0:
                continue
            child = self.children.pop(pid)
            self._forget(child)
            self._ended(child, status)

    def _forget(self, c: _Child) -> None:
        """Read what is left of a reaped child's report and close its pipe."""
        if c.report >= 0:
            self.watch.unregister(c.report)
            os.set_blocking(c.report, False)
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(c.report, 65536):
                    c.chunks.append(chunk)
            os.close(c.report)
            c.report = -1

    def _ended(self, c: _Child, status: int) -> None:
        name = f"loop {c.index} (pid {c.pid})"
        if c.chunks:
            if self.error is None:
                self.error = _rebuild(b"".join(c.chunks), name)
            self._stop(f"{name} raised")
        elif os.waitstatus_to_exitcode(status) == 0:
            self._stop(f"{name} stopped")
        elif not self.stopping:
            lived = time.monotonic() - c.started
            if lived >= BACKOFF_RESET:
                self.failures[c.index] = 0
            delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** self.failures[c.index])
            self.failures[c.index] += 1
            log.warning("%s died (%s); starting a new one in %.1f s",
                        name, _describe(status), delay)
            self.restarts[c.index] = time.monotonic() + delay

    def _stop(self, why: str) -> None:
        """Close the pipe every loop watches: each shuts down as for Server.stop()."""
        if self.stopping:
            return
        self.stopping = True
        self.restarts.clear()
        self.deadline = time.monotonic() + GRACE
        if self.children:
            log.info("stopping %d loop(s): %s", len(self.children), why)
        os.close(self.parent_w)

    # --------------------------------------------------------------- signals

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python allows signal handlers only there
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self.bell = (r, w)
        self.watch.register(r.fileno(), READ)
        self.old_wakeup = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and (
                self.old_handlers.get(signum) is signal.default_int_handler):
            self.interrupted = True
        self.signalled = signum

    def _uninstall_signals(self) -> None:
        for sig, old in self.old_handlers.items():
            signal.signal(sig, old)
        if self.bell is not None:
            signal.set_wakeup_fd(self.old_wakeup)
            for s in self.bell:
                s.close()
            self.bell = None

    # ------------------------------------------------------------- the child

    def _spawn(self, index: int) -> None:
        report_r, report_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # or the child prints it again
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            pid = os.fork()
        except BaseException:  # EAGAIN, ENOMEM: serve() fails with it
            os.close(report_r)
            os.close(report_w)
            raise
        if pid == 0:
            os.close(report_r)
            self._child(index, report_w)  # never returns
        os.close(report_w)
        self.children[pid] = _Child(index, pid, report_r, time.monotonic())
        self.watch.register(report_r, READ)

    def _child(self, index: int, report: int) -> None:
        code = _RAISED
        try:
            self._uninstall_signals()  # the handlers from before serve(); no bell
            self.watch.close()
            os.close(self.parent_w)  # so that only the parent's copy holds the pipe open
            for c in self.children.values():
                if c.report >= 0:
                    os.close(c.report)
            mine = self.slots[index]
            for slot in self.slots:
                for lst in slot:
                    if all(lst is not m for m in mine):
                        lst.sock.close()
            for lst in mine:
                lst.unlink = None  # the parent removes the unix socket file, once
            self.run_loop(self.events, mine, self.poller, index, len(self.slots),
                          self.parent_r)
            code = 0
        except KeyboardInterrupt:
            code = 0  # a SIGINT of its own stopped the loop: a stop like any other
        except BaseException as e:
            _send_report(report, e)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)


def _send_report(fd: int, e: BaseException) -> None:
    text = "".join(traceback.format_exception(e))
    try:
        blob = pickle.dumps((e, text))
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        blob = pickle.dumps((None, text))
    with contextlib.suppress(OSError):
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view):]


def _rebuild(blob: bytes, name: str) -> BaseException:
    """The exception a child reported, noted with where it came from."""
    try:
        e, text = pickle.loads(blob)
    except Exception:
        return RuntimeError(f"{name} raised, and its report could not be read")
    if not isinstance(e, BaseException):
        return RuntimeError(f"{name} raised:\n{text}")
    e.add_note(f"raised in {name}; its traceback there:\n{text}")
    return e


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
