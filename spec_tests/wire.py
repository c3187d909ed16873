"""Wire profiles: the echo, Redis and HTTP black-box tests against any server.

Theory of operation. A black-box test needs a server of one *kind* (``echo``,
``redis``, ``http``) listening on a loopback port. By default it is this
project's example, started as the test file always started it. When the run
names a command for that kind -- ``--server-cmd redis='prog -port {port}'`` on
the command line, or the ``[commands]`` table of a wire target's manifest
(``--evio-target``) -- the test gets that program instead, started under the
target contract of docs/spec/wire-targets.md: the suite picks a free loopback
port and puts it in the command (WIRE-1), readiness is the first successful
connect (WIRE-2), its output goes to files so it can never block (WIRE-4),
and SIGTERM must stop it (WIRE-3).

A test says what it needs with ``@pytest.mark.wire(kind, *features)``. The
features are the parts of a profile beyond the seed's examples (EXISTS, WGET,
keep-alive, ...); a target lists the ones it lacks in its manifest, and a test
needing one is *not applicable* there, never failed. Options a test passes
(``--max-buffer 1024``) are features too: the manifest's ``[options]`` table
maps each to the target's own flags (``"-maxbuf {value}"``), drops it (``""``:
run without it), or leaves it out (the test is not applicable).

This module owns the wire half of the conformance plugin: the command-line
options, the manifest's wire tables, and starting and stopping a target.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

KINDS = ("echo", "redis", "http")

# Every feature a wire test may need, by kind: the one registered list. A
# manifest naming anything else is an error. "option:NAME" features are the
# options tests pass; the rest are behaviour beyond the seed's examples.
WIRE_FEATURES: dict[str, str] = {
    # options (mapped, dropped or unmapped in [options])
    "option:poller": "choose the poller backend (dropped: the test runs once)",
    "option:unixsocket": "also listen on a unix socket at a given path",
    "option:max-buffer": "bound one Redis client's unparsed input",
    # echo
    "echo:signal-sigint": "SIGINT stops the server too",
    # redis, beyond PING/ECHO/SET/GET/DEL/FLUSHDB/QUIT/SHUTDOWN
    "redis:exists": "the EXISTS command",
    "redis:hello": "HELLO and RESP3 replies",
    "redis:command": "COMMAND, COMMAND DOCS/COUNT/LIST/INFO/HELP",
    "redis:config": "CONFIG GET/HELP",
    "redis:wget": "the WGET command (fetch a URL through Server.dial)",
    "redis:half-close": "answers every request sent before the client's FIN",
    "redis:inline": "inline (telnet-style) requests with quotes",
    "redis:real-clients": "what redis-py, redis-cli and redis-benchmark send on connect",
    # http, beyond one canned Hello World per request
    "http:keep-alive": "persistent HTTP/1.1 and HTTP/1.0 keep-alive connections",
    "http:post-echo": "POST echoes its body",
    "http:pages": "an index page, /echo and other paths beyond Hello World",
    "http:tls": "HTTPS on a second port (the example's throwaway certificate or one given)",
}

TIMEOUT = 20.0  # starting or stopping a target; one connect attempt


@dataclass(frozen=True)
class WireTarget:
    """What the run knows of the servers under test.

    Attributes:
        commands: kind -> command template with ``{port}``; a kind absent
            here runs this project's example.
        options: option name -> flag template with ``{value}``; ``""``
            drops the option; an absent name makes the test not applicable.
        lacks: wire features the target does not have.
        name: the target's name (``"examples"`` for none).
    """

    commands: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    lacks: frozenset[str] = frozenset()
    name: str = "examples"


_TARGET = WireTarget()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("evio wire", "wire profiles (docs/spec/wire-targets.md)")
    group.addoption(
        "--server-cmd", action="append", default=[], metavar="KIND=COMMAND",
        help="run the KIND (echo, redis, http) black-box tests against COMMAND, "
             "which must contain {port}; repeatable")
    group.addoption(
        "--server-option", action="append", default=[], metavar="NAME=FLAGS",
        help="map a test option (e.g. max-buffer) to the target's flags, with "
             "{value}; NAME= drops it; repeatable")


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, eq, rest = item.partition("=")
        if not eq or not name.strip():
            raise pytest.UsageError(f"{what} {item!r}: expected NAME=VALUE")
        out[name.strip()] = rest
    return out


def _manifest_tables(path: Path) -> tuple[dict[str, str], dict[str, str], list[str], str]:
    """The wire tables of the manifest of target directory or file ``path``."""
    manifest = path / "manifest.toml" if path.is_dir() else path
    try:
        data = tomllib.loads(manifest.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise pytest.UsageError(f"--evio-target: cannot read {manifest}: {e}") from e
    target = data.get("target", {})
    if target.get("kind") != "wire":
        return {}, {}, [], str(target.get("name", manifest.parent.name))
    commands = {str(k): str(v) for k, v in data.get("commands", {}).items()}
    options = {str(k): str(v) for k, v in data.get("options", {}).items()}
    lacks = [str(f) for f in data.get("features", {}).get("lacks", [])]
    return commands, options, lacks, str(target.get("name", manifest.parent.name))


def pytest_configure(config: pytest.Config) -> None:
    global _TARGET
    config.addinivalue_line(
        "markers", "wire(kind, *features): a black-box test of a server of KIND "
        "(echo, redis, http) needing FEATURES (spec_tests/wire.py)")
    commands: dict[str, str] = {}
    options: dict[str, str] = {}
    lacks: list[str] = []
    name = "examples"
    target_dir = config.getoption("evio_target", default=None)
    if target_dir:
        commands, options, lacks, name = _manifest_tables(Path(str(target_dir)))
    given = _pairs(config.getoption("server_cmd"), "--server-cmd")
    if given and not target_dir:
        name = "command line"
    commands.update(given)
    options.update(_pairs(config.getoption("server_option"), "--server-option"))
    for kind, cmd in commands.items():
        if kind not in KINDS:
            raise pytest.UsageError(f"server command for unknown kind {kind!r} "
                                    f"(known: {', '.join(KINDS)})")
        if "{port}" not in cmd:
            raise pytest.UsageError(f"server command for {kind} has no {{port}}: {cmd!r}")
    for opt in options:
        if f"option:{opt}" not in WIRE_FEATURES:
            raise pytest.UsageError(f"unknown server option {opt!r} (known: " + ", ".join(
                f[7:] for f in WIRE_FEATURES if f.startswith("option:")) + ")")
    for feat in lacks:
        if feat not in WIRE_FEATURES and feat.partition(":")[0] in (*KINDS, "option"):
            raise pytest.UsageError(f"unknown wire feature {feat!r} in the manifest")
    _TARGET = WireTarget(commands, options, frozenset(lacks), name)


def target() -> WireTarget:
    """The wire target of this run (no commands: this project's examples)."""
    return _TARGET


def external(kind: str) -> bool:
    """Whether the ``kind`` tests run against a command rather than the example."""
    return kind in _TARGET.commands


def not_applicable(feature: str, why: str = "") -> None:
    """Skip the running test as not applicable: the target lacks ``feature``."""
    pytest.skip(f"not applicable: lacks {feature}" + (f" ({why})" if why else ""))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under a wire target, only wire tests of a kind it serves run; a test
    needing a feature the target lacks is not applicable."""
    if not _TARGET.commands:
        return
    for item in items:
        mark = item.get_closest_marker("wire")
        if mark is None or mark.args[0] not in _TARGET.commands:
            item.add_marker(pytest.mark.skip(
                reason="not applicable: lacks api (a wire target runs only wire tests)"))
            continue
        for feat in mark.args[1:]:
            if feat not in WIRE_FEATURES:
                raise pytest.UsageError(f"{item.nodeid}: unknown wire feature {feat!r}")
            unmapped = feat.startswith("option:") and feat[7:] not in _TARGET.options
            if feat in _TARGET.lacks or unmapped:
                item.add_marker(pytest.mark.skip(reason=f"not applicable: lacks {feat}"))
                break


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (WIRE-1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def option_flags(options: dict[str, str | None]) -> list[str]:
    """The target's own flags for the test's options; not applicable when one
    is unmapped. A value of ``None`` is a switch with no value."""
    argv: list[str] = []
    for name, value in options.items():
        template = _TARGET.options.get(name)
        if template is None:
            not_applicable(f"option:{name}", "no mapping in the manifest's [options]")
        assert template is not None
        if template:
            argv += shlex.split(template.replace("{value}", shlex.quote(value or "")))
    return argv


def once_per_poller(poller: str, pollers: tuple[str, ...] | list[str]) -> None:
    """A target that drops ``option:poller`` runs a poller-parametrised test once."""
    if "poller" not in _TARGET.options:
        not_applicable("option:poller", "no mapping in the manifest's [options]")
    if not _TARGET.options["poller"] and poller != pollers[0]:
        not_applicable("option:poller", f"dropped: the test ran with {pollers[0]}")


@dataclass
class Running:
    """A target server started by `launch`."""

    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path

    def output(self) -> tuple[str, str]:
        return (self.out.read_text(errors="replace"), self.err.read_text(errors="replace"))


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def launch(kind: str, tmp: Path, options: dict[str, str | None] | None = None,
           stop: bool = True) -> Iterator[Running]:
    """Start the ``kind`` target on a free port; yield it; stop it with SIGTERM.

    The command runs in ``tmp`` (its working directory), with stdin empty and
    stdout/stderr written to ``tmp/KIND.out`` and ``tmp/KIND.err`` (WIRE-4).
    It is ready when a connect to its port succeeds (WIRE-2). On the way out,
    unless it has exited, it gets SIGTERM and must exit within TIMEOUT
    (WIRE-3); a target that does not is killed and the test fails.

    Raises:
        AssertionError: the target exited or never accepted a connect within
            TIMEOUT, or did not stop on SIGTERM.
    """
    flags = option_flags(options or {})
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = shlex.split(os.path.expandvars(_TARGET.commands[kind].replace("{port}", str(port))))
    out, err = tmp / f"{kind}.out", tmp / f"{kind}.err"
    with out.open("wb") as fo, err.open("wb") as fe:
        try:
            proc = subprocess.Popen([*argv, *flags], stdin=subprocess.DEVNULL, stdout=fo,
                                    stderr=fe, cwd=tmp, start_new_session=True)
        except OSError as e:
            raise AssertionError(f"cannot start the {kind} target {argv!r}: {e}") from e
    running = Running(proc, port, out, err)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _connects(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the {kind} target {argv!r} did not accept a connect "
                                     f"on port {port}: {running.output()!r}")
            time.sleep(0.05)
        yield running
        if stop:
            terminate(running)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)


def terminate(running: Running, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` (unless it has exited already) and expect the target to exit
    within TIMEOUT (WIRE-3); return its exit status."""
    if running.proc.poll() is None:
        running.proc.send_signal(sig)
    try:
        return running.proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait(TIMEOUT)
        raise AssertionError(f"the target did not stop within {TIMEOUT} s of signal {sig}") \
            from None


def python_command(example: str) -> str:
    """A command template running this project's ``examples/EXAMPLE`` (for
    checking the wire path against the reference)."""
    root = Path(__file__).resolve().parent.parent
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(root / 'examples' / example))} " \
           "--port {port}"


def describe() -> dict[str, Any]:
    """The wire target as the results file records it."""
    return {"name": _TARGET.name, "commands": dict(_TARGET.commands),
            "options": dict(_TARGET.options), "lacks": sorted(_TARGET.lacks)}
