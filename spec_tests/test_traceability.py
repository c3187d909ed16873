"""Every spec rule is checked by a test, and every test checks spec rules.

Rules are defined on ``docs/spec/*.md`` as bullets that start with a bold id
(``- **LOOP-3** ...``); tests name them with the ``rule`` marker. Both sides
are read statically by ``tools/ruletrace.py`` (the test files are parsed with
``ast``, not imported), which ``tools/trace_rules.py`` shares to print the
table of rules and tests.

The checks themselves name no rule (this file is exempt from needing to);
the tests at the end, of the pieces the docs site builds from the same
trace, name the DOCS rules they check.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import ruletrace  # noqa: E402


@pytest.fixture(scope="module")
def trace() -> ruletrace.Trace:
    return ruletrace.collect(ROOT)


def trace_table() -> dict[str, list[str]]:
    """Map each rule id defined on a spec page to the tests that name it."""
    return ruletrace.trace_table(ROOT)


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"  - {line}" for line in lines)


def test_every_rule_is_named_by_a_test(trace: ruletrace.Trace) -> None:
    # The summary table shows with the failure, or on a pass with `pytest -rP`.
    print(ruletrace.markdown_table(trace))
    untraced = trace.untraced()
    assert not untraced, (
        f"{len(untraced)} of {len(trace.defined())} spec rules are named by no test "
        "(add @pytest.mark.rule(...) to the tests that check them):\n"
        + _bullets([f"{r.id} ({r.where})" for r in untraced])
    )


def test_every_named_rule_is_defined(trace: ruletrace.Trace) -> None:
    unknown = trace.unknown()
    problems = trace.problems
    assert not unknown and not problems, (
        "rule markers name ids that no spec page defines:\n"
        + _bullets([f"{r.id!r} at {r.where}" for r in unknown])
        + ("\nrule markers that cannot be traced:\n" if problems else "")
        + _bullets([f"{p.where}: {p.message}" for p in problems])
    )


def test_no_rule_is_defined_twice(trace: ruletrace.Trace) -> None:
    duplicates = trace.duplicates()
    assert not duplicates, "rule ids defined more than once:\n" + _bullets(
        [f"{rid}: {', '.join(d.where for d in defs)}" for rid, defs in duplicates.items()]
    )


def test_every_spec_page_defines_rules(trace: ruletrace.Trace) -> None:
    assert trace.pages, "no spec pages found under docs/spec/"
    empty = trace.pages_without_rules()
    assert not empty, (
        "spec pages that define no rule (a rule is a bullet starting with a bold id, "
        "e.g. '- **LOOP-3** ...'):\n" + _bullets(empty)
    )


def test_every_test_names_a_rule(trace: ruletrace.Trace) -> None:
    bare = trace.tests_without_rules()
    assert not bare, (
        f"{len(bare)} tests name no spec rule (mark them @pytest.mark.rule(...), "
        "on the test, its class, or the module's pytestmark):\n"
        + _bullets([f"{t.name} ({t.file}:{t.line})" for t in bare])
    )


# ---------------------------------------------------------------- the site
#
# The same trace feeds the docs site (tools/docs_hooks.py): the pollers each
# test runs on, the generated rules-and-tests page, the anchors on the
# defining bullets and the links on every mention. test_site.py checks the
# built site in a browser; these check the pieces on small inputs.

_POLLER_SOURCE = '''
import pytest

@pytest.fixture
def server(poller):
    return poller

@pytest.fixture
def plain():
    return 1

@pytest.mark.rule("A-1")
def test_fixture(poller): ...

@pytest.mark.rule("A-1")
def test_through_a_fixture(server): ...

@pytest.mark.rule("A-1")
@pytest.mark.parametrize("poller", POLLERS)
def test_every(poller): ...

@pytest.mark.rule("A-1")
@pytest.mark.parametrize("poller", ["poll", "select"])
def test_literal(poller): ...

@pytest.mark.rule("A-1")
def test_keyword(plain):
    serve(poller="epoll")
    serve(poller=SelectPoller())

@pytest.mark.rule("A-1")
def test_default(plain): ...
'''


@pytest.mark.rule("DOCS-2")
def test_the_pollers_each_test_runs_on_are_read_from_the_source() -> None:
    _refs, tests, problems = ruletrace.parse_test_file(_POLLER_SOURCE, "spec_tests/test_x.py")
    assert not problems
    every = (ruletrace.EVERY_POLLER,)
    assert {t.name.split("::")[-1]: t.pollers for t in tests} == {
        "test_fixture": every,
        "test_through_a_fixture": every,
        "test_every": every,
        "test_literal": ("poll", "select"),
        "test_keyword": ("epoll", "select"),
        "test_default": (),
    }


@pytest.mark.rule("DOCS-2")
def test_the_generated_page_has_a_row_per_rule_and_a_line_per_test(
    trace: ruletrace.Trace,
) -> None:
    import docs_hooks

    page = docs_hooks.trace_page(trace, "https://example.invalid/repo")
    rows = [line for line in page.splitlines() if line.startswith("| [")]
    assert len(rows) == len(trace.defined())
    for rid, tests in trace.table().items():
        (row,) = [r for r in rows if r.startswith(f"| [{rid}](")]
        assert f"{{#{rid}}}" in row
        for test in tests:
            assert test.removeprefix("spec_tests/") in row, (rid, test)
    first = next(t for t in trace.tests if t.rules)
    assert f"/blob/main/{first.file}#L{first.line})" in page
    for rid, refs in trace.citations().items():
        (row,) = [r for r in rows if r.startswith(f"| [{rid}](")]
        for ref in refs:
            assert f"[{ref.where}](https://example.invalid/repo/blob/main/{ref.file}#L{ref.line})" \
                in row, (rid, ref)


@pytest.mark.rule("DOCS-1", "DOCS-2")
def test_defining_bullets_get_an_anchor_and_a_tests_link() -> None:
    import docs_hooks

    docs_hooks._state.rule_page = {"ZZ-1": "spec/zz.md", "ZZ-2": "spec/other.md"}
    docs_hooks._state.rule_tests = {"ZZ-1": ["a", "b"], "ZZ-2": []}
    page = "\n".join([
        "- **ZZ-1** does a thing, unlike **ZZ-2**.",
        "- **ZZ-2** is defined elsewhere, so left alone here.",
        "```",
        "- **ZZ-1** inside a fence is an example",
        "```",
    ])
    out = docs_hooks.anchor_rules(page, "spec/zz.md").splitlines()
    assert out[0] == (
        "- [**ZZ-1**](#ZZ-1){#ZZ-1 .rule-id} "
        '[2 tests](traceability.md#ZZ-1){.rule-tests title="tests that check ZZ-1"}'
        " does a thing, unlike **ZZ-2**."
    )
    assert out[1:] == page.splitlines()[1:]


@pytest.mark.rule("DOCS-1", "DOCS-5")
def test_mentions_become_links_outside_code_links_and_headings() -> None:
    import docs_hooks

    docs_hooks._state.rule_url = {"ZZ-1": "spec/zz/", "ZZ-2": "spec/other/"}
    html = (
        "<h2>ZZ-1 in a heading</h2><p>See ZZ-1 and ZZ-2 -- or <code>ZZ-1</code>, "
        '<a href="../other/">ZZ-2</a>, UTF-8, ZZ-1.5 and ZZ-12.</p><pre>a -- b</pre>'
    )
    out = docs_hooks.link_rules(html, "spec/zz/")
    assert out == (
        "<h2>ZZ-1 in a heading</h2><p>See "
        '<a class="rule-ref" href="#ZZ-1">ZZ-1</a> and '
        '<a class="rule-ref" href="../other/#ZZ-2">ZZ-2</a> \u2014 or <code>ZZ-1</code>, '
        '<a class="rule-ref" href="../other/#ZZ-2">ZZ-2</a>, UTF-8, ZZ-1.5 and ZZ-12.</p>'
        "<pre>a -- b</pre>"
    )


# ---------------------------------------------------------------- the code
#
# Code cites the rules it implements (``# LOOP-14: ...``); ruletrace reads the
# ids from the comments and strings of evio/ and examples/.


def test_every_library_contract_rule_is_cited_in_code(trace: ruletrace.Trace) -> None:
    uncited = trace.uncited()
    assert not uncited, (
        f"{len(uncited)} contract rules of the library's pages are cited nowhere in "
        f"{' or '.join(d + '/' for d in ruletrace.CODE_DIRS)} (name the id in a comment "
        "where the rule is implemented, e.g. '# LOOP-14: ...'):\n"
        + _bullets([f"{r.id} ({r.where})" for r in uncited])
    )


def test_every_id_cited_in_code_is_defined(trace: ruletrace.Trace) -> None:
    assert trace.code, "no rule id is cited anywhere in the code"
    unknown = trace.unknown_citations()
    assert not unknown, "code cites rule ids that no spec page defines:\n" + _bullets(
        [f"{r.id!r} at {r.where}" for r in unknown]
    )


_CODE_SOURCE = '''
# LOOP-14: stop reading; LOOP-14 again on the line counts once
def f():
    """Implements ZZ-9 (undefined) and UTF-8 (no such prefix)."""
    return "LOOP-2"  # LOOP-2.5 is a version, /LOOP-3 a path
'''


def test_code_citations_are_read_from_comments_and_strings() -> None:
    refs = ruletrace.parse_code_file(_CODE_SOURCE, "evio/x.py", frozenset({"LOOP", "ZZ"}))
    assert [(r.id, r.line) for r in refs] == [("LOOP-14", 2), ("ZZ-9", 4), ("LOOP-2", 5)]
    trace = ruletrace.Trace(
        rules=[ruletrace.RuleDef("LOOP-14", "docs/spec/loop.md", 1),
               ruletrace.RuleDef("LOOP-15", "docs/spec/loop.md", 2),
               ruletrace.RuleDef("LOOP-16", "docs/spec/loop.md", 3, ruletrace.CHOICE),
               ruletrace.RuleDef("DOCS-1", "docs/spec/site.md", 1)],
        code=refs,
    )
    assert [r.id for r in trace.uncited()] == ["LOOP-15"]
    assert [r.id for r in trace.unknown_citations()] == ["ZZ-9", "LOOP-2"]
    assert [r.where for r in trace.citations()["LOOP-14"]] == ["evio/x.py:2"]


def _evio_modules() -> list[Path]:
    """Every module of the package, in name order."""
    return sorted((ROOT / "evio").glob("*.py"))


def _not_named(text: str, form: str = "`{}`") -> list[str]:
    """The modules ``text`` does not name (each as ``form`` of its file name)."""
    return [p.name for p in _evio_modules() if form.format(p.name) not in text]


def test_contributing_maps_and_orders_every_module() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    table, _, rest = text.partition("## A reading order")
    order = rest.partition("## Adding a rule")[0]
    assert _not_named(table, "| `{}` |") == [], "not in the module map"
    assert _not_named(order) == [], "not in the reading order"


def test_the_tutorials_last_page_reads_every_module_in_order() -> None:
    text = (ROOT / "docs" / "tutorial" / "6-evio.md").read_text(encoding="utf-8")
    order = text.partition("## Reading evio, in order")[2].partition("\n## ")[0]
    assert _not_named(order) == [], "not in the reading order"


def test_every_evio_module_says_what_it_owns() -> None:
    import ast

    missing = []
    for path in _evio_modules():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        paragraphs = doc.split("\n\n")
        # The summary line, then one sentence of what the module owns.
        if len(paragraphs) < 2 or not paragraphs[1].startswith("Owns: "):
            missing.append(path.name)
    assert missing == []
