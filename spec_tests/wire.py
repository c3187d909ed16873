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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import features
import pytest
import targets

KINDS = ("echo", "redis", "http")

WIRE_FEATURES = features.WIRE

TIMEOUT = 20.0  # starting or stopping a target; one connect attempt


@dataclass(frozen=True)
class WireTarget:
    """What the run knows of the servers under test.

    Attributes:
        commands: kind -> command template with ``{port}``; a kind absent
            here runs this project's example.
        options: option name -> flag template with ``{value}``; ``""``
            drops the option; an absent name makes the test not applicable.
            A table named after a kind (``[options.redis]``) holds that
            kind's own mappings, which come before the shared ones.
        lacks: wire features the target does not have.
        name: the target's name (``"examples"`` for none).
    """

    commands: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    lacks: frozenset[str] = frozenset()
    name: str = "examples"

    def mapping(self, kind: str, option: str) -> str | None:
        """The flag template for ``option`` of the ``kind`` server, or None."""
        own = self.options.get(kind)
        if isinstance(own, dict) and option in own:
            return str(own[option])
        shared = self.options.get(option)
        return None if shared is None or isinstance(shared, dict) else str(shared)


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


def _manifest_tables(where: str) -> tuple[dict[str, str], dict[str, Any], list[str], str]:
    """The wire tables of a target's manifest (`targets.load` checks it)."""
    try:
        m = targets.load(where)
    except targets.ManifestError as e:
        raise pytest.UsageError(str(e)) from None
    if m.kind != "wire":
        return {}, {}, [], m.name
    return ({str(k): str(v) for k, v in m.commands.items()},
            dict(m.options), list(m.lacks), m.name)


def pytest_configure(config: pytest.Config) -> None:
    global _TARGET
    config.addinivalue_line(
        "markers", "wire(kind, *features): a black-box test of a server of KIND "
        "(echo, redis, http) needing FEATURES (spec_tests/wire.py)")
    commands: dict[str, str] = {}
    options: dict[str, Any] = {}
    lacks: list[str] = []
    name = "examples"
    target_dir = config.getoption("evio_target", default=None)
    if target_dir:
        commands, options, lacks, name = _manifest_tables(str(target_dir))
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
    names = [f"{k}.{o}" for k, v in options.items() if isinstance(v, dict) for o in v]
    for kind in (k for k, v in options.items() if isinstance(v, dict)):
        if kind not in KINDS:
            raise pytest.UsageError(f"[options.{kind}]: unknown kind (known: {', '.join(KINDS)})")
    for opt in [o for o, v in options.items() if not isinstance(v, dict)] + names:
        if f"option:{opt.rpartition('.')[2]}" not in WIRE_FEATURES:
            raise pytest.UsageError(f"unknown server option {opt!r} (known: " + ", ".join(
                f[7:] for f in WIRE_FEATURES if f.startswith("option:")) + ")")
    _TARGET = WireTarget(commands, options, frozenset(lacks), name)


def target() -> WireTarget:
    """The wire target of this run (no commands: this project's examples)."""
    return _TARGET


def external(kind: str) -> bool:
    """Whether the ``kind`` tests run against a command rather than the example."""
    return kind in _TARGET.commands


def not_applicable(feature: str, why: str = "") -> None:
    """Skip the running test as not applicable: the target lacks ``feature``."""
    pytest.skip(f"not applicable: {feature}" + (f" ({why})" if why else ""))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under a wire target, only wire tests of a kind it serves run; a test
    needing a feature the target lacks is not applicable."""
    if not _TARGET.commands:
        return
    for item in items:
        mark = item.get_closest_marker("wire")
        if mark is None:
            item.add_marker(pytest.mark.skip(
                reason="not applicable: api (a wire target runs only wire tests)"))
            continue
        if mark.args[0] not in _TARGET.commands:
            item.add_marker(pytest.mark.skip(
                reason=f"not applicable: {mark.args[0]} server (the target has no command "
                       f"for it)"))
            continue
        for feat in mark.args[1:]:
            if feat not in WIRE_FEATURES:
                raise pytest.UsageError(f"{item.nodeid}: unknown wire feature {feat!r}")
            unmapped = feat.startswith("option:") and not mapped(mark.args[0], feat[7:])
            if feat in _TARGET.lacks or unmapped:
                item.add_marker(pytest.mark.skip(reason=f"not applicable: {feat}"))
                break


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (WIRE-1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def option_flags(kind: str, options: dict[str, str | None]) -> list[str]:
    """The target's own flags for the test's options; not applicable when one
    is unmapped. A value of ``None`` is a switch with no value."""
    argv: list[str] = []
    for name, value in options.items():
        template = _TARGET.mapping(kind, name)
        if template is None:
            not_applicable(f"option:{name}", "no mapping in the manifest's [options]")
        assert template is not None
        if template:
            argv += shlex.split(template.replace("{value}", shlex.quote(value or "")))
    return argv


def mapped(kind: str, option: str) -> bool:
    """Whether the manifest maps (or drops) ``option`` for the ``kind`` server."""
    return _TARGET.mapping(kind, option) is not None


def once_per_poller(kind: str, poller: str, pollers: tuple[str, ...] | list[str]) -> None:
    """A target that drops ``option:poller`` runs a poller-parametrised test once."""
    template = _TARGET.mapping(kind, "poller")
    if template is None:
        not_applicable("option:poller", "no mapping in the manifest's [options]")
    if not template and poller != pollers[0]:
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
    flags = option_flags(kind, options or {})
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
