"""Code on the site, cut from the files that are tested, when the site is built.

Theory of operation
-------------------
A page that copies code by hand is right the day it is written. The
tutorial's stages and the examples are run by the test suite, so the pages
take their code from those files at build time, through three directives
that ``tools/docs_hooks.py`` expands in a page's Markdown, each alone on a
line:

``{{ fragment FILE NAME }}``
    The source of one definition in ``FILE``: a function, a class, a
    method (``Loop.run``) or a function nested in one (``main.data``),
    found with :mod:`ast`, so it follows the code
    when lines move. It becomes a fenced block titled with the file name
    and the line numbers, numbered as in the file. In a tutorial stage,
    the lines that are new since the stage before are highlighted.
``{{ diff FILE }}``
    What changed in a tutorial stage since the stage before, as a unified
    diff of the two files, folded under a "What changed" box.
``{{ trace FILE ARGS... }}``
    The stage run with ``--trace`` (and ``ARGS``) on port 0 while one
    client sends two lines, reads each echo and ends its stream; the page
    shows what the stage printed about each turn of its loop. The run
    happens on the build machine, over loopback, with a deadline.

The trap is the order of a page: a fragment must read in the order the
prose needs it, not the file's, which is why definitions are named rather
than the file shown whole.

Everything that turns a source file into a block on a page lives here.
"""

from __future__ import annotations

import ast
import difflib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["DIRECTIVE_RE", "diff", "expand", "fragment", "new_lines", "previous_stage", "trace"]

DIRECTIVE_RE = re.compile(r"^\{\{\s*(fragment|diff|trace)\s+([^}]*?)\s*\}\}\s*$", re.MULTILINE)
"""A directive alone on its line."""

TRACE_DEADLINE = 20.0
"""Seconds a traced run may take, from start to exit."""


class CodeError(ValueError):
    """A directive names a file or a definition that does not exist."""


def _source(path: str) -> list[str]:
    file = ROOT / path
    if not file.is_file():
        raise CodeError(f"no file {path}")
    return file.read_text(encoding="utf-8").splitlines()


def previous_stage(path: str) -> str | None:
    """``tutorial/stage3_x.py`` -> ``tutorial/stage2_y.py``; ``None`` for stage 1 or a non-stage."""
    m = re.match(r"tutorial/stage(\d+)_", path)
    if not m:
        return None
    before = sorted((ROOT / "tutorial").glob(f"stage{int(m.group(1)) - 1}_*.py"))
    return before[0].relative_to(ROOT).as_posix() if before else None


def _stamp(path: str) -> int:
    """When ``path`` last changed: part of every cache key, for ``mkdocs serve``."""
    return (ROOT / path).stat().st_mtime_ns


def new_lines(path: str) -> frozenset[int]:
    """The 1-based lines of ``path`` that the stage before does not have."""
    before = previous_stage(path)
    if before is None:
        return frozenset()
    return _new_lines(path, before, _stamp(path), _stamp(before))


@cache
def _new_lines(path: str, before: str, *stamps: int) -> frozenset[int]:
    old = [line.rstrip() for line in _source(before)]
    new = [line.rstrip() for line in _source(path)]
    out: set[int] = set()
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, _, _, j1, j2 in matcher.get_opcodes():
        if tag in ("insert", "replace"):
            out.update(range(j1 + 1, j2 + 1))
    return frozenset(out)


def span(path: str, name: str) -> tuple[int, int]:
    """The first and last line (1-based) of definition ``name`` in ``path``.

    Decorators are included, and comment lines right above the definition.

    Raises:
        CodeError: No such definition.
    """
    tree = ast.parse("\n".join(_source(path)), filename=path)
    body: list[ast.stmt] = tree.body
    node: ast.stmt | None = None
    for part in name.split("."):
        node = next(
            (
                n
                for n in body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and n.name == part
            ),
            None,
        )
        if node is None:
            raise CodeError(f"{path} defines no {name}")
        body = node.body  # a method, or a function nested in one (main.data)
    assert node is not None and node.end_lineno is not None
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    lines = _source(path)
    while first > 1 and lines[first - 2].strip().startswith("#"):
        first -= 1
    return first, node.end_lineno


def _dedent(lines: list[str]) -> tuple[list[str], int]:
    indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
    return [x[indent:] for x in lines], indent


def fragment(path: str, name: str) -> str:
    """The fenced block for ``{{ fragment path name }}``."""
    first, last = span(path, name)
    lines, _ = _dedent(_source(path)[first - 1 : last])
    fresh = sorted(n - first + 1 for n in new_lines(path) if first <= n <= last)
    what = f"{name}()" if name[:1].islower() or "." in name else name
    title = f"{path} · {what} · lines {first}–{last}"
    opts = f'title="{title}" linenums="{first}"'
    if fresh:
        opts += f' hl_lines="{" ".join(map(str, fresh))}"'
    return "\n".join([f"``` {{ .python .tutorial-code {opts} }}", *lines, "```"])


def diff(path: str) -> str:
    """The folded diff for ``{{ diff path }}``."""
    before = previous_stage(path)
    if before is None:
        raise CodeError(f"{path} is not a tutorial stage after the first")
    body = difflib.unified_diff(
        _source(before), _source(path), fromfile=before, tofile=path, lineterm="", n=2
    )
    added = len(new_lines(path))
    head = f'??? note "What changed since {Path(before).stem}: {added} new or changed lines"'
    block = ["``` { .diff .tutorial-code }", *body, "```"]
    return "\n".join([head, "", *("    " + x if x else "" for x in block)])


def _client(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=TRACE_DEADLINE) as c:
        for line in (b"hello\n", b"world\n"):
            c.sendall(line)
            got = b""
            while len(got) < len(line):
                chunk = c.recv(1024)
                if not chunk:
                    raise CodeError("the traced stage closed before echoing")
                got += chunk
            time.sleep(0.2)  # one line per turn, as a person types
        c.shutdown(socket.SHUT_WR)
        while c.recv(1024):
            pass
    time.sleep(0.3)  # the stage's last turn: closing the connection


def trace(path: str, *args: str) -> str:
    """What ``path --trace ARGS`` prints while one client says hello and world, then leaves.

    Raises:
        CodeError: The stage did not start, print its address, or stop.
    """
    _source(path)  # a file that is not there is a CodeError, not a crash
    return _trace(path, _stamp(path), *args)


@cache
def _trace(path: str, stamp: int, *args: str) -> str:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / path), "--port", "0", "--trace", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, cwd=ROOT,
    )  # unbuffered: reading the first line must not take the lines after it
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline().decode()
        m = re.search(r"127\.0\.0\.1:(\d+)", banner)
        if not m:
            raise CodeError(f"{path} printed no address: {banner!r}")
        _client(int(m.group(1)))
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=TRACE_DEADLINE)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [banner.rstrip(), *(x for x in out.splitlines() if x.strip())]
    shown = " ".join(["python3", path, "--port", "5000", "--trace", *args])
    return "\n".join(
        ["``` { .text .tutorial-code title=\"" + shown + "\" }", *lines, "```"]
    ).replace("127.0.0.1:" + m.group(1), "127.0.0.1:5000")


def expand(markdown: str, where: str) -> str:
    """Replace every directive in a page's Markdown with its block.

    Raises:
        CodeError: A directive names a file or definition that does not exist.
    """

    def one(m: re.Match[str]) -> str:
        kind, words = m.group(1), shlex.split(m.group(2))
        try:
            if kind == "fragment":
                return fragment(*words)
            if kind == "diff":
                return diff(*words)
            return trace(*words)
        except (CodeError, TypeError) as e:
            raise CodeError(f"{where}: {m.group(0).strip()}: {e}") from e

    return DIRECTIVE_RE.sub(one, markdown)
