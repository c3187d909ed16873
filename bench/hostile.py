"""Hostile clients and failing processes: the figures behind issue 22's table, rows 1-6.

Each row is one small, bounded experiment on loopback against the examples
of an evio checkout (``--root``, this one by default), so the same script
measures the code before and after a change::

    python bench/hostile.py                       # every row, this checkout
    python bench/hostile.py --root /tmp/old 4 5   # rows 4 and 5 of another checkout

Row 1: the HTTP example under slowloris (300 connections, each sending one
byte of a request head every 5 s, ``--idle-timeout 10``) -- how many are
closed, and when, and how fast a normal client is answered meanwhile.
Row 2: ``--loops 2``, fork made to fail (EAGAIN) in the supervisor, one loop
killed -- does the service survive, and how long does the slot stay empty
once fork works again?  Row 3: the proxy while its upstream is still
connecting (a listener whose accept queue is full, so SYNs are dropped), 100
clients each sending 4 MiB -- how much does the proxy's RSS grow?  Row 4:
``--loops 2``, one loop SIGKILLed -- the gap until a new loop serves, the
slowest of 100 clients sent at once, and, with the loop killed again each
time it comes back, how many of 100 clients are never answered.  Row 5: a
second ``--loops 2`` server on the same port -- does it start?  Row 6:
SIGHUP to the supervisor, SIGINT to the process group -- exit status, a
traceback, the unix socket file and the HTTP example's throwaway key left?

Nothing here is asserted: the spec_tests do that.  It prints one line per
figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# Runs an example with os.fork failing (EAGAIN) while the file named by
# EVIO_FORK_FAILS exists: a real supervisor process whose fork really fails.
_FORK_FAILS = r"""
import errno, os, runpy, sys
flag, real = os.environ["EVIO_FORK_FAILS"], os.fork
def fork():
    if os.path.exists(flag):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
    return real()
os.fork = fork
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """Live children of ``pid``, oldest first."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] != "Z":
                    out.append((int(fields[19]), int(name)))
    return [p for _, p in sorted(out)]


def rss_kib(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


class Proc:
    def __init__(self, root: Path, args: list[str], env: dict[str, str] | None = None,
                 session: bool = False, wrap: str | None = None) -> None:
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            "w+", prefix="hostile-", suffix=".log")
        cmd = [sys.executable, *(["-c", wrap] if wrap else []), *args]
        self.p = subprocess.Popen(cmd, cwd=root, stdout=self.log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {}), "PYTHONPATH": str(root)},
                                  start_new_session=session)

    def out(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1, limit: float = 10.0) -> bool:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.out().count(text) >= count:
                return True
            if self.p.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def stop(self) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(12)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for kid in children(self.p.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        return self.p.returncode


@contextlib.contextmanager
def echo(root: Path, port: int, *extra: str, **kw: object) -> Iterator[Proc]:
    p = Proc(root, ["examples/echo_server.py", "--port", str(port), *extra], **kw)  # type: ignore[arg-type]
    try:
        yield p
    finally:
        p.stop()


def ask(port: int, timeout: float) -> float | None:
    """One echo round trip: its latency in seconds, or None if not answered in time."""
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"x\n")
            return time.monotonic() - start if s.recv(10) == b"x\n" else None
    except OSError:
        return None


def many(port: int, n: int, timeout: float) -> list[float | None]:
    out: list[float | None] = [None] * n

    def one(i: int) -> None:
        out[i] = ask(port, timeout)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _normal(port: int, lat: list[float], lost: list[int], stop: threading.Event) -> None:
    """One plain request every 0.1 s, a new connection each, until ``stop``."""
    req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    while not stop.is_set():
        start = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(req)
                if not s.recv(100).startswith(b"HTTP/1.1 200"):
                    raise OSError("bad answer")
            lat.append(time.monotonic() - start)
        except OSError:
            lost.append(1)
        time.sleep(0.1)


def _p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000 if xs else float("nan")


def row1(root: Path, n: int = 300, seconds: float = 25.0) -> None:
    port = free_port()
    p = Proc(root, ["examples/http_server.py", "--port", str(port), "--no-tls",
                    "--idle-timeout", "10"])
    try:
        p.wait_for("listening")
        lat: list[float] = []
        lost: list[int] = []
        stop = threading.Event()
        t = threading.Thread(target=_normal, args=(port, lat, lost, stop))
        t.start()
        time.sleep(3)
        stop.set()
        t.join()
        base = _p99(lat)
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        start = time.monotonic()
        closed_at: dict[int, float] = {}
        for s in socks:
            s.setblocking(False)
        lat, lost, stop = [], [], threading.Event()
        t = threading.Thread(target=_normal, args=(port, lat, lost, stop))
        t.start()
        i = 0
        while time.monotonic() - start < seconds:
            # each trickler sends one byte every 5 s (n/50 per 0.1 s slot)
            for k, s in enumerate(socks):
                if k in closed_at:
                    continue
                try:
                    if s.recv(4096) == b"":
                        closed_at[k] = time.monotonic() - start
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[k] = time.monotonic() - start
                    continue
                if k % 50 == i % 50:
                    with contextlib.suppress(OSError):
                        s.send(head[(i // 50) % len(head):][:1])
            i += 1
            time.sleep(0.1)
        stop.set()
        t.join()
        for s in socks:
            s.close()
        last = max(closed_at.values()) if closed_at else float("nan")
        print(f"row 1: HTTP slowloris, {n} connections x 1 byte / 5 s, --idle-timeout 10: "
              f"{len(closed_at)}/{n} closed within {seconds:.0f} s (last at {last:.1f} s); "
              f"normal requests: {len(lat)} answered, {len(lost)} failed, p99 "
              f"{_p99(lat):.1f} ms (unloaded {base:.1f} ms)")
    finally:
        p.stop()


def row2(root: Path) -> None:
    port = free_port()
    flag = Path(tempfile.mkdtemp()) / "fail"
    with echo(root, port, "--loops", "2", "--quiet", wrap=_FORK_FAILS,
              env={"EVIO_FORK_FAILS": str(flag)}) as p:
        p.wait_for("listening", 2)
        time.sleep(0.3)
        flag.touch()
        victim = children(p.p.pid)[-1]
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.5)
        alive = p.p.poll() is None
        answered = sum(x is not None for x in many(port, 20, 1.0))
        flag.unlink()
        start = time.monotonic()
        while alive and len(children(p.p.pid)) < 2 and time.monotonic() - start < 15:
            time.sleep(0.01)
        back = time.monotonic() - start if alive and len(children(p.p.pid)) == 2 else None
        print(f"row 2: fork failing, one loop killed: supervisor alive {alive} "
              f"(exit {p.p.returncode}); {answered}/20 clients answered meanwhile; "
              f"slot filled {f'{back:.2f} s' if back is not None else 'never'} "
              "after fork works again")


def row3(root: Path) -> None:
    black = socket.socket()
    black.bind(("127.0.0.1", 0))
    black.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue: later SYNs are dropped
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(black.getsockname())
        fillers.append(s)
    time.sleep(0.2)
    port = free_port()
    p = Proc(root, ["examples/proxy.py", "--port", str(port),
                    "--upstream", f"tcp://127.0.0.1:{black.getsockname()[1]}"])
    try:
        p.wait_for("listening")
        base = rss_kib(p.p.pid)
        chunk = b"x" * 65536
        socks = []

        def send(s: socket.socket) -> None:
            with contextlib.suppress(OSError):
                for _ in range(64):  # 4 MiB
                    s.sendall(chunk)

        threads = []
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", port), timeout=6)
            socks.append(s)
            t = threading.Thread(target=send, args=(s,), daemon=True)
            t.start()
            threads.append(t)
        peak = base
        end = time.monotonic() + 5
        while time.monotonic() < end:
            peak = max(peak, rss_kib(p.p.pid))
            time.sleep(0.1)
        print(f"row 3: proxy, 100 clients x 4 MiB while dialing: RSS {base / 1024:.1f} MB "
              f"-> peak {peak / 1024:.1f} MB (+{(peak - base) / 1024:.1f} MB)")
        for s in socks:
            s.close()
    finally:
        p.stop()
        black.close()
        for s in fillers:
            s.close()


def row4(root: Path) -> None:
    port = free_port()
    with echo(root, port, "--loops", "2", "--quiet") as p:
        p.wait_for("listening", 2)
        time.sleep(0.3)
        victim = children(p.p.pid)[-1]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        lat = many(port, 100, 2.0)
        while len(children(p.p.pid)) < 2 and time.monotonic() - killed < 10:
            time.sleep(0.001)
        gap = time.monotonic() - killed
        ok = sorted(x for x in lat if x is not None)
        print(f"row 4a: one kill -9: slot filled after {gap * 1000:.0f} ms; of 100 clients "
              f"sent at once {len(ok)} answered, slowest {ok[-1] * 1000 if ok else 0:.0f} ms, "
              f"median {ok[len(ok) // 2] * 1000 if ok else 0:.1f} ms")
        # Crash loop: kill the slot again each time it comes back.
        first = children(p.p.pid)[0]
        stop = threading.Event()

        def killer() -> None:
            while not stop.is_set():
                for kid in children(p.p.pid):
                    if kid != first:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(kid, signal.SIGKILL)
                time.sleep(0.005)

        k = threading.Thread(target=killer)
        k.start()
        try:
            time.sleep(0.2)
            lost = 0
            for _ in range(10):
                lost += sum(x is None for x in many(port, 10, 1.0))
        finally:
            stop.set()
            k.join()
        print(f"row 4b: one loop crashing in a loop: {lost}/100 new clients not answered in 1 s")


def row5(root: Path) -> None:
    port = free_port()
    with echo(root, port, "--loops", "2") as a:
        a.wait_for("listening", 2)
        with echo(root, port, "--loops", "2") as b:
            started = b.wait_for("listening", 1, limit=3)
            time.sleep(0.3)
            rc = b.p.poll()
            for _ in range(40):
                ask(port, 1.0)
            time.sleep(0.2)
            took = b.out().count("opened")
            err = [ln for ln in b.out().splitlines() if "in use" in ln]
        print(f"row 5: second --loops 2 server on the same port: started {started}, "
              f"exit {rc}, took {took}/40 connections; {err[:1]}")


def row6(root: Path) -> None:
    for script, extra in (("examples/echo_server.py", ["--quiet"]),
                          ("examples/http_server.py", ["--tlsport", "0"])):
        for how in ("SIGHUP", "SIGINT to the group", "SIGTERM"):
            folder = Path(tempfile.mkdtemp())
            sock = folder / "s.sock"
            p = Proc(root, [script, "--port", "0", "--loops", "2", "--unixsocket", str(sock),
                            *extra], session=True)
            try:
                p.wait_for("listening", 2)
                time.sleep(0.3)
                m = re.search(r"CA file: (\S+)", p.out())
                key = Path(m.group(1)).parent if m else None
                if how == "SIGHUP":
                    p.p.send_signal(signal.SIGHUP)
                elif how == "SIGTERM":
                    p.p.send_signal(signal.SIGTERM)
                else:
                    os.killpg(p.p.pid, signal.SIGINT)
                try:
                    rc: int | None = p.p.wait(15)
                except subprocess.TimeoutExpired:
                    rc = None
                out = p.out()
                print(f"row 6: {Path(script).name} --loops 2, {how}: exit {rc}, "
                      f"traceback {'Traceback' in out}, stop line {'stopped' in out}, "
                      f"socket file left {sock.exists()}, "
                      f"key left {key.exists() if key else 'n/a'}")
            finally:
                p.stop()
                with contextlib.suppress(OSError):
                    os.killpg(p.p.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the evio checkout to measure")
    parser.add_argument("rows", nargs="*", type=int, default=[1, 2, 3, 4, 5, 6])
    args = parser.parse_args()
    for r in args.rows:
        {1: row1, 2: row2, 3: row3, 4: row4, 5: row5, 6: row6}[r](args.root.resolve())


if __name__ == "__main__":
    main()
