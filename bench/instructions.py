"""Instructions per Redis PING, counted by callgrind: a benchmark that gives the same answer twice.

One command, from the repository root (about a minute)::

    .venv/bin/python bench/instructions.py            # print the table
    .venv/bin/python bench/instructions.py --write    # and rewrite docs/bench/instructions.md

It needs ``valgrind``, ``callgrind_control`` and ``redis-benchmark`` on the
PATH (Debian: ``apt-get install -y valgrind redis-tools``).  It is optional:
``make test`` does not run it and ``tools/sysdeps.sh`` does not install it.
``--help`` lists the knobs (``-n``, ``--pipelines``, ``--servers``).

Theory of operation
-------------------
`bench/run.py` measures the CPU time a server spends per request.  On a
shared two-core machine that figure moves by several per cent from run to
run (frequency changes, other tenants, cache state), which hides the
effect of a small change to the loop.  Valgrind's callgrind counts the
instructions the server executes instead, on a simulated CPU: the count
does not depend on what else the machine is doing, so it repeats to a
fraction of a per cent (two runs here differ by under 0.5 %), and a
change of one per cent is real.

The price is that it is not time.  Callgrind counts *user-space*
instructions only (the interpreter, the C libraries, the extension
modules): the kernel's side of ``epoll_wait``, ``read`` and ``write`` is
invisible, and an instruction that misses the cache counts as much as one
that hits.  So it ranks pure-Python loops well, against each other, and
it flatters whoever makes fewer but dearer system calls.

For each server, one after another:

1. start it under ``valgrind --tool=callgrind --callgrind-out-file=F``
   (pinned to CPU 0 when we may; the load generator gets CPU 1) and wait
   for its ``listening on ('127.0.0.1', PORT)`` line;
2. warm it up: ``redis-benchmark -n 2000 -c 50 -P 1 -t ping_inline``.  This
   also puts asyncio into its steady state (see ``servers/aio.py``: its
   allocator behaves differently until a first connection has closed);
3. for each pipeline depth P: ``callgrind_control -z PID`` (zero the
   counters), ``redis-benchmark -n N -c 50 -P P -t ping_inline``,
   ``callgrind_control -d PID`` (dump them to a new part file ``F.k``),
   and read that file's ``summary:`` line: the instructions over the run.
   Divided by N, the requests redis-benchmark sent, that is the count per
   request, including its share of the 50 connects, the ``CONFIG GET``
   redis-benchmark sends first on each, and the 50 closes;
4. SIGTERM.

The main non-determinism left is how many ready connections each
``epoll_wait`` returns: a wake's fixed cost is shared by all of them.
Under valgrind every server is the bottleneck (it runs about ten times
slower than natively), so all 50 connections are nearly always ready;
that mirrors a saturated server, which is what `bench/run.py` measures.

The servers: every one but the clone pumps the same sans-I/O session
(``servers/minimal.py: RedisSession``), so the differences are the loops.
``floor`` (``servers/floor.py``) is the least a pure-Python loop can do:
evio-min minus floor is what evio's features cost, floor minus uvloop
what a loop in C buys.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import _procs
from _report import cpu_model

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "bench" / "instructions.md"
CONNS = 50
WARMUP = 2000  # requests before the counters are zeroed
TOOL_TIMEOUT = 600.0
DUMP_TIMEOUT = 60.0
SERVER_CPU, LOAD_CPU = 0, 1

# program -> the Debian package that provides it
TOOLS = {"valgrind": "valgrind", "callgrind_control": "valgrind",
         "redis-benchmark": "redis-tools"}


@dataclass(frozen=True, slots=True)
class Server:
    """A server to measure: its name in the table and the script that runs it."""

    name: str
    argv: tuple[str, ...]  # after the Python interpreter, from the repository root
    what: str  # for the page


SERVERS = (
    Server("evio-min", ("bench/servers/evio_min.py", "redis", "--port", "0"),
           "evio pumping the shared session"),
    Server("evio (clone)", ("examples/redis_server.py", "--port", "0"),
           "the Redis clone: its own full RESP parser and command table"),
    Server("asyncio", ("bench/servers/aio.py", "redis", "--loop", "asyncio", "--port", "0"),
           "`asyncio.Protocol` pumping the shared session"),
    Server("uvloop", ("bench/servers/aio.py", "redis", "--loop", "uvloop", "--port", "0"),
           "the same protocol class on uvloop's loop (C, libuv)"),
    Server("floor", ("bench/servers/floor.py", "--port", "0"),
           "the cheapest pure-Python loop: epoll, `os.read`, `os.write`, nothing else"),
)

# The columns of ratios, in order; a missing reference leaves its column out.
REFERENCES = ("asyncio", "uvloop", "floor")


# ------------------------------------------------------------- measuring


def missing_tools() -> list[str]:
    """The programs this benchmark needs that are not on the PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _load(port: int, requests: int, pipeline: int) -> None:
    """One redis-benchmark run against ``port``; raises if it fails."""
    argv = ["redis-benchmark", "-p", str(port), "-n", str(requests), "-c", str(CONNS),
            "-P", str(pipeline), "-t", "ping_inline", "-q"]
    cpu = LOAD_CPU if _procs.can_pin(SERVER_CPU, LOAD_CPU) else None
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=TOOL_TIMEOUT, preexec_fn=_procs.child_setup(cpu))
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")


def _control(pid: int, option: str) -> None:
    """``callgrind_control -z`` or ``-d``; it returns once valgrind has answered."""
    argv = ["callgrind_control", option, str(pid)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=DUMP_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                           f"{done.stdout}{done.stderr}")


def _new_dump(out: Path, before: set[Path]) -> int:
    """The instructions in the part file that appeared since ``before`` (its ``summary:``)."""
    deadline = time.monotonic() + DUMP_TIMEOUT
    while time.monotonic() < deadline:
        for part in sorted(set(out.parent.glob(out.name + ".*")) - before):
            m = re.search(r"^summary:\s+(\d+)", part.read_text(errors="replace"), re.M)
            if m:
                return int(m.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"no callgrind dump with a summary next to {out}")


def measure(server: Server, requests: int, pipelines: list[int], work: Path) -> dict[int, float]:
    """Instructions per request of one server under valgrind, for each pipeline depth."""
    slug = re.sub(r"\W+", "-", server.name).strip("-")
    out = work / f"{slug}.callgrind"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, *server.argv]
    cpu = SERVER_CPU if _procs.can_pin(SERVER_CPU, LOAD_CPU) else None
    proc = _procs.start(server.name, argv, cpu, work / f"{slug}.log", cwd=ROOT)
    try:
        _load(proc.port, WARMUP, 1)
        counts: dict[int, float] = {}
        for pipeline in pipelines:
            _control(proc.pid, "-z")
            _load(proc.port, requests, pipeline)
            before = set(work.glob(out.name + ".*"))
            _control(proc.pid, "-d")
            counts[pipeline] = _new_dump(out, before) / requests
        return counts
    finally:
        _procs.stop(proc)


# -------------------------------------------------------------- reporting


def table(results: dict[str, dict[int, float]], pipeline: int) -> str:
    """The markdown table for one pipeline depth: counts and ratios to the references."""
    counts = {name: c[pipeline] for name, c in results.items() if pipeline in c}
    refs = [r for r in REFERENCES if r in counts]
    head = ["server", "instructions per request", *(f"÷ {r}" for r in refs)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, n in counts.items():
        ratios = [f"{n / counts[r]:.2f}" for r in refs]
        lines.append(f"| {name} | {n:,.0f} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def gaps(results: dict[str, dict[int, float]], pipeline: int) -> str:
    """The two differences the floor is there for, in words, when all three were measured."""
    c = {name: r[pipeline] for name, r in results.items() if pipeline in r}
    if not {"evio-min", "floor", "uvloop"} <= c.keys():
        return ""
    features, c_buys = c["evio-min"] - c["floor"], c["floor"] - c["uvloop"]
    return (f"At pipeline {pipeline}, evio's features cost {features:,.0f} instructions "
            f"per request (evio-min − floor) and a loop in C saves {c_buys:,.0f} "
            f"(floor − uvloop).")


def valgrind_version() -> str:
    return subprocess.run(["valgrind", "--version"], capture_output=True, text=True,
                          check=False).stdout.strip()


def page(tables: str, summary: str, notes: list[str], command: str) -> str:
    """The whole of docs/bench/instructions.md."""
    noted = "".join(f"\n!!! note\n    {n}\n" for n in notes)
    return f"""# Instructions per request

How many instructions does each server execute to answer one Redis
`PING`? This page counts them with valgrind's callgrind, which gives the
same answer run after run. It is the guide to use when changing the loop;
the [main benchmarks](index.md) give the figures in time.

```sh
{command}
```

It needs `valgrind`, `callgrind_control` and `redis-benchmark` (Debian:
`apt-get install -y valgrind redis-tools`) and takes about a minute.
It is optional: `make test` does not run it. `bench/instructions.py`
opens with the details of the method.

## What it measures

The load is `redis-benchmark -t ping_inline -c 50`, pipelines of 1 and
16, against each server running under `valgrind --tool=callgrind`. After
a warm-up the counters are zeroed, the load runs, and the instructions
counted over it are divided by the requests sent.

| server | what it runs |
| --- | --- |
{chr(10).join(f"| **{s.name}** | {s.what} |" for s in SERVERS)}

All but the clone pump the *same* sans-I/O session
(`bench/servers/minimal.py`), so between them the only difference is the
loop. **floor** is the lower bound of what any pure-Python loop can cost
per request with this session: one `epoll`, one `os.read`, one call of
the same `data` callback, one `os.write`, and none of a real server's
duties (no output buffering, no timers, no wakes, no back-pressure). So:

- **evio-min − floor** is what evio's features cost per request;
- **floor − uvloop** is what a loop written in C buys: no bytecode, and no
  release and re-acquisition of the GIL around every `read` and `write`.

At pipeline 16 one read carries 16 requests, so the loop's share of each
shrinks and the protocol code takes most of it: there the clone, with
its own parser, differs from the others mostly in parsing.

## Why instructions, and what they are not

User CPU time per request, which [the main benchmarks](index.md) report,
moves by several per cent between runs on a shared machine. Instruction
counts do not: callgrind runs the program on a simulated CPU, so the count
depends on the code and the input, not on the neighbours. The main source
of variation left is how many connections each wake finds ready, and
under valgrind every server is saturated, so that varies little.

But instructions are not time:

- callgrind counts **user-space instructions only**. The kernel's work in
  `epoll_wait`, `read` and `write` is not counted at all;
- every instruction counts the same, whether it hits the cache or misses,
  whether it is a register move or a division.

So the ratios below rank the loops' own code, not their speed. The
user-CPU ratios that `bench/run.py` measures run a little worse for evio
than these: read evio's ratios here as the hopeful end of the range.

## Results
{noted}
{tables}

{summary}

Measured {datetime.date.today().isoformat()} with Python {platform.python_version()},
{valgrind_version()}, on {cpu_model()}.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Redis PING: user-space instructions per request under callgrind")
    parser.add_argument("-n", "--requests", type=int, default=20000,
                        help="requests per measured load (default 20000)")
    parser.add_argument("--pipelines", default="1,16",
                        help="pipeline depths, comma-separated (default 1,16)")
    parser.add_argument("--servers", default=",".join(s.name for s in SERVERS),
                        help="servers to measure, comma-separated (default all)")
    parser.add_argument("--write", action="store_true", help=f"rewrite {PAGE.relative_to(ROOT)}")
    args = parser.parse_args(argv)

    missing = missing_tools()
    if missing:
        packages = sorted({TOOLS[t] for t in missing})
        print(f"instructions: needs {', '.join(missing)}, not found on the PATH.\n"
              f"On Debian: apt-get install -y {' '.join(packages)}", file=sys.stderr)
        return 1
    pipelines = [int(p) for p in args.pipelines.split(",")]
    wanted = args.servers.split(",")
    unknown = set(wanted) - {s.name for s in SERVERS}
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")

    notes: list[str] = []
    servers = [s for s in SERVERS if s.name in wanted]
    if "uvloop" in wanted and importlib.util.find_spec("uvloop") is None:
        servers = [s for s in servers if s.name != "uvloop"]
        notes.append("uvloop is not installed here (`pip install -e '.[bench]'`): "
                     "it is left out.")
        print(f"instructions: {notes[-1]}", file=sys.stderr)

    results: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="evio-callgrind-") as tmp:
        try:
            for server in servers:
                print(f"instructions: {server.name} ...", file=sys.stderr, flush=True)
                results[server.name] = measure(server, args.requests, pipelines, Path(tmp))
        finally:
            _procs.stop_all()

    tables = "\n\n".join(f"### Pipeline {p}\n\n{table(results, p)}" for p in pipelines)
    print(tables)
    if args.write:
        command = ".venv/bin/python bench/instructions.py --write"
        if argv is None:
            command = " ".join([".venv/bin/python", "bench/instructions.py", *sys.argv[1:]])
        summary = " ".join(filter(None, (gaps(results, p) for p in pipelines)))
        PAGE.write_text(page(tables, summary, notes, command))
        print(f"instructions: wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
