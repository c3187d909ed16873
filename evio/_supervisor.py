"""Loops: N loops in N processes behind the same addresses, under a supervisor.

Owns: ``serve(loops=N)``: binding once, forking, watching, restarting and
stopping the loops' processes.

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

**Binding: once, shared.**  The parent binds every address exactly once,
before the first fork, as one loop would -- so an address error, and
"Address already in use" when another server holds the port, is raised by
``serve()`` with no process started.  Every child inherits those sockets
and watches all of them.  We do *not* give each loop its own socket with
``SO_REUSEPORT``, though on Linux that makes the kernel balance, for two
reasons learned the hard way:

* ``SO_REUSEPORT`` lets *anyone* of the same user bind the port again; a
  second, unrelated server started by mistake then silently takes its
  share of the connections instead of failing to start.
* The kernel hashes each new connection to one socket and never looks
  back.  While a loop is dead its socket is still open (the parent holds
  it for the replacement), so the kernel keeps handing it connections that
  nobody accepts until the replacement comes -- and none, if the loop
  keeps dying.  With one shared accept queue, the surviving loops take
  every connection; a dead loop strands nothing.

The price is the "thundering herd": every loop polls the same listener,
so a new connection wakes every idle loop, one ``accept`` wins and the
others get ``EAGAIN``, which `evio._accept` expects.  With N no larger than
the CPUs that costs a few wasted wake-ups per connection; busy loops are
not woken at all (they are not sleeping), so the idle ones take the
connections, which is the balancing we want.  (``EPOLLEXCLUSIVE`` wakes
one loop, but is Linux-only and wakes the same waiter first: it balances
worse.)  A UDP socket is
shared the same way: each datagram is read by whichever loop reads first,
so datagrams from one remote may be served by different loops, each
knowing that remote by an id of its own.

The parent keeps every socket open, accepting on none, until ``serve()``
returns, and removes a unix socket file once (the children forget the path).

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

* it sent a report on its own pipe (`evio._reports`): ``serving`` or
  ``tick`` raised.  The parent stops the others and raises it, and never
  restarts that loop: it would only raise again.
* exit status 0: its loop stopped -- ``SHUTDOWN``, ``Server.stop()``, a
  stop signal of its own, or the pipe above.  Any loop stopping stops them
  all.
* anything else (a signal, ``os._exit``): it died.  The parent forks a new
  one for the same index at once the first time, and after a back-off if
  that slot keeps dying -- 0.1 s, doubling to 5 s, back to "at once" once
  one has lived 10 s -- and logs a warning on the ``evio`` logger.  The
  other loops never notice, and since they share the accept queue no
  connection waits for the replacement.

**When fork fails** (``EAGAIN`` at the process limit, ``ENOMEM``), the
parent does not give up while any loop still serves: it logs why, keeps
the others serving, and tries that slot again with the same back-off as a
death.  Only when no loop is left running and fork fails does it stop,
and ``serve()`` raises the ``OSError`` with a note saying so.

Each report pipe wakes the parent the moment its child exits (end of file),
so it sleeps in a poller; a 1 s timeout covers a pipe a grandchild inherited.

**Signals.**  On the main thread, the parent takes each stop signal (by
default SIGINT, SIGTERM and SIGHUP) whose handler is still the default
one, for as long as it supervises: any of them stops every loop.  After
every child has been reaped the handlers are put back; then SIGINT is
raised as ``KeyboardInterrupt`` and SIGTERM or SIGHUP makes ``serve()``
return, as for one loop.  Each child starts with the handlers the parent
had before ``serve()``, and takes the same default-handled stop signals
itself, to stop its loop cleanly: a Ctrl-C or a SIGTERM sent to the whole
process group reaches every child too, and each must close its
connections, not die half-way.  Every child leaves by ``os._exit``: it
must never return into the parent's stack or run its ``atexit`` hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from . import _reports as reports
from ._addresses import Address, Listener, bind_all
from ._events import Events
from ._pollers import READ, Poller, make_poller
from ._signals import DEFAULT_STOP_SIGNALS, SignalWatch

__all__ = ["AUTO", "loop_count", "supervise"]

log = logging.getLogger("evio")

AUTO = "auto"
"""``serve(..., loops=AUTO)``: one loop per CPU this process may run on."""
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
BACKOFF_RESET = 10.0  # a loop that lived this long starts its slot's back-off afresh
GRACE = 10.0  # seconds the loops get to shut down before SIGKILL (or stop_timeout + 1)


class ChildLoop(Protocol):
    """What a child runs: a loop that can be asked to stop from a signal handler."""

    def run(self) -> None:
        """Serve until stopped."""

    def stop(self) -> None:
        """Ask the loop to stop; safe in a signal handler."""


MakeLoop = Callable[[Events, list[Listener], str | None, int, int, int, float], ChildLoop]
"""How a child makes its loop:
``(events, listeners, poller, index, loops, parent_fd, stop_timeout)``."""


def loop_count(loops: object) -> int:  # LOOPS-1
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


def supervise(events: Events, parsed: list[Address], n: int,  # LOOPS-2
              poller: str | Poller | None, make_loop: MakeLoop,
              stop_signals: Iterable[int] = DEFAULT_STOP_SIGNALS,
              stop_timeout: float = 2.0) -> None:
    """`evio.serve` with ``loops`` > 1: bind, fork ``n`` loops, supervise them.

    Returns once every child has been reaped and every listener closed.

    Raises:
        ValueError: ``poller`` is a `evio.Poller` instance (one cannot be
            shared by processes) or an unknown name.
        OSError: a bind failed (nothing stays bound), or fork failed while
            no loop was running.
        KeyboardInterrupt: SIGINT stopped the loops.
        Exception: what a loop's ``serving`` or ``tick`` raised.
    """
    if isinstance(poller, Poller):
        raise ValueError("loops > 1 needs a poller name, not a Poller instance: "
                         "each loop's process makes its own")
    make_poller(poller).close()  # an unknown name is a ValueError before anything is bound
    listeners = bind_all(parsed)  # LOOPS-3: once, shared by every loop
    try:
        sup = _Supervisor(events, listeners, n, poller, make_loop,
                          tuple(signal.Signals(s) for s in stop_signals),
                          stop_timeout)
        sup.run()
    finally:
        for lst in listeners:
            lst.close()  # a unix socket file goes with its listener, once
    if sup.error is not None:
        raise sup.error
    if sup.signals.interrupted:
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

    def __init__(self, events: Events, listeners: list[Listener], n: int,
                 poller: str | None, make_loop: MakeLoop,
                 stop_signals: tuple[signal.Signals, ...], stop_timeout: float) -> None:
        self.events, self.listeners, self.n = events, listeners, n
        self.stop_timeout = stop_timeout
        self.grace = max(GRACE, stop_timeout + 1.0)
        self.poller, self.make_loop = poller, make_loop
        self.children: dict[int, _Child] = {}  # by pid
        self.restarts: dict[int, float] = {}  # index -> when to fork it again
        self.failures = [0] * n  # consecutive deaths or failed forks, per index
        self.error: BaseException | None = None
        self.stopping = False
        self.deadline = 0.0  # when stopping: SIGKILL whoever is left after this
        # LOOPS-6: the stop signals, taken as one loop takes them (`evio._signals`);
        # a signal only marks itself there, and `run` acts on it.
        self.signals = SignalWatch(lambda: None, stop_signals)
        self.watch = make_poller(None)  # the children's report pipes, and the bell
        self.parent_r, self.parent_w = os.pipe()

    # ------------------------------------------------------------ the parent

    def run(self) -> None:
        try:
            self._install_signals()
            for i in range(self.n):
                self._spawn(i)
            while self.children or (self.restarts and not self.stopping):
                self._wait()
                self._reap()
                if self.signals.received is not None:
                    self._stop(f"signal {self.signals.received.name}")
                now = time.monotonic()
                for i, due in sorted(self.restarts.items()):
                    if due <= now and not self.stopping:
                        del self.restarts[i]
                        self._spawn(i)
                if self.stopping and self.children and now >= self.deadline:
                    for pid in self.children:
                        log.warning("loop %d (pid %d) did not stop in %.0f s: killing it",
                                    self.children[pid].index, pid, self.grace)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    self.deadline = float("inf")
        finally:
            self._stop("serve() is returning")
            # Children are left only after an error of our own (a caller's
            # handler raised): the pipe asks them to stop; after the grace, kill.
            end = time.monotonic() + self.grace
            while self.children:
                for pid in list(self.children):
                    if time.monotonic() >= end:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        if os.waitpid(pid, os.WNOHANG)[0] == 0:
                            continue
                    self._forget(self.children.pop(pid))
                time.sleep(0.005)
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
            timeout = min(timeout, 0.001)  # one is exiting: reap it soon
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
        bell = self.signals.fileno()
        if bell is not None and bell in ready:
            self.signals.drain(None, READ)

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
                self.error = reports.rebuild(b"".join(c.chunks), name)
            self._stop(f"{name} raised")
        elif os.waitstatus_to_exitcode(status) == 0:
            self._stop(f"{name} stopped")
        elif not self.stopping:
            if time.monotonic() - c.started >= BACKOFF_RESET:
                self.failures[c.index] = 0
            delay = self._retry(c.index)
            log.warning("%s died (%s); starting a new one %s",
                        name, reports.describe(status), _when(delay))

    def _retry(self, index: int) -> float:
        """Schedule slot ``index`` again (LOOPS-7): at once, then 0.1 s doubling to 5 s."""
        tries = self.failures[index]
        delay = 0.0 if tries == 0 else min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (tries - 1))
        self.failures[index] += 1
        self.restarts[index] = time.monotonic() + delay
        return delay

    def _stop(self, why: str) -> None:  # LOOPS-5
        """Close the pipe every loop watches: each shuts down as for Server.stop()."""
        if self.stopping:
            return
        self.stopping = True
        self.restarts.clear()
        self.deadline = time.monotonic() + self.grace
        if self.children:
            log.info("stopping %d loop(s): %s", len(self.children), why)
        os.close(self.parent_w)

    # --------------------------------------------------------------- signals

    def _install_signals(self) -> None:
        """LOOPS-6: take the stop signals that still have their default handlers."""
        bell = self.signals.install()  # None off the main thread: no handlers there
        if bell is not None:
            self.watch.register(bell, READ)

    def _uninstall_signals(self) -> None:
        # The bell stays registered: in a child, ``watch`` is the parent's
        # epoll set too (fork shares it), and closing the bell is enough.
        self.signals.uninstall()

    # ------------------------------------------------------------- the child

    def _spawn(self, index: int) -> None:
        for stream in (sys.stdout, sys.stderr):  # or the child prints it again
            with contextlib.suppress(Exception):
                stream.flush()
        report_r = report_w = -1
        try:
            report_r, report_w = os.pipe()  # EMFILE here is a failed start too
            pid = os.fork()
        except OSError as e:  # EAGAIN at the process limit, ENOMEM (LOOPS-11)
            what = "fork failed" if report_w >= 0 else "no pipe for it"
            for fd in (report_r, report_w):
                if fd >= 0:
                    os.close(fd)
            if not self.children:
                e.add_note(f"{what} for loop {index} while no loop was running: "
                           "serve() cannot keep any loop alive")
                log.error("cannot start loop %d: %s (%s) and no loop is running; "
                          "stopping", index, what, e)
                raise
            delay = self._retry(index)
            log.warning("cannot start loop %d: %s (%s); %d of %d loop(s) serving; "
                        "trying again %s", index, what, e, len(self.children), self.n,
                        _when(delay))
            return
        if pid == 0:
            os.close(report_r)
            self._child(index, report_w)  # never returns
        os.close(report_w)
        self.children[pid] = _Child(index, pid, report_r, time.monotonic())
        self.watch.register(report_r, READ)

    def _child(self, index: int, report: int) -> None:  # LOOPS-4, LOOPS-9
        code = reports.RAISED
        try:
            stops = self.signals.taken()  # the stop signals the parent took over
            self._uninstall_signals()  # the handlers from before serve(); no bell
            self.watch.close()
            os.close(self.parent_w)  # so that only the parent's copy holds the pipe open
            for c in self.children.values():
                if c.report >= 0:
                    os.close(c.report)
            for lst in self.listeners:
                lst.unlink = None  # the parent removes the unix socket file, once
            loop = self.make_loop(self.events, self.listeners, self.poller, index, self.n,
                                  self.parent_r, self.stop_timeout)
            for sig in stops:  # LOOPS-6: a stop signal stops this loop cleanly
                signal.signal(sig, lambda signum, frame: loop.stop())
            loop.run()
            code = 0
        except KeyboardInterrupt:
            code = 0  # a SIGINT of its own stopped the loop: a stop like any other
        except BaseException as e:
            reports.send(report, e)  # LOOPS-8
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)


def _when(delay: float) -> str:
    return "now" if delay <= 0 else f"in {delay:.1f} s"

