"""The loop: one thread, one poller, every listener and connection.

Owns: the turn -- timeout, poll, dispatch, wakes, timers -- and the start
and shutdown around it; each kind of connection lives in its own module.

Theory of operation
-------------------
An event loop is a ``while`` around one blocking call.  Everything else is
bookkeeping that decides *how long* that call may block and *what to do*
with what it returns.  `serve` reads in the order the spec page *The loop*
tells it:

1. **start** -- parse every address, bind every listener, call ``serving``,
   fire the first ``tick``.
2. **timeout** -- the poll may block until the earliest thing that is due
   (`evio._timers`: the next tick, a dial's timeout, an idle connection's
   check, a backed-off listener's retry); with nothing due it blocks
   without a limit.  A loop with no timer and no traffic never wakes.
3. **poll** -- one call into the backend (`evio._pollers`).
4. **dispatch** -- each ready descriptor is looked up in one table,
   descriptor -> handler: a listener accepts (`evio._accept`) or reads
   datagrams (`evio._udp`),
   a connection writes what is pending and reads once, a dial in progress
   learns whether it connected (`evio._dial`), the doorbell notes that it
   rang.
5. **wakes** -- if the doorbell rang, drain it, run the jobs other threads
   posted (dials) and call ``data(id, None)`` for each woken id
   (`evio._wake`).
6. **timers** -- fire every timer that is due.
7. **shutdown** -- when a callback returned ``SHUTDOWN``, `evio.Server.stop`
   was called, a stop signal arrived (`evio._signals`), or a ``serving`` or
   ``tick`` raised: accepting stops, pending output is flushed for at most
   ``stop_timeout`` seconds (the loop polls for writability only), every
   connection is closed (each with its ``closed`` call), listeners are
   closed, unix socket files removed, the poller released.  This runs in a
   ``finally``: it happens however the loop ends.

Everything about one kind of connection lives in its own module; the loop
owns only the shared pieces -- the poller, the dispatch table, the timer
queue, the doorbell, the one stop flag -- and hands them out.  Every user
callback is called through `evio._callbacks.Policy`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Literal, cast

from ._accept import Acceptor
from ._addresses import Listener, bind_all, inherited, parse_address
from ._callbacks import Policy
from ._debug import instrument, slow_threshold
from ._dial import Dialer
from ._events import FOREVER, Events, split_action
from ._forking import quiet_forks, warn_if_threads
from ._pollers import PORTABLE_FALLBACK, READ, Poller, PollerName, make_poller
from ._server import Server
from ._signals import DEFAULT_STOP_SIGNALS, SignalWatch, check_stop
from ._streams import Streams
from ._supervisor import loop_count, supervise
from ._timers import MAX_POLL_WAIT, Timer, Timers
from ._udp import UdpSide, check_settings, is_udp
from ._wake import Waker
from ._wiring import Dispatch, Parts

__all__ = ["serve"]

log = logging.getLogger("evio")


def serve(events: Events, *addrs: str | socket.socket, poller: PollerName | Poller | None = None,
          loops: int | Literal["auto"] = 1,
          stop_signals: Iterable[int] = DEFAULT_STOP_SIGNALS,
          stop_timeout: float = 2.0, slow_callback: float | None = None) -> None:  # LOOP-1
    """Bind every address and run the loop until it is asked to stop.

    The loop stops when a callback returns ``Action.SHUTDOWN``, when
    `evio.Server.stop` is called, or on one of ``stop_signals`` when
    ``serve`` runs on the main thread and that signal still has its default
    handler; then pending output is flushed (for at most ``stop_timeout``
    seconds) and every connection is closed (each gets its ``closed`` call)
    before ``serve`` returns.

    Args:
        events: The callbacks.
        *addrs: One or more addresses, e.g. ``"tcp://127.0.0.1:5000"``,
            ``"unix:///tmp/evio.sock"``; or a socket bound elsewhere
            (ADDR-12): ``"fd://N"`` (inherited; see `evio.listen_fds`) or a
            bound ``socket.socket``, which ``serve`` takes over (detached:
            its ``fileno()`` becomes -1) and closes when it returns.
        poller: A backend name (``"epoll"``, ``"kqueue"``, ``"poll"``,
            ``"select"``), a `evio.Poller` instance, or ``None`` for the best
            available (``"select"`` if any address uses a ``-net`` scheme).
            A ``Poller`` instance passed in is closed when ``serve()``
            returns; with ``loops`` > 1 only a name is accepted.
        loops: How many loops: ``1`` runs one in the calling process;
            N > 1 runs N, each in a forked process, behind the same
            addresses, with this process as their supervisor (see the
            spec page *Loops*); ``"auto"`` means one per CPU this process
            may use.
        stop_signals: The signals that stop the server cleanly (LOOP-26):
            SIGINT, SIGTERM, SIGHUP unless told otherwise; ``()`` installs no
            handler. Only a signal with its default handler is taken (yours
            are left alone), only on the main thread; the previous handlers
            are put back. Then SIGINT raises ``KeyboardInterrupt``; the
            others make ``serve`` return ``None``.
        stop_timeout: Seconds the shutdown may spend flushing pending output
            (LOOP-18); the rest is dropped. ``0``: one non-blocking try.
        slow_callback: Debug mode (EV-25): warn, naming the callback and
            its connection, of any call longer than this many seconds.
            ``None``: ``EVIO_DEBUG`` decides (``1``: 0.1 s); unset, off.

    Raises:
        TypeError: ``events`` is not an `evio.Events`, or ``stop_signals``
            is not an iterable of signal numbers.
        ValueError: an address, the poller, ``loops``, a stop signal (one
            that cannot be caught), ``stop_timeout``, ``slow_callback`` or
            ``EVIO_DEBUG``, or a UDP setting of
            ``events`` is not valid, or a host name cannot be resolved;
            nothing has been bound.
        BindError: a bind or listen failed (an ``OSError`` with the
            system's errno, whose message names the address and the likely
            fix: rule ADDR-11); nothing stays bound.
        OSError: ``loops`` > 1 and fork failed with no loop running (LOOPS-11).
        KeyboardInterrupt: SIGINT stopped the loop (raised after the
            shutdown, never from inside it). SIGTERM and SIGHUP make
            ``serve`` return normally instead.
        Exception: whatever ``serving`` or ``tick`` raised, after every
            connection has been closed and every descriptor released (with
            ``loops`` > 1: rebuilt here, its own type or a ``RuntimeError``
            naming it: LOOPS-8).
    """
    try:
        if not isinstance(events, Events):
            raise TypeError(f"serve() needs an evio.Events, not {type(events).__name__}")
        if not addrs:
            raise ValueError("serve() needs at least one address")
        check_settings(events)
        sigs, stop_timeout = check_stop(stop_signals, stop_timeout)
        slow = slow_threshold(slow_callback)
        if slow is not None:  # off: the record as given, no wrapper (EV-25)
            events = instrument(events, slow)
        n = loop_count(loops)
        parsed = [inherited(a) if isinstance(a, socket.socket) else parse_address(a)
                  for a in addrs]
        for a in addrs:  # all valid: the socket objects are ours now (ADDR-12)
            if isinstance(a, socket.socket):
                a.detach()
        if any(a.portable for a in parsed):
            name = poller.name if isinstance(poller, Poller) else poller
            if name is not None and name != PORTABLE_FALLBACK:
                raise ValueError(
                    f"a -net address asks for the {PORTABLE_FALLBACK!r} poller, "
                    f"but poller={poller!r} was given"
                )
            poller = poller if isinstance(poller, Poller) else cast(PollerName, PORTABLE_FALLBACK)
        if n > 1:  # refuses a Poller instance before anything else
            warn_if_threads(n)  # EV-24: in evio's words, at the user's call
            with quiet_forks():
                supervise(events, parsed, n, poller,
                          functools.partial(_child_loop, debug=slow is not None),
                          stop_signals=sigs,
                          stop_timeout=float(stop_timeout))
            return
    except BaseException:
        if isinstance(poller, Poller):  # ours to close however serve() ends (POLL-6)
            poller.close()
        raise
    backend = poller if isinstance(poller, Poller) else make_poller(poller)
    listeners: list[Listener] = []
    try:
        listeners = bind_all(parsed)
        loop = _Loop(events, listeners, backend, stop_signals=sigs, stop_timeout=stop_timeout,
                     debug=slow is not None)
    except BaseException:  # nothing stays bound, nothing stays open
        for lst in listeners:
            lst.close()
        backend.close()
        raise
    loop.run()


def _child_loop(events: Events, listeners: list[Listener], poller: str | None,
                index: int, loops: int, parent_fd: int, stop_timeout: float,
                debug: bool = False) -> _Loop:
    """One of ``loops`` loops, for `evio._supervisor` to run (which takes its stop signals)."""
    return _Loop(events, listeners, make_poller(poller), index, loops, parent_fd,
                 stop_signals=(), stop_timeout=stop_timeout, debug=debug)


class _Loop:
    """One run of `serve`: the shared pieces, and `run`. Not reusable.

    It is also what a `evio.Server` handle forwards to (`evio._server.LoopControl`).
    """

    def __init__(self, events: Events, listeners: list[Listener], poller: Poller,
                 index: int = 0, loops: int = 1, parent_fd: int | None = None,
                 stop_signals: tuple[signal.Signals, ...] = DEFAULT_STOP_SIGNALS,
                 stop_timeout: float = 2.0, debug: bool = False) -> None:
        self.ev = events
        self.index, self.loops, self.parent_fd = index, loops, parent_fd
        self.listeners = listeners
        self.poller = poller
        self.stopping = False
        self.rang = False  # the doorbell rang in this turn's dispatch
        self.handlers: Dispatch = {}
        self.timers = Timers()
        self.waker = Waker()
        self.signals = SignalWatch(self.stop, stop_signals)
        self.stop_timeout = stop_timeout
        self.tick_due = 0.0
        # Made once: a bound method per tick would be a new object each time,
        # and the one pending after a burst keeps its arena (`evio._reclaim`).
        self._next_tick = self._tick
        self.policy = Policy(events, self._stop_here, self._is_stopping)
        parts = Parts(events, poller, self.timers, self.policy, self.handlers,
                      itertools.count(1), self.waker, debug)
        self.streams = Streams(parts)
        self.acceptor = Acceptor(parts, self.streams)
        self.udp = UdpSide(parts)
        self.dialer = Dialer(parts, self.streams)

    # ------------------------------------------- the Server handle's calls

    def wake(self, id: int) -> bool:
        """`evio.Server.wake`: any thread."""
        # Read from another thread: two dicts only the loop's thread writes.
        # A membership test is one atomic operation on a dict, so it sees
        # the id there or not; if the connection goes between the test and
        # the wake, the loop finds no connection and drops the wake (WAKE-2:
        # "unless the connection closes first").
        if id in self.streams.by_id or id in self.dialer.dials:
            return self.waker.wake(id)
        return False

    def dial(self, addr: str, timeout: float | None) -> int:
        """`evio.Server.dial`: any thread."""
        return self.dialer.request(addr, timeout)

    def pending(self, id: int) -> int:  # REL-3
        """`evio.Server.pending`: the loop's thread."""
        c = self.streams.by_id.get(id)
        return len(c.pending) if c is not None else 0

    def paused(self, id: int) -> bool:
        """`evio.Server.paused`: the loop's thread."""
        c = self.streams.by_id.get(id)
        return c is not None and c.reading_paused

    def pause(self, id: int) -> bool:
        """`evio.Server.pause`: the loop's thread."""
        return self.streams.pause(id)

    def resume(self, id: int) -> bool:
        """`evio.Server.resume`: the loop's thread."""
        return self.streams.resume(id)

    def shutdown_write(self, id: int) -> bool:
        """`evio.Server.shutdown_write`: the loop's thread."""
        return self.streams.shutdown_write(id)

    def call_later(self, delay: float, fn: Callable[[], object],
                   id: int | None) -> Timer:
        """`evio.Server.call_later`: the loop's thread."""
        if not callable(fn):
            raise TypeError(f"call_later needs a function, not {fn!r}")
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not (
                0 <= delay < float("inf")):
            raise ValueError(f"call_later's delay must be a finite number of seconds >= 0, "
                             f"not {delay!r}")
        c = None
        if id is not None:
            c = self.streams.by_id.get(id)
            if c is None or not self.streams.live(c):
                raise ValueError(f"call_later: {id!r} is not an open stream connection")
        t = self.timers.at(time.monotonic() + min(delay, FOREVER),
                           functools.partial(self._user_timer, fn))
        if c is not None:  # fired and cancelled ones go: the list stays short
            c.user_timers = [x for x in c.user_timers or () if x.fire is not None] + [t]
        return t

    def _user_timer(self, fn: Callable[[], object]) -> None:
        """A `call_later` timer fired: call it as ``tick`` is called, but a
        raise is logged and the loop goes on (TIMER-1)."""
        try:
            action = split_action(fn(), "a call_later function")
        except Exception:
            log.exception("a call_later function raised; ignored")
            return
        self.policy.server_action(action)

    def close(self, id: int) -> bool:
        """`evio.Server.close`: the loop's thread."""
        return self.streams.end_later(id, abort=False)

    def abort(self, id: int) -> bool:
        """`evio.Server.abort`: the loop's thread."""
        return self.streams.end_later(id, abort=True)

    def stop(self) -> None:  # LOOP-22
        """`evio.Server.stop`: any thread, or a signal handler. Never blocks."""
        self.stopping = True
        self.waker.nudge()

    def _stop_here(self) -> None:
        """``SHUTDOWN`` from a callback, on the loop's thread: just the flag."""
        self.stopping = True

    def _is_stopping(self) -> bool:
        """Whether the loop has been asked to stop (asked between callbacks)."""
        return self.stopping

    # ------------------------------------------------------------------ run

    def run(self) -> None:  # EV-2: every callback on the serve() thread
        """Run the loop until it is asked to stop; see the module docstring."""
        try:
            self._run()
        finally:
            self.signals.uninstall()
        if self.signals.interrupted:
            raise KeyboardInterrupt

    def _run(self) -> None:  # LOOP-2, LOOP-16, TICK-5: timeout from the next timer
        """The phases, in the order of the spec page; shutdown in a ``finally``."""
        try:
            # start
            self._start()
            # Discussion: what one turn costs when nothing is due.  The parts
            # the turn uses are locals (a local read is cheaper than an
            # attribute read); the timer queue's heap is changed only in
            # place, so testing ``due`` says whether any timer is set; the
            # clock is read once per turn that has timers, and the queue is
            # called only when its earliest entry is due.  Before, a ticking
            # loop paid two Python calls and two clock reads per turn: with
            # one or two ready connections a turn, a third of evio-min's user
            # CPU per Redis PING (commit 05a58af measured 3.1 -> 2.1 us per
            # request with bench/run.py, together with evio-min no longer
            # ticking for Redis).  Their precondition --
            # the queue's earliest entry is always live -- is `Timers`'
            # (cancelled entries are dropped from the top: test_units_timers.py).
            handlers = self.handlers
            poll = self.poller.waiter()  # `poll`, or a faster equivalent (epoll's own)
            timers = self.timers
            due = timers.heap  # changed only in place: testing it is enough
            monotonic = time.monotonic
            now = monotonic()  # read again at the end of each turn that has timers
            while not self.stopping:
                # timeout: until the earliest timer (the queue's first entry is
                # always live), or no limit when there is none
                timeout = max(0.0, min(due[0][0] - now, MAX_POLL_WAIT)) if due else None
                # poll
                reports = poll(timeout)
                # dispatch
                for fd, mask in reports:
                    try:
                        handler, arg = handlers[fd]
                    except KeyError:
                        continue  # an earlier handler of this turn closed ``fd``
                    handler(arg, mask)
                    if self.stopping:
                        break
                # Neither is kept past its turn: a float or a list kept from a
                # burst would keep a block -- and the arena around it -- of the
                # allocator the burst filled (`evio._reclaim`).
                del timeout, reports
                # wakes
                if self.rang and not self.stopping:
                    self._wakes()
                # timers: one clock read; a call only when one is due
                if due:
                    now = monotonic()
                    if due[0][0] <= now and not self.stopping:
                        timers.run_due(now, self._is_stopping)
                        # The timers took time; with none left, keep no float (above).
                        now = monotonic() if due else 0.0
        finally:
            # shutdown
            self._shutdown()

    def _start(self) -> None:
        """Watch every listener, the doorbell and the signal descriptor;
        call ``serving``; fire the first ``tick``."""
        for i, lst in enumerate(self.listeners):
            (self.udp if is_udp(lst) else self.acceptor).listen(i, lst)
        wfd = self.waker.fileno()
        self.handlers[wfd] = (self._rang, None)
        self.poller.register(wfd, READ)
        sfd = self.signals.install()
        if sfd is not None:
            self.handlers[sfd] = (self.signals.drain, None)
            self.poller.register(sfd, READ)
        if self.parent_fd is not None:  # readable only once the supervisor closed it or died
            self.handlers[self.parent_fd] = (lambda _, mask: self.stop(), None)
            self.poller.register(self.parent_fd, READ)
        server = Server(tuple(lst.bound for lst in self.listeners), self.poller.name, self,
                        self.index, self.loops)
        self.policy.serving(server)
        if self.ev.tick is not None and not self.stopping:
            self.tick_due = time.monotonic()
            self._tick()

    # ---------------------------------------------------------------- wakes

    def _rang(self, _: object, mask: int) -> None:
        """The doorbell is readable: answer it after dispatch (the *wakes* phase)."""
        self.rang = True

    def _wakes(self) -> None:
        """Run the posted jobs, then deliver each woken id once, in id order."""
        self.rang = False
        ids, jobs = self.waker.take()
        for job in jobs:
            job()
        for cid in sorted(ids):
            if not self.streams.woken(cid):
                self.dialer.woken(cid)  # delivered once it opens
            if self.stopping:
                return

    # --------------------------------------------------------------- timers

    def _tick(self) -> None:
        """Call ``tick`` and set the timer for the next one."""
        due = self.tick_due
        delay = self.policy.tick()
        if delay is None:
            return
        # Measured from when this tick was due, not from now: no drift. A
        # tick that ran later than its successor's due time is not made up;
        # the successor fires at once.
        now = time.monotonic()
        self.tick_due = max(due + delay, now) if delay else now
        self.timers.at(self.tick_due, self._next_tick)

    # ------------------------------------------------------------- shutdown

    def _shutdown(self) -> None:
        """Flush, then close everything, in id order; release every descriptor."""
        self.stopping = True
        try:
            self.poller.unregister(self.waker.fileno())
            self.waker.close()  # from here on wake() is False and dial() raises
            self.dialer.close()
            for lst in self.listeners:  # no more accepts while the output drains
                self.poller.unregister(lst.sock.fileno())
            if self.parent_fd is not None:
                self.poller.unregister(self.parent_fd)
            self.streams.drain(self.stop_timeout, self.signals)  # LOOP-18
            streams, udp, dialer = self.streams, self.udp, self.dialer
            first: BaseException | None = None  # a KeyboardInterrupt inside a closed()
            for cid in sorted(set(streams.by_id) | set(udp.peers) | set(dialer.dials)):
                try:
                    if cid in streams.by_id:
                        streams.shut(cid)
                    elif cid in udp.peers:
                        udp.forget(cid, None)
                    elif cid in dialer.dials:
                        dialer.shut(cid)
                except BaseException as e:  # the others are closed all the same (LOOP-19)
                    first = first or e
            if first is not None:
                raise first
        finally:
            for lst in self.listeners:
                self.poller.unregister(lst.sock.fileno())
                lst.close()
            for fd in list(self.handlers):
                self.poller.unregister(fd)  # the signal descriptor, and any straggler
            self.handlers.clear()
            self.poller.close()
