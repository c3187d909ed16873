"""Soak: a bounded mixed load against one evio echo server, watching for leaks.

Run it with one command (60 s by default)::

    .venv/bin/python bench/soak.py --seconds 60

What it does
------------
An evio echo server runs in its own process with two TCP listeners on
127.0.0.1, port 0. Connections to the second one get
``Options(idle_timeout=1.0)``. It stops on SIGTERM through a ticker flag and
then prints what it saw: connections opened and closed, ``closed`` errors by
type, and the sockets still open after ``serve()`` returned.

This process drives it, for the given time, with threads:

* **short** (4 threads): connect, send 1 B - 16 KiB, read the whole echo,
  close, pause 10 ms; one in four half-closes instead and reads to the end
  of stream;
* **stream** (2 threads): connect, send 4 MiB in 64 KiB pieces while reading
  the echo, check it, close, pause 0.2 s;
* **idle** (1 thread): four connections at a time to the idle listener, each
  says hello, reads the echo, then falls silent until the server times it
  out (the end of stream must come within 5 s);
* **reset** (1 thread): connect, send 128 KiB, read part of the echo, reset
  (``SO_LINGER`` 0).

Every echo is compared byte for byte. *Bytes lost* is what was sent on
connections whose echo was read to completion (short, stream and idle),
minus what came back: it must be 0.

Every 5 s the server's open descriptors (``/proc/PID/fd``) and resident
memory (``VmRSS``) are sampled; at the end, the peak of its resident memory
(``VmHWM``) too. *Before* is taken once the server is ready, *after* once
the load has stopped and the server has closed every connection. A run
passes when no byte was lost, no unexpected error happened, every opened
connection was closed, and the descriptor count after equals the count
before.

Results go to ``bench/results/soak.json`` and ``docs/bench/soak.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

import _report
from _report import KiB, MiB, machine, rerun_and_machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "soak.json"
REPORT = ROOT / "docs" / "bench" / "soak.md"

SHORT_THREADS, STREAM_THREADS = 4, 2
SHORT_MAX, SHORT_PAUSE = 16 * KiB, 0.01
STREAM_SIZE, STREAM_PIECE = 4 * MiB, 64 * KiB
IDLE_AT_ONCE, IDLE_TIMEOUT, IDLE_GRACE = 4, 1.0, 5.0
RESET_SEND = 128 * KiB
SAMPLE_EVERY = 5.0
IO_TIMEOUT = 10.0


# ------------------------------------------------------------------ server


def serve_main(poller: str | None) -> int:
    """The server process: echo on two listeners, the second with idle timeouts."""
    sys.path.insert(0, str(ROOT))
    import evio

    stop: list[int] = []
    opened_n = [0]
    closed_by: Counter[str] = Counter()
    idle = evio.Options(idle_timeout=IDLE_TIMEOUT)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)  # the next tick returns SHUTDOWN

    def serving(server: evio.Server) -> None:
        ports = " ".join(str(a[1]) for a in server.addrs)
        print(f"ready {ports} {server.poller}", flush=True)

    def opened(cid: int, info: evio.Info) -> evio.Options | None:
        opened_n[0] += 1
        return idle if info.addr_index == 1 else None

    def data(cid: int, d: bytes) -> bytes:
        return d

    def closed(cid: int, err: BaseException | None) -> None:
        closed_by[type(err).__name__ if err is not None else "None"] += 1

    def tick() -> float | evio.Action:
        return evio.Action.SHUTDOWN if stop else 0.1

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ev = evio.Events(serving=serving, opened=opened, data=data, closed=closed, tick=tick)
    chosen = cast("evio.PollerName | None", poller)  # argparse checked it against the choices
    evio.serve(ev, "tcp4://127.0.0.1:0", "tcp4://127.0.0.1:0", poller=chosen)
    left = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            left += os.readlink(f"/proc/self/fd/{name}").startswith(("socket:", "anon_inode:"))
    print(json.dumps({"opened": opened_n[0], "closed": dict(closed_by),
                      "sockets_left": left}), flush=True)
    return 0


# -------------------------------------------------------------------- load


@dataclass
class Tally:
    """What the load threads did, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: Counter[str] = field(default_factory=Counter)
    sent: int = 0  # on connections whose echo was read in full
    received: int = 0
    reset_sent: int = 0  # on connections we reset
    mismatches: int = 0
    idle_timed_out: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def done(self, kind: str, sent: int, got: bytes, want: bytes) -> None:
        with self.lock:
            self.connections[kind] += 1
            self.sent += sent
            self.received += len(got)
            if got != want:
                self.mismatches += 1

    def error(self, where: str, e: BaseException) -> None:
        with self.lock:
            self.errors[f"{where}: {type(e).__name__}"] += 1
            if len(self.first_errors) < 5:
                self.first_errors.append(f"{where}: {e!r}")


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(MiB, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _recv_all(s: socket.socket) -> bytes:
    buf = bytearray()
    while chunk := s.recv(MiB):
        buf += chunk
    return bytes(buf)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)


def short_load(port: int, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            payload = rng.randbytes(rng.randint(1, SHORT_MAX))
            with _connect(port) as s:
                s.sendall(payload)
                if rng.random() < 0.25:
                    s.shutdown(socket.SHUT_WR)
                    got = _recv_all(s)
                else:
                    got = _recv_exactly(s, len(payload))
            tally.done("short", len(payload), got, payload)
        except OSError as e:
            tally.error("short", e)
        stop.wait(SHORT_PAUSE)  # a few hundred a second: busy, not a port exhaustion test


def _stream_once(port: int, payload: bytes) -> bytes:
    """Send ``payload`` in pieces while reading the echo (one selector)."""
    got = bytearray()
    with _connect(port) as s, selectors.DefaultSelector() as sel:
        s.setblocking(False)
        view, pos = memoryview(payload), 0
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        deadline = time.monotonic() + 60
        while len(got) < len(payload):
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream stalled at {len(got)} of {len(payload)}")
            for _, mask in sel.select(IO_TIMEOUT):
                if mask & selectors.EVENT_WRITE and pos < len(payload):
                    with contextlib.suppress(BlockingIOError):
                        pos += s.send(view[pos:pos + STREAM_PIECE])
                    if pos == len(payload):
                        sel.modify(s, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    with contextlib.suppress(BlockingIOError):
                        chunk = s.recv(MiB)
                        if not chunk:
                            return bytes(got)
                        got += chunk
    return bytes(got)


def stream_load(port: int, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        payload = rng.randbytes(STREAM_SIZE)
        try:
            got = _stream_once(port, payload)
            tally.done("stream", len(payload), got, payload)
        except OSError as e:
            tally.error("stream", e)
        stop.wait(0.2)


def idle_load(port: int, stop: threading.Event, tally: Tally, seed: int) -> None:
    """Connections that fall silent and must be timed out by the server."""
    while not stop.is_set():
        socks: list[socket.socket] = []
        try:
            for i in range(IDLE_AT_ONCE):
                s = _connect(port)
                socks.append(s)
                hello = b"hello %d" % i
                s.sendall(hello)
                got = _recv_exactly(s, len(hello))
                tally.done("idle", len(hello), got, hello)
            quiet_since = time.monotonic()
            for s in socks:
                s.settimeout(max(0.1, quiet_since + IDLE_GRACE - time.monotonic()))
                if s.recv(1) == b"":  # the server timed it out
                    with tally.lock:
                        tally.idle_timed_out += 1
                else:
                    tally.error("idle", RuntimeError("unexpected bytes on an idle connection"))
        except OSError as e:
            tally.error("idle", e)
        finally:
            for s in socks:
                s.close()


def reset_load(port: int, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    linger = struct.pack("ii", 1, 0)
    while not stop.is_set():
        try:
            s = _connect(port)
            try:
                s.sendall(rng.randbytes(RESET_SEND))
                _recv_exactly(s, rng.randint(0, 64 * KiB))
            finally:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                s.close()
            with tally.lock:
                tally.connections["reset"] += 1
                tally.reset_sent += RESET_SEND
        except OSError as e:
            tally.error("reset", e)
        stop.wait(0.01)


# ----------------------------------------------------------------- samples


def sample(pid: int) -> dict[str, float]:
    """The server's open descriptors, resident memory and its peak so far
    (``VmRSS``, ``VmHWM``, KiB), and CPU seconds."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    mem = {"VmRSS:": 0, "VmHWM:": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.split(None, 1)[0] in mem:
            mem[line.split()[0]] = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return {"fds": fds, "rss_kib": mem["VmRSS:"], "hwm_kib": mem["VmHWM:"],
            "cpu_s": round(cpu, 2)}


# --------------------------------------------------------------------- run


def run(seconds: float, poller: str | None) -> dict[str, Any]:
    args = [sys.executable, str(Path(__file__).resolve()), "--serve"]
    if poller:
        args += ["--poller", poller]
    server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ready = server.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise SystemExit(f"the server did not start: {ready!r}")
        port, idle_port, poller_name = int(ready[1]), int(ready[2]), ready[3]
        before = sample(server.pid)
        samples = [{"t": 0.0, **before}]
        tally, stop = Tally(), threading.Event()
        plan = ([(short_load, port)] * SHORT_THREADS + [(stream_load, port)] * STREAM_THREADS
                + [(idle_load, idle_port), (reset_load, port)])
        threads = [threading.Thread(target=fn, args=(p, stop, tally, k), daemon=True)
                   for k, (fn, p) in enumerate(plan)]
        start = time.monotonic()
        for t in threads:
            t.start()
        next_sample = start + SAMPLE_EVERY
        while (now := time.monotonic()) < start + seconds:
            time.sleep(max(0.0, min(next_sample, start + seconds) - now))
            if time.monotonic() >= next_sample:
                samples.append({"t": round(time.monotonic() - start, 1), **sample(server.pid)})
                print(f"  t={samples[-1]['t']:5.1f}s fds={samples[-1]['fds']:4} "
                      f"rss={samples[-1]['rss_kib'] / 1024:6.1f} MiB "
                      f"connections={sum(tally.connections.values())}", flush=True)
                next_sample += SAMPLE_EVERY
        stop.set()
        for t in threads:
            t.join(IO_TIMEOUT + IDLE_GRACE)
        stuck = sum(t.is_alive() for t in threads)
        elapsed = time.monotonic() - start
        # After: wait for the server to close what the load left behind.
        end = time.monotonic() + 10
        while sample(server.pid)["fds"] != before["fds"] and time.monotonic() < end:
            time.sleep(0.1)
        after = sample(server.pid)
        samples.append({"t": round(time.monotonic() - start, 1), **after})
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
        seen = json.loads(out.strip().splitlines()[-1])
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    opened, closed = seen["opened"], sum(seen["closed"].values())
    lost = tally.sent - tally.received
    result: dict[str, Any] = {
        "machine": machine(),
        "config": {"seconds": seconds, "poller": poller_name,
                   "short_threads": SHORT_THREADS, "stream_threads": STREAM_THREADS,
                   "stream_size": STREAM_SIZE, "idle_timeout": IDLE_TIMEOUT,
                   "idle_at_once": IDLE_AT_ONCE, "reset_send": RESET_SEND},
        "elapsed_s": round(elapsed, 1),
        "descriptors": {"before": before["fds"], "after": after["fds"],
                        "max": max(s["fds"] for s in samples)},
        "rss_kib": {"before": before["rss_kib"], "after": after["rss_kib"],
                    "max": max(s["rss_kib"] for s in samples),
                    "peak": after["hwm_kib"]},
        "server_cpu_s": round(after["cpu_s"] - before["cpu_s"], 1),
        "samples": samples,
        "connections": dict(tally.connections),
        "connections_total": sum(tally.connections.values()),
        "bytes_echoed": tally.received,
        "bytes_sent_checked": tally.sent,
        "bytes_lost": lost,
        "echo_mismatches": tally.mismatches,
        "reset_bytes_sent": tally.reset_sent,
        "idle_timed_out": tally.idle_timed_out,
        "errors": dict(tally.errors),
        "first_errors": tally.first_errors,
        "stuck_threads": stuck,
        "server": {"opened": opened, "closed": closed, "closed_by": seen["closed"],
                   "sockets_left_after_serve": seen["sockets_left"]},
    }
    result["passed"] = (
        lost == 0 and tally.mismatches == 0 and not tally.errors and stuck == 0
        and opened == closed and seen["sockets_left"] == 0
        and after["fds"] == before["fds"]
    )
    return result


def report(r: dict[str, Any]) -> str:
    m, c, d, rss = r["machine"], r["config"], r["descriptors"], r["rss_kib"]
    srv = r["server"]

    def mib(kib: float) -> str:
        return f"{_report.mib(kib):.1f} MiB"

    closed_by = ", ".join(f"{k} {v:,}" for k, v in sorted(srv["closed_by"].items()))
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(r["connections"].items()))
    lines = [
        "# Soak",
        "",
        "<!-- Generated by bench/soak.py; do not edit by hand. -->",
        "",
        "A bounded mixed load against one evio echo server, watching its",
        "descriptors and memory. Produce this page again with:",
        "",
        *rerun_and_machine(f".venv/bin/python bench/soak.py --seconds {c['seconds']:g}", m,
                           ("poller", c["poller"])),
        "## Method",
        "",
        "- The server runs alone in its own process; the load is this process's",
        "  threads. Loopback only, port 0, two listeners; connections to the second",
        f"  get `Options(idle_timeout={c['idle_timeout']:g})`.",
        f"- **short** ({c['short_threads']} threads): connect, echo 1 B – 16 KiB, close"
        " (a quarter half-close and read to the end).",
        f"- **stream** ({c['stream_threads']} threads): echo {c['stream_size'] // MiB} MiB"
        " in 64 KiB pieces, sending while reading.",
        f"- **idle**: {c['idle_at_once']} connections at a time say hello and fall"
        " silent until the server times them out.",
        f"- **reset**: send {c['reset_send'] // KiB} KiB, read part of the echo,"
        " reset (`SO_LINGER` 0).",
        "- Every echo is checked byte for byte. *Bytes lost* = sent − received over the",
        "  connections whose echo was read to completion; it must be 0.",
        f"- The server's `/proc/PID/fd` count and `VmRSS` are sampled every {SAMPLE_EVERY:g} s;",
        "  *after* is taken once the load has stopped and the server has closed",
        "  every connection. *Peak* is the kernel's high-water mark of RSS over the",
        "  whole run, so it catches what falls between samples.",
        "",
        "## Results",
        "",
        f"**{'Passed' if r['passed'] else 'FAILED'}** after {r['elapsed_s']:g} s.",
        "",
        "| measure | before | after | max sampled | peak (`VmHWM`) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| server descriptors | {d['before']} | {d['after']} | {d['max']} | |",
        f"| server RSS | {mib(rss['before'])} | {mib(rss['after'])} | {mib(rss['max'])}"
        f" | {mib(rss['peak'])} |",
        "",
        "| total | count |",
        "| --- | ---: |",
        f"| connections | {r['connections_total']:,} ({kinds}) |",
        f"| bytes echoed and checked | {r['bytes_echoed']:,} |",
        f"| **bytes lost** | **{r['bytes_lost']:,}** |",
        f"| echo mismatches | {r['echo_mismatches']:,} |",
        f"| bytes sent on reset connections | {r['reset_bytes_sent']:,} |",
        f"| idle connections timed out by the server | {r['idle_timed_out']:,} |",
        f"| client errors | {sum(r['errors'].values()):,} |",
        f"| server: opened / closed | {srv['opened']:,} / {srv['closed']:,} |",
        f"| server: `closed` errors | {closed_by} |",
        f"| server: sockets left after `serve()` | {srv['sockets_left_after_serve']} |",
        f"| server CPU | {r['server_cpu_s']:g} s |",
        "",
        "### Samples",
        "",
        "| t (s) | descriptors | RSS |",
        "| ---: | ---: | ---: |",
        *[f"| {s['t']:g} | {s['fds']} | {mib(s['rss_kib'])} |" for s in r["samples"]],
        "",
    ]
    if r["first_errors"]:
        lines += ["Client errors:", "", *[f"- `{e}`" for e in r["first_errors"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="evio soak: mixed load, leak watch")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long to run the load (default: 60)")
    parser.add_argument("--poller", choices=["epoll", "kqueue", "poll", "select"],
                        help="poller backend for the server (default: the best)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; do not write bench/results or docs/bench")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rebuild the page from bench/results/soak.json")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve_main(args.poller)
    if args.render:
        REPORT.write_text(report(json.loads(RESULTS.read_text())))
        print(f"wrote {REPORT.relative_to(ROOT)}")
        return 0
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    print(f"soak: {args.seconds:g} s of mixed load", flush=True)
    result = run(args.seconds, args.poller)
    text = report(result)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        REPORT.write_text(text)
        print(f"wrote {RESULTS.relative_to(ROOT)} and {REPORT.relative_to(ROOT)}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
