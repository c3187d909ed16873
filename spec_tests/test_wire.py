"""The wire profiles' runner (spec_tests/wire.py) keeps the target contract.

Each test starts a real process -- a few lines of Python standing in for a
server written in any language -- through `wire.launch`, exactly as the
echo, Redis and HTTP tests start a wire target, and checks one rule of
docs/spec/wire-targets.md. The last ones run pytest itself with
``--server-cmd`` against this project's echo example.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wire

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60.0

pytestmark = pytest.mark.project  # about the suite itself, not an implementation

# A stand-in server: listens on 127.0.0.1:PORT, echoes, and does what the
# flags after the port ask (write MB to stdout first, ignore SIGTERM, exit).
SERVER = r"""
import os, signal, socket, sys, threading
port = int(sys.argv[1]); flags = sys.argv[2:]
if "--exit" in flags:
    print("refusing to start", file=sys.stderr); sys.exit(3)
if "--ignore-term" in flags:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "--chatty" in flags:
    sys.stdout.write("x" * (8 << 20)); sys.stdout.flush()
open("cwd.txt", "w").write(os.getcwd())
s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen()
def serve(c):
    while d := c.recv(65536):
        c.sendall(d)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A wire target whose ``echo`` command is the stand-in server."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {{port}}"
    monkeypatch.setattr(wire, "_TARGET", wire.WireTarget(
        commands={"echo": cmd}, options={"poller": "", "chatty": "--chatty"},
        lacks=frozenset(), name="stand-in"))
    yield tmp_path


def _echo(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
        c.sendall(b"ping")
        return c.recv(4)


@pytest.mark.rule("WIRE-1", "WIRE-2")
@pytest.mark.timeout(120)
def test_the_target_listens_on_the_port_it_is_given_and_is_ready_on_connect(
        stand_in: Path) -> None:
    with wire.launch("echo", stand_in / "run") as server:
        assert _echo(server.port) == b"ping"  # ready means a connect succeeds, no banner
        assert (stand_in / "run" / "cwd.txt").read_text() == str(stand_in / "run")
        assert wire.external("echo") and not wire.external("redis")
    assert server.proc.returncode == -signal.SIGTERM


@pytest.mark.rule("WIRE-2")
@pytest.mark.timeout(120)
def test_a_target_that_exits_fails_with_its_output(stand_in: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = wire.target()
    monkeypatch.setattr(wire, "_TARGET", wire.WireTarget(
        {"echo": target.commands["echo"] + " --exit"}, {}, frozenset()))
    with pytest.raises(AssertionError, match="refusing to start"), \
            wire.launch("echo", stand_in / "run"):
        pass


@pytest.mark.rule("WIRE-3")
@pytest.mark.timeout(120)
def test_a_target_that_ignores_sigterm_fails_and_is_killed(
        stand_in: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = wire.target()
    monkeypatch.setattr(wire, "_TARGET", wire.WireTarget(
        {"echo": target.commands["echo"] + " --ignore-term"}, {}, frozenset()))
    monkeypatch.setattr(wire, "TIMEOUT", 1.0)
    with pytest.raises(AssertionError, match="did not stop"), \
            wire.launch("echo", stand_in / "run") as server:
        assert _echo(server.port) == b"ping"
    assert server.proc.returncode == -signal.SIGKILL


@pytest.mark.rule("WIRE-4")
@pytest.mark.timeout(120)
def test_output_never_blocks_the_target(stand_in: Path) -> None:
    started = time.monotonic()
    with wire.launch("echo", stand_in / "run", {"chatty": "yes"}) as server:
        assert _echo(server.port) == b"ping"  # 8 MiB on stdout did not stop it
        out, _ = server.output()
        assert len(out) == 8 << 20
    assert time.monotonic() - started < TIMEOUT


@pytest.mark.rule("WIRE-5")
def test_options_are_mapped_dropped_or_not_applicable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "_TARGET", wire.WireTarget(
        {"redis": "r {port}"},
        {"poller": "", "unixsocket": "-unixsocket {value}",
         "redis": {"max-buffer": "-maxbuf={value}"}, "echo": {"unixsocket": "-u {value}"}},
        frozenset()))
    assert wire.option_flags("redis", {"unixsocket": "/tmp/a b", "poller": "epoll"}) == [
        "-unixsocket", "/tmp/a b"]
    assert wire.option_flags("echo", {"unixsocket": "/x"}) == ["-u", "/x"]  # per kind first
    assert wire.option_flags("redis", {"max-buffer": "1024"}) == ["-maxbuf=1024"]
    with pytest.raises(pytest.skip.Exception, match=r"^not applicable: option:max-buffer"):
        wire.option_flags("echo", {"max-buffer": "1024"})
    wire.once_per_poller("redis", "epoll", ["epoll", "poll"])  # runs on the first
    with pytest.raises(pytest.skip.Exception, match=r"^not applicable: option:poller"):
        wire.once_per_poller("redis", "poll", ["epoll", "poll"])


def _pytest(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EVIO_IMPL"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "-rs", *args], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=cwd, env=env)


@pytest.mark.rule("WIRE-6")
@pytest.mark.timeout(120)
def test_unknown_options_and_features_are_errors(tmp_path: Path) -> None:
    bad_option = _pytest("spec_tests/test_examples.py", "--server-cmd", "echo=x {port}",
                         "--server-option", "colour=--colour {value}")
    assert bad_option.returncode != 0 and "unknown server option 'colour'" in bad_option.stderr
    no_port = _pytest("spec_tests/test_examples.py", "--server-cmd", "echo=x -port 5")
    assert no_port.returncode != 0 and "has no {port}" in no_port.stderr
    manifest = tmp_path / "manifest.toml"
    manifest.write_text('[target]\nname = "t"\nkind = "wire"\n[commands]\n'
                        'echo = "x {port}"\n[features]\nlacks = ["redis:exist"]\n')
    typo = _pytest("spec_tests/test_examples.py", f"--evio-target={manifest}",
                   f"--evio-results={tmp_path / 'r.json'}")
    assert typo.returncode != 0 and "redis:exist" in typo.stdout + typo.stderr


@pytest.mark.rule("WIRE-5", "WIRE-6", "WIRE-7")
@pytest.mark.timeout(180)
def test_server_cmd_runs_only_the_wire_tests_against_the_command() -> None:
    echo = f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'examples' / 'echo_server.py'))}"
    done = _pytest("spec_tests/test_examples.py", "--server-cmd", f"echo={echo} --port {{port}}",
                   "--server-option", "poller=--poller {value}")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # the SIGINT and SIGTERM case on every poller passed; the help test is an API test
    passed = int(out.rsplit(" passed", 1)[0].rsplit(maxsplit=1)[-1])
    assert passed == 2 * len(wire_pollers()), out
    assert "not applicable: api" in out, out
    # unixsocket unmapped: the echo test still runs, over TCP only


def wire_pollers() -> list[str]:
    from harness import POLLERS

    return list(POLLERS)
