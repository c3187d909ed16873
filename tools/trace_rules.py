"""Print the spec rules and how many conformance tests check each.

A Markdown table, one row per rule defined on ``docs/spec/*.md``, with the
number of tests in ``spec_tests/`` whose ``@pytest.mark.rule(...)`` names
it; meant to be pasted into closing notes. The logic is shared with
``spec_tests/test_traceability.py`` through ``tools/ruletrace.py``.

Usage::

    python3 tools/trace_rules.py            # the table
    python3 tools/trace_rules.py --names    # ... with the tests' names
    python3 tools/trace_rules.py --check    # exit 1 if tracing is incomplete
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ruletrace import collect, markdown_table, repo_root


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv``.

    Returns:
        The exit status: 0, or 1 when ``--check`` finds a problem.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--root", type=Path, default=repo_root(), help="repository root (default: %(default)s)"
    )
    parser.add_argument("--names", action="store_true", help="list the tests for each rule")
    parser.add_argument(
        "--check",
        action="store_true",
        help="also list untraced rules, unknown ids and duplicates; exit 1 if there are any",
    )
    args = parser.parse_args(argv)

    trace = collect(args.root)
    print(markdown_table(trace, names=args.names))
    if not args.check:
        return 0

    found: list[str] = []
    found += [f"untraced: {r.id} ({r.where})" for r in trace.untraced()]
    found += [f"unknown: {r.id} ({r.where})" for r in trace.unknown()]
    for rid, defs in trace.duplicates().items():
        found.append(f"defined twice: {rid} ({', '.join(d.where for d in defs)})")
    found += [f"no rules: {page}" for page in trace.pages_without_rules()]
    found += [f"names no rule: {t.name} ({t.file}:{t.line})" for t in trace.tests_without_rules()]
    found += [f"untraceable: {p.where}: {p.message}" for p in trace.problems]
    if found:
        print()
        print("\n".join(f"- {line}" for line in found))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
