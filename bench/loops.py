"""Scaling with loops: requests/s of the echo and HTTP examples at ``--loops N``.

Run it from the repository root, or through the suite::

    .venv/bin/python bench/loops.py --loops 1,2,4
    .venv/bin/python bench/run.py --loops 1,2,4,8     # the same, delegated here

Theory of operation
-------------------
``serve(..., loops=N)`` should turn N cores into N times the requests/s.
Measuring that honestly needs two things:

1. **The load generator must not share the server's cores**, or adding
   loops only takes CPU from the generator.  So the CPUs this process may
   use are split once for the whole run: the last ``--load-cpus`` of them
   (default: a quarter, at least one) run the load tools, the rest run the
   server -- the supervisor and its N loops, left to the kernel's scheduler
   within that set (the loops are not pinned one to a core: that is the
   deployment we promise, and the kernel spreads N busy processes over N
   cores by itself).  The tools get one thread (``wrk -t``) or one process
   (``echo_load``) per load CPU, each pinned.
2. **The same load at every N.**  The number of connections is fixed for
   the run, from the largest N (at least 50; 16 per loop), so that N = 1
   and N = 8 answer the same clients.

Each N is run ``--rounds`` times, in rotated order, with a fresh server
each time; the median requests/s is reported, with the scaling efficiency
*r(N) / (N x r(1))*: 1.0 is perfect scaling.  When N is more than the
server's CPUs the loops share cores and the row says so: on a 2-core
machine (one core for the server, one for the load) N = 2 only shows that
two loops work, not how they scale; the same command on a bigger machine
measures it.

The loads are the suite's: ``bench/load/echo_load.c`` (16-byte messages,
one in flight per connection; built by ``_loads.build_echo_load``) and
``wrk`` against ``GET /`` of ``examples/http_server.py --no-tls``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import _loads
from _procs import terminate

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "build"
PY = sys.executable
START_TIMEOUT = 30.0
WARMUP = 1.0
SERVERS = {
    "echo": [PY, "examples/echo_server.py", "--quiet"],
    "http": [PY, "examples/http_server.py", "--no-tls"],
}
_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def split_cpus(cpus: Sequence[int], load_cpus: int | None) -> tuple[list[int], list[int]]:
    """(server CPUs, load CPUs): the load gets the last ones, at least one each side."""
    cpus = sorted(cpus)
    if len(cpus) < 2:
        return list(cpus), list(cpus)  # nothing to split: both share the one CPU
    k = load_cpus if load_cpus is not None else max(1, len(cpus) // 4)
    k = min(max(k, 1), len(cpus) - 1)
    return cpus[:-k], cpus[-k:]


def _pinned(cpus: Sequence[int]) -> Callable[[], None]:
    def setup() -> None:
        os.sched_setaffinity(0, set(cpus))
    return setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(workload: str, loops: int, cpus: Sequence[int], log: Path) -> tuple[
        subprocess.Popen[bytes], int]:
    """Start an example with ``--loops``; return once all of its loops are serving."""
    port = _free_port()
    argv = [*SERVERS[workload], "--port", str(port), "--loops", str(loops)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                stdin=subprocess.DEVNULL, preexec_fn=_pinned(cpus))
    deadline = time.monotonic() + START_TIMEOUT
    while log.read_text(errors="replace").count("listening on") < loops:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{workload} --loops {loops} did not start:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    terminate(proc, 15)


def echo_rps(binary: Path, port: int, conns: int, seconds: float,
             load_cpus: Sequence[int]) -> float:
    """Round trips/s: one ``echo_load`` per load CPU, the connections split among them."""
    share = [conns // len(load_cpus) + (i < conns % len(load_cpus))
             for i in range(len(load_cpus))]
    procs = [subprocess.Popen([str(binary), "127.0.0.1", str(port), str(n), "16",
                               f"{seconds:g}", f"{WARMUP:g}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=_pinned([cpu]))
             for cpu, n in zip(load_cpus, share, strict=True) if n]
    total = 0.0
    for p in procs:
        out, err = p.communicate(timeout=seconds + WARMUP + 60)
        line = next((x for x in out.splitlines() if x.startswith("roundtrips=")), None)
        if p.returncode != 0 or line is None:
            raise RuntimeError(f"echo_load failed ({p.returncode}): {err.strip()}")
        f = dict(kv.split("=", 1) for kv in line.split())
        total += int(f["roundtrips"]) / float(f["seconds"])
    return total


def http_rps(port: int, conns: int, seconds: float, load_cpus: Sequence[int]) -> float:
    """Requests/s from ``wrk`` with one thread per load CPU."""
    url = f"http://127.0.0.1:{port}/"
    threads = min(len(load_cpus), conns)

    def wrk(secs: int) -> str:
        r = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", url],
                           capture_output=True, text=True, timeout=secs + 60,
                           preexec_fn=_pinned(load_cpus))
        if r.returncode != 0 or "Socket errors" in r.stdout:
            raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr.strip() or r.stdout}")
        return r.stdout

    wrk(1)  # warm-up
    out = wrk(max(1, round(seconds)))
    m = _WRK_TOTAL.search(out)
    if m is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return int(m.group(1)) / (float(m.group(2)) * _UNITS[m.group(3)])


def measure(workloads: list[str], counts: list[int], rounds: int, seconds: float,
            load_cpus_wanted: int | None) -> dict[str, object]:
    server_cpus, load_cpus = split_cpus(sorted(os.sched_getaffinity(0)), load_cpus_wanted)
    conns = max(50, 16 * max(counts))
    print(f"server CPUs {server_cpus}, load CPUs {load_cpus}, {conns} connections, "
          f"{rounds} round(s) of {seconds:g} s", flush=True)
    binary = _loads.build_echo_load(BUILD) if "echo" in workloads else None
    rps: dict[str, dict[int, list[float]]] = {w: {n: [] for n in counts} for w in workloads}
    with tempfile.TemporaryDirectory(prefix="evio-loops-") as tmp:
        for rnd in range(rounds):
            order = counts[rnd % len(counts):] + counts[:rnd % len(counts)]
            for w in workloads:
                for n in order:
                    proc, port = start(w, n, server_cpus, Path(tmp) / f"{w}-{n}.log")
                    try:
                        if w == "echo":
                            assert binary is not None
                            r = echo_rps(binary, port, conns, seconds, load_cpus)
                        else:
                            r = http_rps(port, conns, seconds, load_cpus)
                    finally:
                        stop(proc)
                    rps[w][n].append(r)
                    print(f"round {rnd + 1}  {w:<5} loops={n:<3} {r:>10,.0f} req/s", flush=True)
    rows = []
    for w in workloads:
        base = statistics.median(rps[w][counts[0]]) / counts[0]  # per loop, at the smallest N
        for n in counts:
            r = statistics.median(rps[w][n])
            rows.append({"workload": w, "loops": n, "rps": r, "speedup": r / (base * counts[0]),
                         "efficiency": r / (n * base), "oversubscribed": n > len(server_cpus),
                         "samples": rps[w][n]})
    return {"server_cpus": server_cpus, "load_cpus": load_cpus, "conns": conns,
            "rounds": rounds, "seconds": seconds, "cpus": len(os.sched_getaffinity(0)),
            "rows": rows}


def report(result: dict[str, object]) -> str:
    rows = result["rows"]
    assert isinstance(rows, list)
    lines = ["| workload | loops | req/s | speed-up | efficiency |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        note = " (loops share the server's cores)" if r["oversubscribed"] else ""
        lines.append(f"| {r['workload']} | {r['loops']} | {r['rps']:,.0f} | "
                     f"{r['speedup']:.2f}x | {r['efficiency']:.0%}{note} |")
    lines.append("")
    lines.append(f"{result['cpus']} CPUs: server on {result['server_cpus']}, load on "
                 f"{result['load_cpus']}; efficiency = r(N) / (N x r(1)).")
    return "\n".join(lines)


def counts_arg(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"expected loop counts like 1,2,4, not {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="requests/s of the echo and HTTP examples "
                                            "as --loops grows, and the scaling efficiency")
    p.add_argument("--loops", type=counts_arg, default=[1, 2], metavar="N,N,...",
                   help="loop counts to measure (default 1,2); efficiency is against the "
                        "smallest")
    p.add_argument("--workloads", type=lambda s: s.split(","), default=["echo", "http"],
                   help="echo,http (default both)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=3, help="rounds, medians reported")
    p.add_argument("--load-cpus", type=int, metavar="K",
                   help="CPUs kept for the load tools (default: a quarter, at least 1)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    for bad in set(args.workloads) - set(SERVERS):
        p.error(f"unknown workload {bad!r}")
    if "http" in args.workloads and not _has("wrk"):
        p.error("the http workload needs wrk (Debian: apt-get install wrk)")
    result = measure(args.workloads, args.loops, args.rounds, args.seconds, args.load_cpus)
    print()
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _has(tool: str) -> bool:
    return any(os.access(os.path.join(d, tool), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep))


if __name__ == "__main__":
    sys.exit(main())
