"""Server processes for the benchmarks: start them pinned, watch them through /proc, stop them.

Theory of operation
-------------------
Every server runs in its own process, started by `start` with a
``preexec_fn`` that runs in the child between ``fork`` and ``exec``:

* it pins the child to one CPU (``sched_setaffinity``), so the server and
  the load generator never compete for a core -- on a 2-core machine the
  server gets CPU 0 and everything else (load tools, this process) CPU 1;
* it raises the child's soft ``RLIMIT_NOFILE`` to the hard limit, so a
  server can hold ten thousand idle connections;
* it asks the kernel to send the child SIGTERM if this process dies
  (``prctl(PR_SET_PDEATHSIG)``), so a benchmark killed outright leaves no
  server behind.  A normal end, an exception or Ctrl-C all go through
  `stop_all` in a ``finally``.

The servers print ``... listening on ('127.0.0.1', PORT) ...`` (the evio
examples and ``bench/servers/aio.py`` alike); their output goes to a log file,
never to a pipe, so a chatty server cannot block on a full pipe.  The port
is read from that file.  Real ``redis-server`` cannot be told port 0, so
`free_port` picks one (bind to port 0, read it, close) and it is passed in.

What a server costs is read from /proc, where the kernel keeps it for the
whole process (every thread):

* ``/proc/PID/stat`` fields 14 and 15 are user and system CPU time in clock
  ticks (``SC_CLK_TCK``, usually 100 per second);
* ``/proc/PID/status`` has ``VmRSS`` (resident now) and ``VmHWM`` (the peak);
  writing ``5`` to ``/proc/PID/clear_refs`` resets the peak to the current
  RSS (Linux 4.0+), so each load gets its own peak;
* ``/proc/PID/fd`` lists open descriptors: counting them tells when a server
  has accepted the connections we opened;
* ``/proc/stat`` has each CPU's busy time: what the two CPUs did beyond the
  server, the load generator and this process is someone else's work --
  on a shared machine, the measure of how disturbed a sample was.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0  # seconds for a server to say where it listens
STOP_TIMEOUT = 10.0  # seconds for a server to exit after SIGTERM
_LISTENING = re.compile(r"listening on \('127\.0\.0\.1', (\d+)\)")
_PR_SET_PDEATHSIG = 1

_live: list[subprocess.Popen[bytes]] = []  # every process started and not yet stopped


def can_pin(*cpus: int) -> bool:
    """Whether this process may run on every one of ``cpus``."""
    return hasattr(os, "sched_setaffinity") and set(cpus) <= os.sched_getaffinity(0)


def raise_nofile() -> int:
    """Raise this process's soft descriptor limit to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def child_setup(cpu: int | None) -> Callable[[], None]:
    """A ``preexec_fn``: pin to ``cpu``, raise the descriptor limit, die with us."""
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        raise_nofile()
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return setup


@contextlib.contextmanager
def idle_polling(wanted: bool = True) -> Iterator[bool]:
    """While inside, ask idle CPUs to poll rather than halt; yields whether they do.

    Holding ``/dev/cpu_dma_latency`` open with the value 0 is the kernel's PM QoS
    request "no wake-up latency": cpuidle then picks its polling state.  On a
    virtual machine this matters: a halted virtual CPU is woken through the
    hypervisor, slowly, and that cost lands in the ``send`` of whoever wakes it
    -- so a server that lets the load generator's CPU fall idle would pay for
    it.  Needs root; without it the CPUs halt as usual and this yields False.
    """
    fd = -1
    if wanted:
        try:
            fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
            os.write(fd, struct.pack("i", 0))
        except OSError:
            if fd >= 0:
                os.close(fd)
            fd = -1
    try:
        yield fd >= 0
    finally:
        if fd >= 0:
            os.close(fd)  # the request ends when the descriptor closes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class ServerProcess:
    """A running server: its process, the port it listens on, its log."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(name: str, argv: Sequence[str], cpu: int | None, log: Path,
          port: int | None = None, cwd: Path | None = None) -> ServerProcess:
    """Start a server and wait until it accepts connections.

    Args:
        name: For messages.
        argv: The command. If ``port`` is None the server must print its
            ``listening on ('127.0.0.1', PORT)`` line.
        cpu: The CPU to pin it to, or None.
        log: Its stdout and stderr go here.
        port: The port it was told to use, if it was told one.
        cwd: Its working directory.

    Raises:
        RuntimeError: it exited, or did not listen within `START_TIMEOUT`.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd,
                                preexec_fn=child_setup(cpu))
    _live.append(proc)
    server = ServerProcess(name, proc, port or 0, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop(server)
            raise RuntimeError(f"{name} exited at start ({proc.returncode}):\n"
                               f"{server.log_tail()}")
        if server.port == 0:
            m = _LISTENING.search(log.read_text(errors="replace"))
            if m:
                server.port = int(m.group(1))
        if server.port and _connectable(server.port):
            return server
        time.sleep(0.05)
    stop(server)
    raise RuntimeError(f"{name} did not listen within {START_TIMEOUT:g} s:\n{server.log_tail()}")


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def terminate(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, wait up to ``timeout`` seconds, SIGKILL if it will not go.

    Every benchmark stops its processes this way. Returns the exit status.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def stop(server: ServerProcess) -> int | None:
    """`terminate` a server started by `start`. Returns its exit status."""
    proc = server.proc
    terminate(proc)
    if proc in _live:
        _live.remove(proc)
    return proc.returncode


def stop_all() -> None:
    """Stop every server still running (the ``finally`` of a benchmark run)."""
    for proc in list(_live):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        _live.remove(proc)


# --------------------------------------------------------------- /proc


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """A process's CPU time so far, in seconds."""

    user: float
    system: float

    @classmethod
    def of(cls, pid: int) -> CpuTimes:
        # The command name (field 2) may hold spaces or ")": split after the last ")".
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return cls(int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - other.user, self.system - other.system)


def busy_seconds(cpus: tuple[int, ...]) -> float:
    """CPU time spent not idle on ``cpus`` so far, by anyone (``/proc/stat``)."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks) - ticks[3] - ticks[4] - ticks[7]
    return total / CLK_TCK


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS; False if the kernel will not."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def open_fds(pid: int) -> int:
    """How many descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))
