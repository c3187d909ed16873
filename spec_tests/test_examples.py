"""The examples, run as a user runs them: a real process, real clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import wire
from harness import POLLERS, connect_to, recv_exactly

ROOT = Path(__file__).resolve().parent.parent


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "echo_server.py"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.rule("LOOP-8", "LOOP-19")
@pytest.mark.wire("echo")
@pytest.mark.parametrize("poller", POLLERS)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_echo_server_example(tmp_path: Path, poller: str, sig: signal.Signals) -> None:
    sock_path = tmp_path / "echo.sock"
    if wire.external("echo"):
        echo_target(tmp_path, poller, sig)
        return
    proc = start("--port", "0", "--unixsocket", str(sock_path), "--poller", poller, "--quiet")
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"(poller: {poller})" in banner, banner
        port = int(banner.split("('127.0.0.1', ")[1].split(")")[0])
        for target in (("127.0.0.1", port), str(sock_path)):
            c = connect_to(target)
            with c:
                payload = os.urandom(200_000)
                c.sendall(payload)
                assert recv_exactly(c, len(payload)) == payload
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "echo server stopped" in out
    assert not sock_path.exists()


def echo_target(tmp_path: Path, poller: str, sig: signal.Signals) -> None:
    """The same exchange against a wire target (docs/spec/wire-targets.md):
    200,000 bytes echoed over TCP (and the unix socket, if it has one), then
    the signal stops it."""
    wire.once_per_poller("echo", poller, POLLERS)
    if sig != signal.SIGTERM and "echo:signal-sigint" in wire.target().lacks:
        wire.not_applicable("echo:signal-sigint", "the target contract asks only for SIGTERM")
    options: dict[str, str | None] = {"poller": poller}
    sock_path = tmp_path / "echo.sock"
    unix = wire.mapped("echo", "unixsocket")
    if unix:
        options["unixsocket"] = str(sock_path)
    with wire.launch("echo", tmp_path, options, stop=False) as server:
        targets: list[object] = [("127.0.0.1", server.port)]
        if unix:
            targets.append(str(sock_path))
        for target in targets:
            with connect_to(target) as c:
                payload = os.urandom(200_000)
                c.sendall(payload)
                assert recv_exactly(c, len(payload)) == payload
        wire.terminate(server, sig)


@pytest.mark.rule("ADDR-6")
def test_echo_server_help_and_bad_port() -> None:
    help_ = subprocess.run([sys.executable, str(ROOT / "examples" / "echo_server.py"), "--help"],
                           capture_output=True, text=True, timeout=30)
    assert help_.returncode == 0 and "--unixsocket" in help_.stdout and "--poller" in help_.stdout
    proc = start("--port", "70000")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "70000" in err and "out of range" in err
