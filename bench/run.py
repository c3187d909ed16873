"""The benchmark suite: evio's example servers against asyncio, uvloop and real Redis.

One command, from the repository root (about 6 minutes on 2 cores;
``--quick``, one round of shorter loads, about 1)::

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/run.py

It needs ``cc``, ``wrk``, ``redis-benchmark`` and ``redis-server`` on the PATH
(Debian: ``apt-get install -y build-essential wrk redis-tools redis-server``);
a missing tool skips what needs it, and the page says so.

What it measures
----------------
The loads of the original evio's benchmarks, each against an evio example
and the same server written on asyncio (``asyncio.Protocol``) and on uvloop
(the same code, uvloop's loop), all single-threaded:

===========  ==========================================  =============================
load         servers                                     generator (on CPU 1)
===========  ==========================================  =============================
echo         examples/echo_server.py, aio.py echo        bench/load/echo_load.c
http         examples/http_server.py --no-tls,           wrk -t1 -c50 --latency
             evio_min.py http, aio.py http
redis-pN     examples/redis_server.py, evio_min.py       redis-benchmark -t ping_inline
             redis, aio.py redis, redis-server           -c 50 -P N, N = 1, 8, 16
redis-p1c    the same                                    echo_load sending PING, one in
                                                         flight per connection
idle         the three echo servers                      10,000 connections from here
===========  ==========================================  =============================

``evio_min.py`` is evio pumping the same minimal protocol code as ``aio.py``
(``servers/minimal.py``): next to the examples, it shows how much of a gap is
the loop and how much the examples' complete parsers.

For every server under every load: requests/s, p50/p99 latency, the
server's own user and system CPU time per request (``/proc/PID/stat``),
its peak RSS (``VmHWM``), and how much CPU other processes took meanwhile;
for idle connections, RSS per connection.  Each server runs in its own
process pinned to CPU 0 and is started afresh for each round; rounds are
interleaved and summarised by medians and per-round ratios to evio (see
``_summary.py``).  While it runs, idle CPUs poll rather than halt
(``_procs.idle_polling``), and a load disturbed by other processes is run
again, within a time budget.

Outputs: ``bench/results/latest.json``, the generated part of
``docs/bench/index.md``, and the charts next to it.

Modules: ``_procs`` (server processes, /proc), ``_loads`` (the load tools),
``_idle`` (idle connections), ``_summary`` (medians, ratios, targets),
``_report`` (page and charts); ``servers/aio.py`` (asyncio/uvloop servers),
``servers/evio_min.py`` and ``servers/minimal.py`` (the shared protocol code).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _idle
import _loads
import _procs
import _report
import _summary
from _summary import Sample

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
PAGE = ROOT / "docs" / "bench" / "index.md"
BUILD = ROOT / "bench" / "build"
SERVER_CPU, LOAD_CPU = 0, 1
PY = sys.executable
MAX_ATTEMPTS = 3  # a load disturbed by other processes is run at most this many times
RETRY_PAUSE = 1.0  # seconds to let a burst of someone else's work pass before trying again


@dataclass(frozen=True, slots=True)
class Server:
    """A server to start: who it is, which loads it answers, how to run it.

    ``evio`` is always an example server; ``evio-min`` is evio pumping the
    same minimal sessions as ``asyncio`` and ``uvloop`` (``servers/minimal.py``).
    """

    name: str  # evio, evio-min, asyncio, uvloop, redis-server
    workload: str  # echo, http or redis
    argv: tuple[str, ...]  # "{port}" is replaced by a free port; else it prints its own
    needs: str | None = None  # an executable or module it needs


SERVERS = [
    Server("evio", "echo", (PY, "examples/echo_server.py", "--port", "0", "--quiet")),
    Server("asyncio", "echo", (PY, "bench/servers/aio.py", "echo", "--loop", "asyncio")),
    Server("uvloop", "echo", (PY, "bench/servers/aio.py", "echo", "--loop", "uvloop"),
           needs="uvloop"),
    Server("evio", "http", (PY, "examples/http_server.py", "--no-tls", "--port", "0")),
    Server("evio-min", "http", (PY, "bench/servers/evio_min.py", "http")),
    Server("asyncio", "http", (PY, "bench/servers/aio.py", "http", "--loop", "asyncio")),
    Server("uvloop", "http", (PY, "bench/servers/aio.py", "http", "--loop", "uvloop"),
           needs="uvloop"),
    Server("evio", "redis", (PY, "examples/redis_server.py", "--port", "0")),
    Server("evio-min", "redis", (PY, "bench/servers/evio_min.py", "redis")),
    Server("asyncio", "redis", (PY, "bench/servers/aio.py", "redis", "--loop", "asyncio")),
    Server("uvloop", "redis", (PY, "bench/servers/aio.py", "redis", "--loop", "uvloop"),
           needs="uvloop"),
    Server("redis-server", "redis",
           ("redis-server", "--bind", "127.0.0.1", "--port", "{port}", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"),
           needs="redis-server"),
]
SERVER_ORDER = ("evio", "evio-min", "asyncio", "uvloop", "redis-server")

LOADS = {
    "echo": "Echo: 50 connections, 16-byte messages",
    "http": "HTTP Hello World: wrk, 50 keep-alive connections",
    "redis-p1": "Redis PING_INLINE, pipeline 1: redis-benchmark, 50 connections",
    "redis-p1c": "Redis PING_INLINE, pipeline 1: echo_load (a lighter client), 50 connections",
    "redis-p8": "Redis PING_INLINE, pipeline 8",
    "redis-p16": "Redis PING_INLINE, pipeline 16",
    "idle": "RSS per idle connection",
}
WORKLOAD_LOADS = {"echo": ["echo"], "http": ["http"],
                  "redis": ["redis-p1", "redis-p1c", "redis-p8", "redis-p16"]}
LOAD_TOOLS = {"echo": "cc", "http": "wrk", "redis-p1": "redis-benchmark", "redis-p1c": "cc",
              "redis-p8": "redis-benchmark", "redis-p16": "redis-benchmark"}


def available(name: str) -> bool:
    if name in ("uvloop", "matplotlib", "redis"):
        return importlib.util.find_spec(name) is not None
    return shutil.which(name) is not None


# ================================================================ one run


@dataclass(slots=True)
class Bench:
    """One run of the suite: its settings, and what it has spent so far."""

    args: argparse.Namespace
    echo_binary: Path | None
    server_cpu: int | None  # None: not pinned
    load_cpu: int | None
    logs: Path
    t0: float = field(default_factory=time.monotonic)
    retry_left: float = 0.0  # seconds still allowed for repeating disturbed loads

    @property
    def cpus(self) -> tuple[int, ...]:
        """The CPUs whose busy time is ours (others' use of them disturbs a sample)."""
        if self.server_cpu is None or self.load_cpu is None:
            return tuple(range(os.cpu_count() or 1))
        return (self.server_cpu, self.load_cpu)

    def session(self, rnd: int, server: Server, loads: list[str]) -> list[Sample]:
        """Start one server, run its loads, stop it. Failures become samples with an error."""
        out = []
        port = _procs.free_port() if "{port}" in server.argv else None
        argv = [a.replace("{port}", str(port)) for a in server.argv]
        log = self.logs / f"{server.name}-{server.workload}-{rnd}.log"
        try:
            proc = _procs.start(server.name, argv, self.server_cpu, log, port=port, cwd=ROOT)
            if server.workload == "redis":
                probe_redis(proc.port)
        except Exception as e:
            print(f"round {rnd}  {server.name:<12} {server.workload}: {e}", file=sys.stderr)
            return [Sample(rnd, server.name, ld, error=str(e)) for ld in loads]
        try:
            for load in loads:
                try:
                    metrics = self.measure_steady(load, proc, rnd)
                except (_loads.LoadError, _idle.IdleError, OSError) as e:
                    out.append(Sample(rnd, server.name, load, error=f"{type(e).__name__}: {e}"))
                    print(f"round {rnd}  {server.name:<12} {load:<9} FAILED: {e}",
                          file=sys.stderr)
                    continue
                out.append(Sample(rnd, server.name, load, metrics))
                print(progress(rnd, server.name, load, metrics, self.t0), flush=True)
        finally:
            _procs.stop(proc)
        return out

    def measure_steady(self, load: str, server: _procs.ServerProcess, rnd: int
                       ) -> dict[str, float]:
        """`measure`, repeated while other processes took our CPUs (within the retry budget).

        Of the attempts, the one least disturbed is kept; ``attempts`` records how many
        there were. A sample that stays disturbed is kept as it is; its ``foreign_cpu``
        says so on the page.
        """
        best: dict[str, float] | None = None
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            m = self.measure(load, server)
            if best is None or m.get("foreign_cpu", 0.0) < best.get("foreign_cpu", 0.0):
                best = m
            if attempt > 1:
                self.retry_left -= time.monotonic() - started
            others = m.get("foreign_cpu", 0.0)
            if (others <= self.args.max_others or attempt == MAX_ATTEMPTS
                    or self.retry_left <= 0):
                break
            print(f"round {rnd}  {server.name:<12} {load:<9} disturbed: other processes used "
                  f"{others:.0%} of a CPU; again in {RETRY_PAUSE:g} s", file=sys.stderr)
            time.sleep(RETRY_PAUSE)
            self.retry_left -= RETRY_PAUSE
        best["attempts"] = attempt
        return best

    def measure(self, load: str, server: _procs.ServerProcess) -> dict[str, float]:
        """Run one load against a running server; its metrics (`_summary.METRICS` keys)."""
        args = self.args
        if load == "idle":
            i = _idle.idle_rss(server, args.idle_conns)
            return {"conns": i.conns, "rss_before_mib": _report.mib(i.rss_before_kib),
                    "rss_after_mib": _report.mib(i.rss_after_kib),
                    "bytes_per_conn": i.bytes_per_conn}
        m: _loads.Measurement
        if load == "echo":
            assert self.echo_binary is not None
            m = _loads.echo(self.echo_binary, server, args.seconds, self.cpus, self.load_cpu)
        elif load == "http":
            m = _loads.http(server, args.seconds, self.cpus, self.load_cpu)
        elif load == "redis-p1c":
            assert self.echo_binary is not None
            m = _loads.ping(self.echo_binary, server, args.redis_seconds, self.cpus,
                            self.load_cpu)
        else:
            m = _loads.redis(server, int(load.removeprefix("redis-p")), args.redis_seconds,
                             self.cpus, self.load_cpu)
        n = max(m.requests, 1)
        return {
            "requests": m.requests, "seconds": m.seconds, "rps": m.rps,
            "p50_us": m.p50_us, "p99_us": m.p99_us,
            "user_us_per_req": m.user_s * 1e6 / n, "system_us_per_req": m.system_s * 1e6 / n,
            "cpu_us_per_req": (m.user_s + m.system_s) * 1e6 / n,
            "server_cpu": (m.user_s + m.system_s) / m.seconds,
            "peak_rss_mib": _report.mib(m.peak_rss_kib), "load_cpu": m.load_cpu,
            "foreign_cpu": m.foreign_cpu,
        }


def probe_redis(port: int) -> None:
    """Check with redis-py that a Redis server answers PING (skipped without redis-py)."""
    if not available("redis"):
        return
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=10)
    try:
        if client.ping() is not True:
            raise RuntimeError("PING did not answer PONG")
    finally:
        client.close()


def progress(rnd: int, server: str, load: str, m: dict[str, float], t0: float) -> str:
    head = f"round {rnd}  {server:<12} {load:<9}"
    tail = f"[{time.monotonic() - t0:5.0f} s]"
    if load == "idle":
        return (f"{head} {m['conns']:,.0f} idle: RSS {m['rss_before_mib']:.1f} -> "
                f"{m['rss_after_mib']:.1f} MiB, {m['bytes_per_conn']:,.0f} B/conn  {tail}")
    return (f"{head} {m['rps']:>11,.0f} req/s  p50 {m['p50_us']:>7,.0f} µs  "
            f"p99 {m['p99_us']:>7,.0f} µs  user {m['user_us_per_req']:6.2f} "
            f"sys {m['system_us_per_req']:6.2f} µs/req  CPU {m['server_cpu']:4.0%} "
            f"(load {m['load_cpu']:4.0%}, others {m['foreign_cpu']:4.0%})  "
            f"peak {m['peak_rss_mib']:5.1f} MiB  {tail}")


# ================================================================== driver


def versions() -> dict[str, str]:
    out = _loads.tool_versions()
    for dist in ("evio-loop", "uvloop", "redis", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def plan(args: argparse.Namespace) -> tuple[list[tuple[Server, list[str]]], list[str]]:
    """The sessions of one round (a server and the loads it runs), and what is skipped."""
    sessions, skipped = [], []
    for s in SERVERS:
        if args.servers and s.name not in args.servers:
            continue
        if s.needs is not None and not available(s.needs):
            skipped.append(f"{s.name} ({s.workload}): {s.needs} is not installed")
            continue
        loads = [ld for ld in WORKLOAD_LOADS[s.workload]
                 if (not args.loads or ld in args.loads)]
        for ld in list(loads):
            if not available(LOAD_TOOLS[ld]):
                skipped.append(f"{s.name} {ld}: {LOAD_TOOLS[ld]} is not installed")
                loads.remove(ld)
        if loads:
            sessions.append((s, loads))
        # The idle test gets a fresh server: no load may have grown its heap first.
        if s.workload == "echo" and (not args.loads or "idle" in args.loads):
            sessions.append((s, ["idle"]))
    return sessions, skipped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="evio's example servers against asyncio, uvloop and redis-server",
        epilog="Writes bench/results/latest.json, docs/bench/index.md and its charts.")
    p.add_argument("--quick", action="store_true",
                   help="one round of shorter loads (a minute or two)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick 1)")
    p.add_argument("--seconds", type=float,
                   help="seconds of echo and HTTP load (default 5; --quick 2)")
    p.add_argument("--redis-seconds", type=float,
                   help="about this many seconds per redis-benchmark run (default 4; --quick 1.5)")
    p.add_argument("--idle-conns", type=int, default=10_000,
                   help="idle connections for the memory test (default 10000)")
    p.add_argument("--servers", type=lambda s: s.split(","),
                   help="only these servers, e.g. evio,asyncio (does not write results)")
    p.add_argument("--loads", type=lambda s: s.split(","),
                   help=f"only these loads, of {','.join(LOADS)} (does not write results)")
    p.add_argument("--max-others", type=float, default=0.25, metavar="SHARE",
                   help="repeat a load when other processes used more than this share of a "
                        "CPU on the benchmark's CPUs meanwhile (default 0.25)")
    p.add_argument("--retry-budget", type=float, metavar="SECONDS",
                   help="most seconds spent repeating disturbed loads (default 90; --quick 20)")
    p.add_argument("--no-idle-poll", action="store_true",
                   help="let idle CPUs halt (by default /dev/cpu_dma_latency is held at 0 "
                        "while the suite runs, so they poll instead)")
    p.add_argument("--no-write", action="store_true", help="print the report only")
    p.add_argument("--loops", metavar="N,N,...",
                   help="measure something else: requests/s of the echo and HTTP examples "
                        "at each --loops N, and the scaling efficiency (bench/loops.py)")
    p.add_argument("--render", action="store_true",
                   help="measure nothing: rebuild the page and charts from "
                        "bench/results/latest.json")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.redis_seconds = args.redis_seconds or (1.5 if args.quick else 4.0)
    if args.retry_budget is None:
        args.retry_budget = 20.0 if args.quick else 90.0
    for bad in set(args.loads or ()) - set(LOADS):
        p.error(f"unknown load {bad!r}")
    for bad in set(args.servers or ()) - set(SERVER_ORDER):
        p.error(f"unknown server {bad!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render()
    if args.loops:
        import loops  # bench/loops.py

        return loops.main(["--loops", args.loops, "--seconds", str(args.seconds),
                           "--rounds", str(args.rounds)])
    t0 = time.monotonic()
    # SIGTERM ends the run through the finally below, which stops every server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    pinned = _procs.can_pin(SERVER_CPU, LOAD_CPU)
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})  # this process and the loads; servers get CPU 0
    else:
        print("note: CPUs 0 and 1 are not both available: nothing is pinned", file=sys.stderr)
    server_cpu, load_cpu = (SERVER_CPU, LOAD_CPU) if pinned else (None, None)
    limit = _procs.raise_nofile()
    if limit < args.idle_conns + 256:
        args.idle_conns = max(100, limit - 256)
        print(f"note: descriptor limit {limit}: {args.idle_conns} idle connections",
              file=sys.stderr)

    sessions, skipped = plan(args)
    for s in skipped:
        print(f"skipped: {s}", file=sys.stderr)
    echo_binary = None
    if any(LOAD_TOOLS.get(ld) == "cc" for _, loads in sessions for ld in loads):
        echo_binary = _loads.build_echo_load(BUILD)
    loads_run = [ld for ld in LOADS if any(ld in lds for _, lds in sessions)]
    servers_run = [n for n in SERVER_ORDER if any(s.name == n for s, _ in sessions)]

    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="evio-bench-") as tmp, \
            _procs.idle_polling(not args.no_idle_poll) as polling:
        bench = Bench(args, echo_binary, server_cpu, load_cpu, Path(tmp), t0,
                      retry_left=args.retry_budget)
        try:
            for rnd in range(1, args.rounds + 1):
                k = (rnd - 1) % max(len(sessions), 1)
                for server, loads in sessions[k:] + sessions[:k]:  # rotated: no one always first
                    samples += bench.session(rnd, server, loads)
        finally:
            _procs.stop_all()

    config = {
        "quick": args.quick, "rounds": args.rounds, "seconds": args.seconds,
        "redis_seconds": args.redis_seconds, "idle_conns": args.idle_conns,
        "conns": _loads.CONNS, "echo_size": _loads.ECHO_SIZE, "pinned": pinned,
        "server_cpu": SERVER_CPU, "load_cpu": LOAD_CPU, "skipped": skipped,
        "idle_polling": polling, "max_others": args.max_others,
        "retries": sum(int(s.metrics.get("attempts", 1)) - 1 for s in samples),
        "elapsed_s": time.monotonic() - t0,
    }
    write = not (args.no_write or args.servers or args.loads)
    publish(_report.machine(versions=versions()), config, samples, loads_run, servers_run, write)
    if not write:
        print("\n(results not written: --no-write, --servers or --loads was given)")
    return 0


def publish(meta: dict[str, Any], config: dict[str, Any], samples: list[Sample],
            loads_run: list[str], servers_run: list[str], write: bool) -> None:
    """Judge the targets, print the report; if ``write``, save the JSON, page and charts."""
    verdicts = [_summary.judge(samples, t) for t in _summary.targets(loads_run, servers_run)]
    titles = {ld: LOADS[ld] for ld in loads_run}
    have_charts = available("matplotlib")
    text = _report.section(meta, config, samples, verdicts, titles, servers_run, have_charts)
    print()
    print(text)
    if not write:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        f"{server}/{load}": _summary.as_json(_summary.medians(samples, server, load))
        for load in loads_run for server in servers_run
    }
    ratios = {
        f"{server}/{load}": {m: _summary.as_json(_summary.ratio(samples, load, m, server, "evio"))
                             for m in ("rps", "cpu_us_per_req", "user_us_per_req",
                                       "bytes_per_conn", "p50_us", "p99_us")}
        for load in loads_run for server in servers_run if server != "evio"
    }
    RESULTS.write_text(json.dumps({
        "machine": meta, "config": config, "loads": titles, "servers": servers_run,
        "samples": [asdict(s) for s in samples], "medians": summary,
        "ratios_to_evio": ratios, "targets": _summary.as_json(verdicts),
    }, indent=2) + "\n")
    if have_charts:
        _report.draw_charts(PAGE.parent, samples, titles, servers_run)
    _report.write_page(PAGE, text)
    print(f"\nwrote {RESULTS.relative_to(ROOT)}, {PAGE.relative_to(ROOT)}"
          + (" and its charts" if have_charts else " (no matplotlib: no charts)"))


def render() -> int:
    """Rebuild the page and charts from ``bench/results/latest.json``, measuring nothing."""
    saved = json.loads(RESULTS.read_text())
    samples = [Sample(**s) for s in saved["samples"]]
    publish(saved["machine"], saved["config"], samples, list(saved["loads"]),
            saved["servers"], write=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
