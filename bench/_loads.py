"""The loads: echo_load (ours, in C), wrk and redis-benchmark, each pinned, each parsed.

Theory of operation
-------------------
A load generator is only a fair judge if it is faster than every server it
drives, so all three are C programs running on their own CPU (CPU 1; the
server has CPU 0):

* **echo** -- ``bench/load/echo_load.c``, compiled here with ``cc -O2`` into
  ``bench/build/`` (git ignores it): 50 connections, each with one 16-byte
  message in flight; it warms up unmeasured, prints ``start``, measures,
  prints ``end`` and a result line.  The server's CPU is read when those
  two lines arrive, so it covers exactly the round trips counted.
* **http** -- ``wrk -t1 -c50 -dDs --latency``: one thread, 50 keep-alive
  connections.  A one-second unmeasured wrk run comes first.  wrk has no
  markers, so CPU is read just before it starts and just after it exits;
  the few milliseconds of connecting are noise against D seconds.
* **redis-p1c** -- ``echo_load`` again, sending ``PING\r\n`` and waiting for
  ``+PONG\r\n``: pipeline 1 from a client cheap enough that the server sets
  the pace (redis-benchmark at pipeline 1 uses all of its CPU first).
* **redis** -- ``redis-benchmark -t ping_inline -c 50 -P p --csv``.  It counts
  requests, not seconds, so a short calibration run (which is also the
  warm-up) measures the server's rate and the real run asks for about
  ``seconds`` worth of requests.

Every load yields a `Measurement`: requests, seconds, latency percentiles,
and the server's own user and system CPU time and peak RSS over the load.
A load that fails (a tool error, a server that stops answering, a timeout)
raises `LoadError`; the caller records it and goes on with the next.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from _procs import (
    CpuTimes,
    ServerProcess,
    busy_seconds,
    child_setup,
    reset_peak_rss,
    status_kib,
)

ROOT = Path(__file__).resolve().parent.parent
ECHO_SOURCE = ROOT / "bench" / "load" / "echo_load.c"
CONNS = 50  # connections, for every load
ECHO_SIZE = 16  # bytes per echo message
ECHO_WARMUP = 1.0  # seconds of unmeasured echo load
WRK_WARMUP = 1  # seconds of unmeasured wrk load (wrk's smallest)
REDIS_CALIBRATE = 4000  # requests per pipelined slot in the calibration run
TOOL_SLACK = 60.0  # seconds a tool may overrun its planned time before it is killed


class LoadError(Exception):
    """A load could not be run to the end."""


@dataclass(slots=True)
class Measurement:
    """One load against one server: what was done and what it cost the server."""

    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    user_s: float  # the server's user CPU time over the load
    system_s: float  # ... and its system CPU time
    peak_rss_kib: int  # the server's VmHWM over the load
    load_cpu: float  # the load generator's CPU time over the load, as a share of one CPU
    foreign_cpu: float  # other processes' CPU time on the benchmark's CPUs, likewise

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def tool_versions() -> dict[str, str]:
    """The first line each load tool prints about its version."""
    out = {}
    for name, argv in {"wrk": ["wrk", "--version"],
                       "redis-benchmark": ["redis-benchmark", "--version"],
                       "redis-server": ["redis-server", "--version"],
                       "cc": ["cc", "--version"]}.items():
        if shutil.which(argv[0]) is None:
            out[name] = "not installed"
            continue
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (r.stdout or r.stderr).strip().splitlines()
        line = text[0] if text else "unknown"
        line = line.split(" Copyright")[0]  # wrk: "wrk 4.1.0 [epoll] Copyright (C) ..."
        m = re.search(r"v=(\S+)", line)  # redis-server: "Redis server v=7.0.15 sha=..."
        out[name] = f"{name} {m.group(1)}" if m else line
    return out


def build_echo_load(build_dir: Path) -> Path:
    """Compile ``echo_load.c`` with ``cc -O2``; return the binary.

    Raises:
        RuntimeError: no C compiler, or it failed.
    """
    if shutil.which("cc") is None:
        raise RuntimeError("no C compiler (cc) for bench/load/echo_load.c")
    build_dir.mkdir(parents=True, exist_ok=True)
    binary = build_dir / "echo_load"
    r = subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(ECHO_SOURCE)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"cc failed:\n{r.stderr}")
    return binary


class _Window:
    """The server's CPU and peak RSS between `begin` and `end`, and everyone else's CPU."""

    def __init__(self, server: ServerProcess, cpus: tuple[int, ...]) -> None:
        self.server = server
        self.cpus = cpus
        self.cpu0 = self.cpu = CpuTimes(0.0, 0.0)
        self.busy0 = self.busy = self.me0 = self.me = 0.0
        self.peak = 0

    def begin(self) -> None:
        reset_peak_rss(self.server.pid)
        self.busy0, self.me0 = busy_seconds(self.cpus), _own_cpu()
        self.cpu0 = CpuTimes.of(self.server.pid)

    def end(self) -> None:
        self.cpu = CpuTimes.of(self.server.pid) - self.cpu0
        self.busy, self.me = busy_seconds(self.cpus) - self.busy0, _own_cpu() - self.me0
        self.peak = status_kib(self.server.pid, "VmHWM")

    def foreign(self, load_cpu_s: float, seconds: float) -> float:
        """Other processes' CPU on our CPUs over the window, as a share of one CPU."""
        mine = self.cpu.user + self.cpu.system + load_cpu_s + self.me
        return max(0.0, self.busy - mine) / seconds


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _check_alive(server: ServerProcess) -> None:
    if not server.alive():
        raise LoadError(f"{server.name} exited ({server.proc.returncode}):\n{server.log_tail()}")


# ------------------------------------------------------------------ echo


def echo(binary: Path, server: ServerProcess, seconds: float, cpus: tuple[int, ...],
         cpu: int | None, exchange: tuple[str, str] | None = None) -> Measurement:
    """Closed-loop echo round trips with ``echo_load``.

    With ``exchange`` (request, reply), each round trip sends the request and
    waits for exactly the reply instead of an echo: see `ping`.
    """
    argv = [str(binary), "127.0.0.1", str(server.port), str(CONNS), str(ECHO_SIZE),
            f"{seconds:g}", f"{ECHO_WARMUP:g}", *(exchange or ())]
    w = _Window(server, cpus)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=child_setup(cpu))
    try:
        assert proc.stdout is not None and proc.stderr is not None
        result = ""
        for line in proc.stdout:  # "start", "end", then the result line
            line = line.strip()
            if line == "start":
                w.begin()
            elif line == "end":
                w.end()
            elif line.startswith("roundtrips="):
                result = line
        err = proc.stderr.read()
        if proc.wait(TOOL_SLACK) != 0 or not result:
            _check_alive(server)
            raise LoadError(f"echo_load failed ({proc.returncode}): {err.strip()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    f = dict(kv.split("=", 1) for kv in result.split())
    secs, load_cpu = float(f["seconds"]), float(f["cpu"])
    return Measurement(int(f["roundtrips"]), secs, float(f["p50_us"]), float(f["p99_us"]),
                       w.cpu.user, w.cpu.system, w.peak, load_cpu,
                       w.foreign(load_cpu * secs, secs))


def ping(binary: Path, server: ServerProcess, seconds: float, cpus: tuple[int, ...],
         cpu: int | None) -> Measurement:
    """Redis inline PING, one in flight per connection, from ``echo_load``.

    The same requests as ``redis-benchmark -t ping_inline -P 1``, from a
    client that spends a fraction of redis-benchmark's CPU per request: at
    pipeline 1 redis-benchmark runs at 100% of its CPU before a fast server
    does, and then every server measures the client's speed.
    """
    return echo(binary, server, seconds, cpus, cpu, ("PING\r\n", "+PONG\r\n"))


# ------------------------------------------------------------------ http

_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6}
_WRK_PCT = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s)")
_WRK_ERRORS = re.compile(r"Socket errors:.*|Non-2xx or 3xx responses: \d+")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # every child waited for so far
    return r.ru_utime + r.ru_stime


def _run_tool(argv: list[str], cpu: int | None, timeout: float) -> tuple[str, float]:
    """Run a load tool to its end; its output and its CPU time as a share of one CPU."""
    c0, t0 = _children_cpu(), time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=child_setup(cpu))
    except subprocess.TimeoutExpired as e:
        raise LoadError(f"{argv[0]} did not finish within {timeout:g} s") from e
    share = (_children_cpu() - c0) / max(time.monotonic() - t0, 1e-9)
    if r.returncode != 0:
        raise LoadError(f"{argv[0]} failed ({r.returncode}): {r.stderr.strip() or r.stdout}")
    return r.stdout, share


def http(server: ServerProcess, seconds: float, cpus: tuple[int, ...],
         cpu: int | None) -> Measurement:
    """Keep-alive GET / with ``wrk``."""
    url = f"http://127.0.0.1:{server.port}/"
    _run_tool(["wrk", "-t1", f"-c{CONNS}", f"-d{WRK_WARMUP}s", url], cpu, WRK_WARMUP + TOOL_SLACK)
    _check_alive(server)
    secs = max(1, round(seconds))
    w = _Window(server, cpus)
    w.begin()
    t0 = time.monotonic()
    out, load_cpu = _run_tool(["wrk", "-t1", f"-c{CONNS}", f"-d{secs}s", "--latency", url],
                              cpu, secs + TOOL_SLACK)
    w.end()
    wall = time.monotonic() - t0
    _check_alive(server)
    errors = _WRK_ERRORS.findall(out)
    if errors:
        raise LoadError(f"wrk reported errors: {'; '.join(errors)}")
    total = _WRK_TOTAL.search(out)
    pct = {p: float(v) * _UNITS_US[u] for p, v, u in _WRK_PCT.findall(out)}
    if total is None or "50" not in pct or "99" not in pct:
        raise LoadError(f"cannot read wrk's output:\n{out}")
    elapsed = float(total.group(2)) * _UNITS_US[total.group(3)] / 1e6
    return Measurement(int(total.group(1)), elapsed, pct["50"], pct["99"],
                       w.cpu.user, w.cpu.system, w.peak, load_cpu,
                       w.foreign(load_cpu * wall, wall))


# ----------------------------------------------------------------- redis


def _redis_benchmark(server: ServerProcess, requests: int, pipeline: int,
                     cpu: int | None, timeout: float) -> dict[str, float]:
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.port), "-t", "ping_inline",
            "-n", str(requests), "-c", str(CONNS), "-P", str(pipeline), "--csv"]
    out, load_cpu = _run_tool(argv, cpu, timeout)
    rows = list(csv.DictReader(io.StringIO(out)))
    if not rows or rows[0].get("test") != "PING_INLINE":
        raise LoadError(f"cannot read redis-benchmark's output:\n{out}")
    return {"load_cpu": load_cpu, **{k: float(v) for k, v in rows[0].items() if k != "test"}}


def redis(server: ServerProcess, pipeline: int, seconds: float, cpus: tuple[int, ...],
          cpu: int | None) -> Measurement:
    """PING_INLINE with ``redis-benchmark``, pipelining ``pipeline`` requests."""
    calibration = REDIS_CALIBRATE * pipeline
    rate = _redis_benchmark(server, calibration, pipeline, cpu, TOOL_SLACK)["rps"]
    _check_alive(server)
    requests = int(min(max(rate * seconds, 10_000), 50_000_000))
    requests -= requests % (CONNS * pipeline)  # whole pipelines on every connection
    w = _Window(server, cpus)
    w.begin()
    t0 = time.monotonic()
    row = _redis_benchmark(server, requests, pipeline, cpu, 4 * seconds + TOOL_SLACK)
    wall = elapsed = time.monotonic() - t0
    w.end()
    _check_alive(server)
    # redis-benchmark's own clock excludes its start-up; prefer it to ours.
    with contextlib.suppress(ZeroDivisionError):
        elapsed = requests / row["rps"]
    return Measurement(requests, elapsed, row["p50_latency_ms"] * 1e3,
                       row["p99_latency_ms"] * 1e3, w.cpu.user, w.cpu.system, w.peak,
                       row["load_cpu"], w.foreign(row["load_cpu"] * wall, wall))
