"""Rule tracing: tie each numbered spec rule to the tests that check it.

Theory of operation
-------------------
The spec pages under ``docs/spec/`` state the behaviour of evio as numbered
rules. A rule is *defined* by a Markdown bullet that starts with its id in
bold::

    - **LOOP-3** opened fires before any data.

Anywhere else (prose, other pages, comments) an id is only a *reference*
and is written without bold, so the definition of each rule is easy to find
and cannot be confused with a mention of it.

A conformance test names the rules it checks with a pytest marker::

    @pytest.mark.rule("LOOP-3", "LOOP-4")
    def test_opened_before_data(): ...

The marker may sit on a function, on a class (it then covers every test in
the class), in a module-level ``pytestmark``, or inside ``pytest.param(...,
marks=...)``.

We read both sides statically. The test files are parsed with :mod:`ast`,
never imported or run, so tracing works on a tree whose tests do not pass
yet, costs no time, and cannot be fooled by import side effects. The price
is that ids must be written as string literals in the marker call; anything
else is reported as a problem rather than silently skipped. Bullets inside
fenced code blocks are examples, not definitions, and are ignored.

Two decisions:

1. Every ``pytest.mark.rule(...)`` / ``mark.rule(...)`` call anywhere in a
   test file counts as naming its ids (a module-level alias such as
   ``rule = pytest.mark.rule`` is followed too). Attribution to a particular
   test is best effort and only feeds the summary table.
2. The tracing check itself (``test_traceability.py``) names no rule and is
   exempt from the rule that every test must name one.

The third side is the code. Where a rule is implemented, a comment (or a
docstring) names its id -- ``# LOOP-14: stop reading`` -- the way h11 cites
its RFC. We read ``evio/`` and ``examples/`` with :mod:`tokenize` and keep
every id, in a comment or a string, whose prefix is one the spec pages use
(so ``UTF-8`` is not mistaken for a rule). Every contract rule of a library
page (`LIBRARY_PAGES` excludes the site, HTTP, Redis, wire-target and
conformance pages, whose rules are carried out by the examples and tools)
must be cited somewhere there, and every id cited must be defined.

This module is shared by ``spec_tests/test_traceability.py`` (the checks)
and ``tools/trace_rules.py`` (the table for closing notes). It imports
nothing from ``spec_tests``.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CHOICE",
    "CHOICE_TAG",
    "CODE_DIRS",
    "CONTRACT",
    "EVERY_POLLER",
    "EXEMPT_TEST_FILES",
    "NOT_LIBRARY_PAGES",
    "RULE_DEF_RE",
    "RULE_ID_RE",
    "CodeRef",
    "Problem",
    "RuleDef",
    "RuleRef",
    "Trace",
    "TracedTest",
    "collect",
    "markdown_table",
    "parse_code_file",
    "parse_spec_page",
    "parse_test_file",
    "repo_root",
    "trace_table",
]

RULE_DEF_RE = re.compile(r"^\s*[-*]\s+\*\*([A-Z][A-Z0-9]*-\d+)\*\*")
"""A line that defines a rule: a bullet whose text starts with a bold id."""

CHOICE_TAG = "*(choice)*"
"""Written right after a rule's bold id: the rule states this implementation's
choice (Python-specific, or a measured tuning), not the contract every
implementation must show. A rule without it is contract. The conformance
run (``spec_tests/conftest.py``) runs the tests of a choice against this
implementation only."""

CONTRACT, CHOICE = "contract", "choice"
"""The two kinds of rule (`RuleDef.kind`)."""

RULE_ID_RE = re.compile(r"^[A-Z][A-Z0-9]*-\d+$")
"""The shape of a rule id, e.g. ``LOOP-3``."""

EVERY_POLLER = "every"
"""In :attr:`TracedTest.pollers`: the test runs once per poller the machine has."""

EXEMPT_TEST_FILES = frozenset({"test_traceability.py"})
"""Test files that need not name a rule (the tracing check itself)."""

CODE_DIRS = ("evio", "examples")
"""Where rule ids are cited in code (``*.py`` directly under each)."""

NOT_LIBRARY_PAGES = frozenset(
    {"index.md", "site.md", "http.md", "redis.md", "wire-targets.md", "conformance.md"}
)
"""Spec pages whose rules are not the library's: the docs site, the HTTP and
Redis examples, the wire targets and the conformance run. Their rules may be
cited in code but need not be; every contract rule of any other page must."""

_CITED_RE = re.compile(r"(?<![\w/#.-])([A-Z][A-Z0-9]*)-(\d+)(?![\w-]|\.\d)")

_FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})")


def repo_root() -> Path:
    """Return the repository root (the parent of ``tools/``)."""
    return Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class RuleDef:
    """A rule defined on a spec page.

    Attributes:
        id: The rule id, e.g. ``"LOOP-3"``.
        page: The page, relative to the repository root.
        line: 1-based line number of the defining bullet.
        kind: ``"contract"`` (every implementation must show it) or
            ``"choice"`` (this implementation's; tagged `CHOICE_TAG`).
    """

    id: str
    page: str
    line: int
    kind: str = CONTRACT

    @property
    def where(self) -> str:
        """``page:line``."""
        return f"{self.page}:{self.line}"


@dataclass(frozen=True, slots=True)
class RuleRef:
    """One string argument of a ``pytest.mark.rule(...)`` call.

    Attributes:
        id: The string as written (not necessarily a well-formed id).
        file: The test file, relative to the repository root.
        line: 1-based line number of the string.
        owner: The test it is attributed to (``file::Class::test``), or
            ``file:line`` when it cannot be attributed to one.
    """

    id: str
    file: str
    line: int
    owner: str

    @property
    def where(self) -> str:
        """``file:line``."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class TracedTest:
    """A test function (or method) and the rule ids that cover it.

    Attributes:
        name: ``file::test`` or ``file::Class::test``.
        file: The test file, relative to the repository root.
        line: 1-based line of the ``def``.
        rules: Ids named by its own decorators, its enclosing classes and the
            module's ``pytestmark``, in order of appearance, without repeats.
        pollers: The pollers it runs on, as far as the source shows:
            ``(EVERY_POLLER,)`` when it takes the ``poller`` fixture (directly
            or through a fixture that does) or is parametrized over a
            non-literal list of pollers; the names when it is parametrized
            over literal names or passes ``poller="name"``; empty when it
            uses the default poller (or no loop at all).
    """

    name: str
    file: str
    line: int
    rules: tuple[str, ...]
    pollers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CodeRef:
    """A rule id cited in a comment or a string of the code.

    Attributes:
        id: The rule id, e.g. ``"LOOP-14"``.
        file: The source file, relative to the repository root.
        line: 1-based line of the citation.
    """

    id: str
    file: str
    line: int

    @property
    def where(self) -> str:
        """``file:line``."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in a test file that prevents tracing.

    Attributes:
        where: ``file:line``.
        message: What is wrong.
    """

    where: str
    message: str


@dataclass(slots=True)
class Trace:
    """Everything collected from the spec pages and the test files.

    Attributes:
        rules: Every rule definition, in page order then line order
            (duplicates included).
        pages: Every spec page read, relative to the repository root.
        refs: Every rule id named by a marker call.
        tests: Every test function found.
        problems: Marker calls whose arguments are not string literals.
        code: Every rule id cited in `CODE_DIRS`, in file then line order.
    """

    rules: list[RuleDef] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)
    refs: list[RuleRef] = field(default_factory=list)
    tests: list[TracedTest] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    code: list[CodeRef] = field(default_factory=list)

    def defined(self) -> dict[str, RuleDef]:
        """Map each rule id to its first definition."""
        out: dict[str, RuleDef] = {}
        for rule in self.rules:
            out.setdefault(rule.id, rule)
        return out

    def untraced(self) -> list[RuleDef]:
        """Rules that no marker names."""
        named = {ref.id for ref in self.refs}
        return [rule for rule in self.defined().values() if rule.id not in named]

    def unknown(self) -> list[RuleRef]:
        """Marker arguments that no spec page defines."""
        defined = self.defined()
        return [ref for ref in self.refs if ref.id not in defined]

    def citations(self) -> dict[str, list[CodeRef]]:
        """Map every defined rule id to the code lines that cite it."""
        out: dict[str, list[CodeRef]] = {rid: [] for rid in self.defined()}
        for ref in self.code:
            if ref.id in out:
                out[ref.id].append(ref)
        return out

    def uncited(self) -> list[RuleDef]:
        """Contract rules of the library's pages that no code cites."""
        cited = {ref.id for ref in self.code}
        return [
            rule
            for rule in self.defined().values()
            if rule.kind == CONTRACT
            and Path(rule.page).name not in NOT_LIBRARY_PAGES
            and rule.id not in cited
        ]

    def unknown_citations(self) -> list[CodeRef]:
        """Ids cited in code that no spec page defines."""
        defined = self.defined()
        return [ref for ref in self.code if ref.id not in defined]

    def duplicates(self) -> dict[str, list[RuleDef]]:
        """Rule ids defined more than once, with every definition."""
        by_id: dict[str, list[RuleDef]] = {}
        for rule in self.rules:
            by_id.setdefault(rule.id, []).append(rule)
        return {rid: defs for rid, defs in by_id.items() if len(defs) > 1}

    def pages_without_rules(self) -> list[str]:
        """Spec pages, other than ``index.md``, that define no rule."""
        with_rules = {rule.page for rule in self.rules}
        return [
            page for page in self.pages if Path(page).name != "index.md" and page not in with_rules
        ]

    def tests_without_rules(self) -> list[TracedTest]:
        """Tests that name no rule, outside the exempt files."""
        return [
            test
            for test in self.tests
            if not test.rules and Path(test.file).name not in EXEMPT_TEST_FILES
        ]

    def table(self) -> dict[str, list[str]]:
        """Map every defined rule id to the tests that name it.

        A test counts for every id on its own decorators, on its enclosing
        classes and in its module's ``pytestmark``. An id named only where
        no test can be seen (a helper, a class whose tests are inherited) is
        listed under the marker's owner instead, so it still shows.
        """
        out: dict[str, list[str]] = {rid: [] for rid in self.defined()}
        for test in self.tests:
            for rid in test.rules:
                if rid in out:
                    out[rid].append(test.name)
        for ref in self.refs:
            if ref.id in out and not out[ref.id]:
                out[ref.id].append(ref.owner)
        return out


# --------------------------------------------------------------------------
# Spec pages


def parse_spec_page(text: str, page: str) -> list[RuleDef]:
    """Return the rules defined in one spec page's Markdown.

    Args:
        text: The page's Markdown source.
        page: The name to record for it (relative to the repository root).

    Returns:
        One :class:`RuleDef` per defining bullet, in line order. Bullets
        inside fenced code blocks are skipped.
    """
    rules: list[RuleDef] = []
    for i, line in outside_fences(text.splitlines()):
        d = RULE_DEF_RE.match(line)
        if d:
            rest = line[d.end():].lstrip()
            kind = CHOICE if rest.startswith(CHOICE_TAG) else CONTRACT
            rules.append(RuleDef(d.group(1), page, i + 1, kind))
    return rules


def outside_fences(lines: Sequence[str]) -> Iterator[tuple[int, str]]:
    """``(index, line)`` for each Markdown line outside fenced code blocks
    (a fence closes on a marker of the same character, at least as long)."""
    fence: str | None = None
    for i, line in enumerate(lines):
        m = _FENCE_RE.match(line)
        if m:
            marker = m.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
            continue
        if fence is None:
            yield i, line


# --------------------------------------------------------------------------
# Test files


def _is_rule_marker(func: ast.expr, aliases: set[str]) -> bool:
    """True for ``pytest.mark.rule``, ``mark.rule`` or a known alias."""
    if isinstance(func, ast.Name):
        return func.id in aliases
    if not (isinstance(func, ast.Attribute) and func.attr == "rule"):
        return False
    owner = func.value
    if isinstance(owner, ast.Name):
        return owner.id == "mark"
    return (
        isinstance(owner, ast.Attribute)
        and owner.attr == "mark"
        and isinstance(owner.value, ast.Name)
        and owner.value.id == "pytest"
    )


def _aliases(tree: ast.Module) -> set[str]:
    """Module-level names bound to the marker, e.g. ``rule = pytest.mark.rule``."""
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and _is_rule_marker(stmt.value, set()):
            names.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
    return names


def _is_pytestmark(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets)
    if isinstance(stmt, ast.AnnAssign):
        return isinstance(stmt.target, ast.Name) and stmt.target.id == "pytestmark"
    return False


class _Collector:
    """Walks one parsed test file, collecting marker calls and tests."""

    def __init__(
        self, tree: ast.Module, file: str, poller_fixtures: frozenset[str] = frozenset()
    ) -> None:
        self.file = file
        self.poller_fixtures = _poller_fixtures(tree, poller_fixtures)
        self.aliases = _aliases(tree)
        self.refs: list[RuleRef] = []
        self.tests: list[TracedTest] = []
        self.problems: list[Problem] = []
        self._seen: set[int] = set()  # ids of Call nodes already attributed
        self.tree = tree

    def _calls(self, node: ast.AST) -> Iterator[ast.Call]:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and _is_rule_marker(sub.func, self.aliases):
                yield sub

    def _problem(self, node: ast.AST, message: str) -> None:
        self.problems.append(
            Problem(f"{self.file}:{getattr(node, 'lineno', 0)}", f"{message}: {ast.unparse(node)}")
        )

    def _take(self, nodes: Sequence[ast.AST], owner: str) -> list[str]:
        """Record the marker calls under ``nodes`` for ``owner``; return their ids."""
        ids: list[str] = []
        for node in nodes:
            for call in self._calls(node):
                first = id(call) not in self._seen
                self._seen.add(id(call))
                for arg in call.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        ids.append(arg.value)
                        if first:
                            self.refs.append(RuleRef(arg.value, self.file, arg.lineno, owner))
                    elif first:
                        self._problem(arg, "rule marker arguments must be string literals")
                for kw in call.keywords if first else []:
                    self._problem(kw, "rule marker takes rule ids only, no keywords")
        return ids

    def run(self) -> None:
        module_ids = self._take(
            [s for s in self.tree.body if _is_pytestmark(s)], f"{self.file}::<module>"
        )
        self._scope(self.tree.body, prefix=f"{self.file}", inherited=module_ids)
        # Marker calls anywhere else (helpers, parametrize lists, ...) still
        # name their ids; they are attributed to their own location.
        for call in self._calls(self.tree):
            if id(call) not in self._seen:
                self._take([call], f"{self.file}:{call.lineno}")

    def _scope(self, body: list[ast.stmt], prefix: str, inherited: list[str]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.ClassDef):
                name = f"{prefix}::{stmt.name}"
                ids = inherited + self._take(stmt.decorator_list, name)
                ids += self._take([s for s in stmt.body if _is_pytestmark(s)], name)
                self._scope(stmt.body, prefix=name, inherited=ids)
            elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                if not stmt.name.startswith("test"):
                    continue
                name = f"{prefix}::{stmt.name}"
                ids = inherited + self._take(stmt.decorator_list, name)
                self.tests.append(
                    TracedTest(
                        name,
                        self.file,
                        stmt.lineno,
                        tuple(dict.fromkeys(ids)),
                        _pollers(stmt, self.poller_fixtures),
                    )
                )


def _arg_names(func: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    a = func.args
    return {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]}


def _is_fixture(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for dec in func.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "fixture":
            return True
    return False


def _poller_fixtures(tree: ast.Module, known: frozenset[str]) -> frozenset[str]:
    """Names of the fixtures that run once per poller.

    ``known`` holds those from ``conftest.py``; a fixture of this module that
    takes one of them (or ``poller``) joins, until nothing changes.
    """
    found = {"poller", *known}
    fixtures = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _is_fixture(node)
    ]
    changed = True
    while changed:
        changed = False
        for fix in fixtures:
            if fix.name not in found and _arg_names(fix) & found:
                found.add(fix.name)
                changed = True
    return frozenset(found)


def _pollers(
    func: ast.FunctionDef | ast.AsyncFunctionDef, poller_fixtures: frozenset[str]
) -> tuple[str, ...]:
    """What :attr:`TracedTest.pollers` says for one test function."""
    for dec in func.decorator_list:
        if not (
            isinstance(dec, ast.Call)
            and isinstance(dec.func, ast.Attribute)
            and dec.func.attr == "parametrize"
            and len(dec.args) >= 2
            and isinstance(dec.args[0], ast.Constant)
            and isinstance(dec.args[0].value, str)
        ):
            continue
        names = [n.strip() for n in dec.args[0].value.split(",")]
        if "poller" not in names:
            continue
        values = dec.args[1]
        if len(names) == 1 and isinstance(values, ast.List | ast.Tuple):
            literal = [
                v.value
                for v in values.elts
                if isinstance(v, ast.Constant) and isinstance(v.value, str)
            ]
            if len(literal) == len(values.elts):
                return tuple(dict.fromkeys(literal))
        return (EVERY_POLLER,)
    if _arg_names(func) & poller_fixtures:
        return (EVERY_POLLER,)
    named: list[str] = []
    for node in ast.walk(func):
        for kw in node.keywords if isinstance(node, ast.Call) else []:
            value = kw.value
            if kw.arg != "poller":
                continue
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                named.append(value.value)  # poller="select"
            elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
                cls = value.func.id  # poller=SelectPoller()
                if cls.endswith("Poller") and cls != "Poller":
                    named.append(cls.removesuffix("Poller").lower())
    return tuple(dict.fromkeys(named))


def parse_test_file(
    source: str, file: str, poller_fixtures: frozenset[str] = frozenset()
) -> tuple[list[RuleRef], list[TracedTest], list[Problem]]:
    """Collect the rule markers and the tests of one test file.

    Args:
        source: The file's Python source.
        file: The name to record for it (relative to the repository root).
        poller_fixtures: Fixtures from ``conftest.py`` that run once per
            poller (see :attr:`TracedTest.pollers`); ``poller`` always does.

    Returns:
        The rule ids named by marker calls, the test functions found (with
        the ids covering each), and any marker calls that cannot be traced.

    Raises:
        SyntaxError: If the source does not parse.
    """
    collector = _Collector(ast.parse(source, filename=file), file, poller_fixtures)
    collector.run()
    return collector.refs, collector.tests, collector.problems


# --------------------------------------------------------------------------
# Code


def parse_code_file(source: str, file: str, prefixes: frozenset[str]) -> list[CodeRef]:
    """Collect the rule ids one source file cites.

    Args:
        source: The file's Python source.
        file: The name to record for it (relative to the repository root).
        prefixes: The id prefixes the spec pages use (``LOOP``, ``REL``...);
            an id-shaped word with another prefix is not a citation.

    Returns:
        One :class:`CodeRef` per id in a comment or a string (docstrings
        included), in line order; an id written twice on a line counts once.

    Raises:
        SyntaxError: If the source does not tokenize.
    """
    out: list[CodeRef] = []
    seen: set[tuple[str, int]] = set()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except tokenize.TokenError as e:
        raise SyntaxError(f"{file}: {e}") from e
    for tok in tokens:
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            continue
        for lineno, text in enumerate(tok.string.splitlines(), start=tok.start[0]):
            for m in _CITED_RE.finditer(text):
                rid = f"{m.group(1)}-{m.group(2)}"
                if m.group(1) in prefixes and (rid, lineno) not in seen:
                    seen.add((rid, lineno))
                    out.append(CodeRef(rid, file, lineno))
    return out


# --------------------------------------------------------------------------
# The whole tree


def _test_files(tests_dir: Path) -> list[Path]:
    files = {*tests_dir.rglob("test_*.py"), *tests_dir.rglob("*_test.py")}
    return sorted(p for p in files if "__pycache__" not in p.parts)


def collect(root: Path | None = None) -> Trace:
    """Read every spec page and every test file under ``root``.

    Args:
        root: The repository root; defaults to :func:`repo_root`.

    Returns:
        A :class:`Trace` with the rule definitions from ``docs/spec/*.md``,
        the markers and tests from ``spec_tests/`` and the citations in
        `CODE_DIRS`.
    """
    root = repo_root() if root is None else root
    trace = Trace()
    for page in sorted((root / "docs" / "spec").glob("*.md")):
        rel = page.relative_to(root).as_posix()
        trace.pages.append(rel)
        trace.rules += parse_spec_page(page.read_text(encoding="utf-8"), rel)
    conftest = root / "spec_tests" / "conftest.py"
    shared = (
        _poller_fixtures(ast.parse(conftest.read_text(encoding="utf-8")), frozenset())
        if conftest.exists()
        else frozenset()
    )
    for path in _test_files(root / "spec_tests"):
        rel = path.relative_to(root).as_posix()
        refs, tests, problems = parse_test_file(path.read_text(encoding="utf-8"), rel, shared)
        trace.refs += refs
        trace.tests += tests
        trace.problems += problems
    prefixes = frozenset(rule.id.rsplit("-", 1)[0] for rule in trace.rules)
    for folder in CODE_DIRS:
        for path in sorted((root / folder).glob("*.py")):
            rel = path.relative_to(root).as_posix()
            trace.code += parse_code_file(path.read_text(encoding="utf-8"), rel, prefixes)
    return trace


def trace_table(root: Path | None = None) -> dict[str, list[str]]:
    """Map every rule id defined on a spec page to the tests that name it.

    Args:
        root: The repository root; defaults to :func:`repo_root`.

    Returns:
        ``{rule id: ["spec_tests/test_x.py::test_y", ...]}``, in spec order.
        A rule that no test names maps to an empty list.
    """
    return collect(root).table()


def markdown_table(trace: Trace, *, names: bool = False) -> str:
    """Render the rule → tests table as Markdown.

    Args:
        trace: What :func:`collect` returned.
        names: Also list the names of the tests for each rule.

    Returns:
        A Markdown table, one row per rule, then a one-line summary.
    """
    defined = trace.defined()
    table = trace.table()
    header = "| rule | page | tests |" + (" names |" if names else "")
    rule_line = "|---|---|---:|" + ("---|" if names else "")
    lines = [header, rule_line]
    for rid, owners in table.items():
        page = Path(defined[rid].page).name
        row = f"| {rid} | {page} | {len(owners)} |"
        if names:
            row += " " + "<br>".join(owners) + " |"
        lines.append(row)
    traced = sum(1 for owners in table.values() if owners)
    lines.append("")
    lines.append(
        f"{len(table)} rules on {len(trace.pages)} spec pages; "
        f"{traced} traced, {len(table) - traced} untraced; "
        f"{len(trace.tests)} tests."
    )
    return "\n".join(lines)
