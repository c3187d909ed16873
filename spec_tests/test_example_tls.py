"""The TLS echo example, run as a user runs it, checked by two real clients.

Each test starts ``examples/tls_echo.py`` as a real process on port 0, reads
the CA path (for a throwaway certificate) and the port from its start-up
lines, and talks to it over loopback with

* Python's ``ssl`` (a blocking ``SSLSocket`` that verifies the chain
  against the CA and the host name ``localhost``), and
* the real ``openssl s_client`` binary, with ``-verify_return_error`` so a
  certificate it cannot verify fails the handshake instead of a warning.

A missing ``openssl`` binary fails these tests: they exist to show that a
TLS implementation other than the one evio is built on accepts the server.
Every test stops the example with SIGTERM and expects exit 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from harness import POLLERS, recv_all, recv_exactly

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tls_echo.py"
TIMEOUT = 30.0  # any one socket operation, and starting or stopping a process
KiB, MiB = 1 << 10, 1 << 20

_CA_LINE = re.compile(r"clients verify it with CA file (\S+)")
_LISTENER = re.compile(r"\('127\.0\.0\.1', (\d+)\) \((TLS|plain)\)")


# ------------------------------------------------------------- processes


@dataclass
class Example:
    proc: subprocess.Popen[str]
    tls_port: int
    plain_port: int | None
    ca: Path | None  # the throwaway CA the example made, if it made one
    lines: list[str]  # what it printed before it was ready


@contextlib.contextmanager
def tls_echo(*args: str) -> Iterator[Example]:
    """Run ``examples/tls_echo.py --port 0 ARGS`` until it prints its listeners."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        # Read the descriptor itself: a buffered readline() may swallow the
        # next line too, and select() would then wait for bytes already read.
        fd, buf = proc.stdout.fileno(), b""
        deadline = time.monotonic() + TIMEOUT
        while b"listening on" not in buf.rpartition(b"\n")[0]:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                proc.kill()
                _, err = proc.communicate(timeout=TIMEOUT)
                raise AssertionError(f"tls_echo.py did not start: {buf!r} {err!r}")
            buf += chunk
        lines = buf.decode().splitlines(keepends=True)
        lines = lines[:next(i for i, x in enumerate(lines) if "listening on" in x) + 1]
        ports = {kind: int(port) for port, kind in _LISTENER.findall(lines[-1])}
        assert "TLS" in ports, lines[-1]
        found = _CA_LINE.search("".join(lines[:-1]))
        yield Example(proc, ports["TLS"], ports.get("plain"),
                      Path(found.group(1)) if found else None, lines)
    finally:
        if proc.poll() is None:  # the test failed: stop it, removing its files if it can
            proc.terminate()
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=TIMEOUT)


def stop(ex: Example) -> str:
    """SIGTERM the example; expect a clean exit 0; return the rest of its stdout."""
    ex.proc.send_signal(signal.SIGTERM)
    out, err = ex.proc.communicate(timeout=TIMEOUT)
    assert ex.proc.returncode == 0, err
    assert "tls echo server stopped" in out, out
    return out


# --------------------------------------------------------------- clients


def python_tls_echo(port: int, ca: Path, sizes: list[int]) -> None:
    """Verify the server against ``ca``, echo each payload, end with close_notify."""
    ctx = ssl.create_default_context(cafile=str(ca))  # verifies chain and host name
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        for n in sizes:
            payload = os.urandom(n)
            # Send in 64 KiB steps and read each echo back before the next:
            # the server stops reading while too much output waits for us.
            for i in range(0, n, 64 * KiB):
                chunk = payload[i:i + 64 * KiB]
                s.sendall(chunk)
                assert recv_exactly(s, len(chunk)) == chunk, f"echo differs at byte {i}"
        plain = s.unwrap()  # sends close_notify, waits for the server's
        assert recv_all(plain) == b"", "bytes after close_notify"
        plain.close()


def openssl_echo(port: int, ca: Path) -> None:
    """Have ``openssl s_client`` verify the server and echo one line."""
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("the openssl binary is not installed (apt-get install -y openssl); "
                    "this test needs a TLS client that is not Python's ssl module")
    line = f"hello from openssl s_client {os.getpid()}\n"
    client = subprocess.Popen(
        [binary, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca),
         "-servername", "localhost", "-verify_return_error", "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(line)
        client.stdin.flush()
        ready, _, _ = select.select([client.stdout], [], [], TIMEOUT)
        echoed = client.stdout.readline() if ready else ""
        if echoed != line:
            client.kill()
            _, err = client.communicate(timeout=TIMEOUT)
            raise AssertionError(f"openssl s_client got {echoed!r}, not {line!r}: {err}")
    finally:
        if client.poll() is None:
            client.kill()  # -quiet implies -ign_eof: it would wait for more input
        client.communicate(timeout=TIMEOUT)


def issue(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A trustme CA and a localhost leaf as PEM files: (ca, chain, key)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca_pem, chain_pem, key_pem = tmp_path / "ca.pem", tmp_path / "chain.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    chain_pem.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_pem))
    return ca_pem, chain_pem, key_pem


# ----------------------------------------------------------------- tests


@pytest.mark.rule("TLS-1", "TLS-5", "TR-2", "TR-4", "TR-5", "TR-6", "LOOP-17")
@pytest.mark.parametrize("poller", POLLERS)
def test_throwaway_certificate_python_and_openssl(poller: str) -> None:
    with tls_echo("--poller", poller) as ex:
        assert f"(poller: {poller})" in ex.lines[-1]
        assert ex.ca is not None, f"no CA file announced: {ex.lines!r}"
        assert ex.ca.is_file()
        assert ex.plain_port is None
        python_tls_echo(ex.tls_port, ex.ca, [3 * KiB, 2 * MiB])
        openssl_echo(ex.tls_port, ex.ca)
        ca = ex.ca
        out = stop(ex)
    assert "TLSv1." in out  # the example logs what each handshake chose
    assert not ca.exists(), "the throwaway CA outlived the server"


@pytest.mark.rule("TLS-1", "TLS-4", "TR-4", "TR-7")
def test_given_certificate_and_key(tmp_path: Path) -> None:
    ca, chain, key = issue(tmp_path)
    with tls_echo("--cert", str(chain), "--key", str(key)) as ex:
        assert ex.ca is None, "made a throwaway certificate although one was given"
        python_tls_echo(ex.tls_port, ca, [5 * KiB, 2 * MiB])
        openssl_echo(ex.tls_port, ca)
        # A client that trusts another CA is refused, and the server goes on.
        other = trustme.CA()
        ctx = ssl.create_default_context(cadata=other.cert_pem.bytes().decode())
        raw = socket.create_connection(("127.0.0.1", ex.tls_port), timeout=TIMEOUT)
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="localhost")
        raw.close()
        python_tls_echo(ex.tls_port, ca, [100])
        out = stop(ex)
    # The refused handshake is that connection's error, not the server's.
    assert re.search(r"^\d+: closed \(SSL\w*Error\(", out, re.M), out


@pytest.mark.rule("TR-2", "TR-3", "TLS-4")
def test_also_plain_port(tmp_path: Path) -> None:
    ca, chain, key = issue(tmp_path)
    with tls_echo("--cert", str(chain), "--key", str(key), "--also-plain", "0") as ex:
        assert ex.plain_port is not None, ex.lines[-1]
        with socket.create_connection(("127.0.0.1", ex.plain_port), timeout=TIMEOUT) as c:
            payload = os.urandom(200 * KiB)
            c.sendall(payload)
            assert recv_exactly(c, len(payload)) == payload  # plain bytes, no TLS
        # Plain text on the TLS port: only that connection closes.
        with socket.create_connection(("127.0.0.1", ex.tls_port), timeout=TIMEOUT) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                reply = recv_all(c)  # a TLS alert at most, then the end
                assert b"GET" not in reply
        python_tls_echo(ex.tls_port, ca, [4 * KiB])
        openssl_echo(ex.tls_port, ca)
        out = stop(ex)
    assert "(plain)" in out and "(TLS)" in out


@pytest.mark.rule("ADDR-6")
def test_help_and_errors(tmp_path: Path) -> None:
    def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(EXAMPLE), *args] if code is None else \
            [sys.executable, "-c", code, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)

    help_ = run("--help")
    assert help_.returncode == 0
    for flag in ("--host", "--port", "--cert", "--key", "--poller", "--also-plain"):
        assert flag in help_.stdout
    bad_port = run("--port", "70000")
    assert bad_port.returncode == 1 and "70000" in bad_port.stderr
    assert run("--key", str(tmp_path / "k.pem")).returncode == 2  # --key needs --cert
    missing = run("--cert", str(tmp_path / "nope.pem"), "--port", "0")
    assert missing.returncode == 1 and "cannot load the certificate" in missing.stderr
    # Without trustme, and without --cert, the example says what is missing.
    no_trustme = run("--port", "0", code=(
        "import runpy, sys; sys.modules['trustme'] = None; "
        f"sys.argv[0] = {str(EXAMPLE)!r}; runpy.run_path(sys.argv[0], run_name='__main__')"))
    assert no_trustme.returncode == 1
    assert "trustme" in no_trustme.stderr and "--cert" in no_trustme.stderr
