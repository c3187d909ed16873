"""Every spec rule is checked by a test, and every test checks spec rules.

Rules are defined on ``docs/spec/*.md`` as bullets that start with a bold id
(``- **LOOP-3** ...``); tests name them with the ``rule`` marker. Both sides
are read statically by ``tools/ruletrace.py`` (the test files are parsed with
``ast``, not imported), which ``tools/trace_rules.py`` shares to print the
table of rules and tests.

This file is the check itself: it names no rule and is exempt from needing
to.
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
