"""Paired runs: Redis servers side by side under a client that sets the pace.

Run it with one command; it takes about two minutes::

    .venv/bin/python bench/paired.py

Theory of operation
-------------------
At pipeline 1, ``redis-benchmark`` spends more CPU per request than any
server it drives: it runs at 99% of its core while the servers idle part of
theirs.  Requests/s then measure the client, and on a shared virtual machine
the client's speed moves by 20% from minute to minute (on the machine of the
published run, between about 80,000 and 100,000 requests/s).  `run.py` runs
each server's loads minutes apart, so at pipeline 1 a ratio of two servers'
requests/s is mostly that movement.

This script removes it.  Every server is started at once, each pinned to
CPU 0 (a server waiting for its turn sleeps in its poller and costs
nothing).  Each round runs the same short ``redis-benchmark`` load, pinned to
CPU 1, against every server in turn, in reverse order every other round, so
each server's sample lies seconds from the baseline's.  A round's ratio to
the baseline is a *paired* ratio; the report gives their median and
quartiles.

A client at full speed still depends on the server in one way: each time
the server has gone to sleep in its poller, the client's next ``send`` must
wake it.  On loopback the sender's CPU runs the receiver's side of TCP, so
the wake-up (``sock_def_readable``, then the scheduler) is paid on the
client's core.  A faster server finishes its work sooner and sleeps more
often, so the client pays more.  The report shows this next to the
requests/s: per request, the server's sleeps (the main thread's voluntary
context switches, from ``/proc/PID/status``), the server's user CPU and the
client's CPU (user + system).

Idle CPUs are asked to poll rather than halt while it runs, as in `run.py`
(``_procs.idle_polling``).  Results go to ``bench/results/paired.json`` and
``docs/bench/paired.md``; ``--render`` rebuilds the page from the saved
results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _loads
import _procs
from _report import machine, rerun_and_machine
from run import LOAD_CPU, ROOT, SERVER_CPU, SERVER_ORDER, SERVERS, available, versions

RESULTS = ROOT / "bench" / "results" / "paired.json"
REPORT = ROOT / "docs" / "bench" / "paired.md"
BASELINE = "asyncio"


@dataclass(slots=True)
class Sample:
    """One load against one server in one round."""

    round: int
    server: str
    rps: float
    user_us: float  # the server's user CPU per request
    system_us: float  # ... and its system CPU
    sleeps: float  # the server's voluntary context switches per request
    client_us: float  # the client's CPU (user + system) per request


def sleeps_of(pid: int) -> int:
    """The main thread's voluntary context switches so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise KeyError("voluntary_ctxt_switches")


def measure(rnd: int, server: _procs.ServerProcess, requests: int, pipeline: int,
            cpu: int | None) -> Sample:
    """One ``redis-benchmark`` run of ``requests`` against ``server``."""
    pid = server.pid
    cpu0, sleeps0, t0 = _procs.CpuTimes.of(pid), sleeps_of(pid), time.monotonic()
    row = _loads._redis_benchmark(server, requests, pipeline, cpu, _loads.TOOL_SLACK)
    wall = time.monotonic() - t0
    used, sleeps = _procs.CpuTimes.of(pid) - cpu0, sleeps_of(pid) - sleeps0
    return Sample(rnd, server.name, row["rps"], used.user * 1e6 / requests,
                  used.system * 1e6 / requests, sleeps / requests,
                  row["load_cpu"] * wall * 1e6 / requests)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """Median and the quartiles around it (the extremes when there are few values)."""
    if len(values) < 4:
        return statistics.median(values), min(values), max(values)
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q2, q1, q3


def summary(samples: list[Sample], servers: list[str]) -> dict[str, dict[str, Any]]:
    """Per server: medians, and the paired ratios of requests/s to the baseline's."""
    base = {s.round: s.rps for s in samples if s.server == BASELINE}
    out: dict[str, dict[str, Any]] = {}
    for name in servers:
        mine = [s for s in samples if s.server == name]
        ratios = [s.rps / base[s.round] for s in mine if s.round in base]
        out[name] = {
            "rps": statistics.median(s.rps for s in mine),
            "ratio": quartiles(ratios) if ratios else None,
            "ratios": ratios,
            **{k: statistics.median(getattr(s, k) for s in mine)
               for k in ("user_us", "system_us", "sleeps", "client_us")},
        }
    return out


def report(meta: dict[str, Any], config: dict[str, Any], samples: list[Sample]) -> str:
    """The results page, in Markdown."""
    servers = config["servers"]
    summ = summary(samples, servers)
    lines = [
        f"# Paired runs at pipeline {config['pipeline']}",
        "",
        "<!-- Generated by bench/paired.py; do not edit by hand. -->",
        "",
        "The Redis servers of the [main benchmark](index.md), measured side by side",
        f"under `redis-benchmark -t ping_inline -c {_loads.CONNS} -P {config['pipeline']}`:",
        "a load in which the client, not the server, sets the pace. Why this page",
        "exists and how to read it is explained in",
        "[Performance](../performance.md#why-a-faster-server-gets-fewer-requests-from-a-saturated-client).",
        "Produce it again with:",
        "",
        *rerun_and_machine(".venv/bin/python bench/paired.py", meta,
                           ("redis-benchmark", meta["versions"].get("redis-benchmark", "?"))),
        "## Method",
        "",
        "- Every server runs at once, each in its own process pinned to CPU 0;",
        "  `redis-benchmark` runs on CPU 1. A server waiting for its turn sleeps.",
        f"- {config['rounds']} rounds. Each round runs {config['requests']:,} requests against",
        "  every server in turn, in reverse order every other round.",
        f"- *÷ {BASELINE}* is the median over the rounds of the server's requests/s",
        f"  divided by {BASELINE}'s in the same round; the quartiles follow it.",
        "- *sleeps* are the server's voluntary context switches (its main thread",
        "  blocking in the poller); *client CPU* is `redis-benchmark`'s user +",
        "  system time. Both per request, medians over the rounds.",
        "- Idle CPUs " + ("polled rather than halted (`/dev/cpu_dma_latency`)."
                          if config["idle_polling"] else "halted (no `/dev/cpu_dma_latency`)."),
        "",
        "## Results",
        "",
        f"| server | requests/s | ÷ {BASELINE} (quartiles) | user µs | sleeps | client CPU µs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in servers:
        s = summ[name]
        r = s["ratio"]
        ratio = f"{r[0]:.3f} ({r[1]:.2f}–{r[2]:.2f})" if r else "–"
        lines.append(f"| {name} | {s['rps']:,.0f} | {ratio} | {s['user_us']:.2f} | "
                     f"{s['sleeps']:.3f} | {s['client_us']:.2f} |")
    lines += ["", "Per round, requests/s ÷ the same round's " + BASELINE + "'s:", "",
              "| round | " + " | ".join(servers) + " |",
              "| ---: | " + " | ".join("---:" for _ in servers) + " |"]
    for rnd in range(1, config["rounds"] + 1):
        base = next((s.rps for s in samples if s.round == rnd and s.server == BASELINE), None)
        cells = []
        for name in servers:
            mine = next((s for s in samples if s.round == rnd and s.server == name), None)
            cells.append(f"{mine.rps / base:.3f}" if mine and base else "–")
        lines.append(f"| {rnd} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--rounds", type=int, default=12, help="rounds (default 12)")
    p.add_argument("--requests", type=int, default=100_000,
                   help="requests per run (default 100,000)")
    p.add_argument("--pipeline", type=int, default=1, help="pipeline depth (default 1)")
    p.add_argument("--servers", help="comma-separated; default every Redis server available")
    p.add_argument("--no-write", action="store_true", help="print the page only")
    p.add_argument("--render", action="store_true",
                   help="rebuild docs/bench/paired.md from the saved results, measuring nothing")
    args = p.parse_args(argv)
    if args.render:
        saved = json.loads(RESULTS.read_text())
        REPORT.write_text(report(saved["machine"], saved["config"],
                                 [Sample(**s) for s in saved["samples"]]))
        print(f"wrote {REPORT.relative_to(ROOT)} from {RESULTS.relative_to(ROOT)}")
        return 0
    if not available("redis-benchmark"):
        print("paired.py needs redis-benchmark (Debian: apt-get install -y redis-tools)",
              file=sys.stderr)
        return 2
    wanted = args.servers.split(",") if args.servers else list(SERVER_ORDER)
    chosen = [s for s in SERVERS if s.workload == "redis" and s.name in wanted
              and (s.needs is None or available(s.needs))]
    names = [s.name for s in chosen]
    if BASELINE not in names:
        print(f"paired.py compares with {BASELINE}: include it in --servers", file=sys.stderr)
        return 2
    pinned = _procs.can_pin(SERVER_CPU, LOAD_CPU)
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})
    server_cpu, load_cpu = (SERVER_CPU, LOAD_CPU) if pinned else (None, None)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="evio-paired-") as tmp, \
            _procs.idle_polling() as polling:
        try:
            procs = []
            for srv in chosen:
                port = _procs.free_port() if "{port}" in srv.argv else None
                argv = [a.replace("{port}", str(port)) for a in srv.argv]
                procs.append(_procs.start(srv.name, argv, server_cpu, Path(tmp) / f"{srv.name}.log",
                                          port=port, cwd=ROOT))
            for proc in procs:  # a warm-up each, unmeasured
                _loads._redis_benchmark(proc, args.requests // 4, args.pipeline, load_cpu,
                                        _loads.TOOL_SLACK)
            for rnd in range(1, args.rounds + 1):
                for proc in procs if rnd % 2 else procs[::-1]:
                    s = measure(rnd, proc, args.requests, args.pipeline, load_cpu)
                    samples.append(s)
                    print(f"round {rnd:2}  {s.server:<12} {s.rps:9,.0f}/s  user {s.user_us:4.2f} µs"
                          f"  sleeps {s.sleeps:.3f}  client {s.client_us:5.2f} µs", flush=True)
        finally:
            _procs.stop_all()
    config = {"rounds": args.rounds, "requests": args.requests, "pipeline": args.pipeline,
              "servers": names, "pinned": pinned, "idle_polling": polling}
    meta = machine(versions=versions())
    text = report(meta, config, samples)
    print()
    print(text)
    if not args.no_write:
        RESULTS.write_text(json.dumps({"machine": meta, "config": config,
                                       "samples": [asdict(s) for s in samples]},
                                      indent=2) + "\n")
        REPORT.write_text(text)
        print(f"wrote {RESULTS.relative_to(ROOT)} and {REPORT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
