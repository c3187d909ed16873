"""MkDocs hooks: the conformance results of every target, on the site.

Theory of operation
-------------------
A conformance run (``spec_tests/conftest.py``) writes one file per target,
``conformance/results/NAME.json``: a verdict for every rule (pass, fail,
xfail, partial "k of n", not-applicable, skip, not-run), with the run's
command, pollers and families. Those files are committed; nobody edits the
pages that show them. When the site is built,

1. ``on_files`` reads every results file and adds generated pages:
   ``conformance/results.md`` (a summary with one column per target and,
   per spec page, a table with one row per rule: its kind, then each
   target's verdict -- the layout of test262.fyi) and one page per target,
   ``conformance/targets/NAME.md``, listing what it fails, what it is
   expected to fail and what does not apply, with the command that
   reproduces the run;
2. ``on_page_markdown`` marks each rule on the spec pages with its kind,
   *contract* or *choice* (``tools/ruletrace.py`` reads the tag), linked to
   the rule's row of results, and adds that link to each row of the
   generated rules-and-tests page.

It runs after ``tools/docs_hooks.py`` (mkdocs.yml lists it second), whose
``on_page_content`` then turns every rule id on these pages into a link to
the rule, as everywhere else. This module owns the results pages only.
"""

from __future__ import annotations

import json
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import ruletrace  # noqa: E402

RESULTS_DIR = ROOT / "conformance" / "results"
RESULTS_PAGE = "conformance/results.md"
TARGET_PAGE = "conformance/targets/{name}.md"
TRACE_PAGE = "spec/traceability.md"

REFERENCE = "evio"
"""The reference target's name: its column comes first."""

SHORT = {"pass": "pass", "fail": "fail", "xfail": "xfail", "partial": "part",
         "not-applicable": "n/a", "skip": "skip", "not-run": "–"}
"""How a verdict is written in a table cell (partial adds "k/n")."""


@dataclass
class Target:
    """One target's committed results."""

    name: str
    doc: dict[str, Any]

    @property
    def rules(self) -> dict[str, dict[str, Any]]:
        return dict(self.doc.get("rules", {}))


def load_targets(directory: Path = RESULTS_DIR) -> list[Target]:
    """Every committed results file, the reference first, then by name."""
    out = []
    for path in sorted(directory.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out.append(Target(str(doc.get("target", path.stem)), doc))
    out.sort(key=lambda t: (t.name != REFERENCE, t.name))
    return out


def _title(page: str) -> str:
    for line in (ROOT / page).read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return Path(page).stem


def cell(v: dict[str, Any] | None) -> str:
    """A verdict as a short table cell."""
    if v is None:
        return "–"
    status = str(v.get("status", "not-run"))
    text = SHORT.get(status, status)
    if status == "partial":
        text = f"{v.get('passed', 0)}/{v.get('passed', 0) + v.get('failed', 0)}"
    return f'<span class="cf cf-{status}">{text}</span>'


def _pages(trace: ruletrace.Trace) -> list[str]:
    return list(dict.fromkeys(r.page for r in trace.defined().values()))


def results_page(trace: ruletrace.Trace, targets: list[Target]) -> str:
    """The Markdown of the results page: a summary, then a table per spec page."""
    defined = trace.defined()
    here = posixpath.dirname(RESULTS_PAGE)
    out = [
        "# Conformance results",
        "",
        "Each column is one target run through the conformance suite; each row is",
        "one rule of the spec, counted once however many parametrised cases check",
        "it. *pass*: every applicable case passed; *fail*: none did; *k/n*: k of",
        "n did; *xfail*: it fails as its manifest says it does; *n/a*: it needs a",
        "feature the target does not have, or is this implementation's *choice*;",
        "*--*: not in that target's run. This page is generated from the committed",
        "files in `conformance/results/` when the site is built; each target's page",
        "says what it fails and why, and the command that reproduces the run.",
        "[Run the suite against your implementation](run.md) says how to add a column.",
        "",
    ]
    links = [f"[{t.name}]({posixpath.relpath(TARGET_PAGE.format(name=t.name), here)})"
             for t in targets]
    pages = _pages(trace)
    if not targets:
        out += ["No results are committed yet.", ""]
    else:
        out += _summary(defined, pages, targets, links)
    for page in pages:
        link = posixpath.relpath(page.removeprefix("docs/"), here)
        out += [f"## {_title(page)} {{#{Path(page).stem}}}", "",
                f"Rules defined on [{_title(page)}]({link}).", "",
                "| rule | kind |" + "".join(f" {link_} |" for link_ in links),
                "| --- | --- |" + "".join(" --- |" for _ in targets)]
        for rid, r in defined.items():
            if r.page != page:
                continue
            cells = "".join(f" {cell(t.rules.get(rid))} |" for t in targets)
            out.append(f"| [{rid}]({link}#{rid}){{#{rid}}} | {r.kind} |{cells}")
        out.append("")
    return "\n".join(out)


def _summary(defined: dict[str, ruletrace.RuleDef], pages: list[str], targets: list[Target],
             links: list[str]) -> list[str]:
    """The summary table: rules passed of those that apply, per page and target."""
    out = ["## Summary", "",
           "Rules passed of the rules that apply to each target, by spec page.", "",
           "| spec page | rules | " + " | ".join(links) + " |",
           "| --- | --- | " + " | ".join("---" for _ in targets) + " |"]
    totals = {t.name: [0, 0] for t in targets}
    for page in pages:
        rids = [rid for rid, r in defined.items() if r.page == page]
        row = []
        for t in targets:
            verdicts = [t.rules.get(rid) for rid in rids]
            applicable = [v for v in verdicts if v and v["status"] not in (
                "not-applicable", "not-run", "skip")]
            passed = sum(1 for v in applicable if v["status"] == "pass")
            totals[t.name][0] += passed
            totals[t.name][1] += len(applicable)
            row.append(f"{passed}/{len(applicable)}" if applicable else "n/a")
        out.append(f"| [{_title(page)}](#{Path(page).stem}) | {len(rids)} | "
                   + " | ".join(row) + " |")
    out.append(f"| **all** | **{len(defined)}** | " + " | ".join(
        f"**{p}/{n}**" for p, n in totals.values()) + " |")
    out.append("")
    return out


def target_page(trace: ruletrace.Trace, t: Target) -> str:
    """The Markdown of one target's page: what it fails, and why."""
    defined = trace.defined()
    here = posixpath.dirname(TARGET_PAGE.format(name=t.name))
    results = posixpath.relpath(RESULTS_PAGE, here)
    d = t.doc
    totals = d.get("totals", {})
    out = [f"# Conformance: {t.name}", ""]
    if d.get("description"):
        out += [str(d["description"]), ""]
    facts = [f"kind: `{d.get('kind', 'api')}`"]
    if d.get("impl"):
        facts.append(f"package: `{d['impl']}`")
    if d.get("manifest"):
        facts.append(f"manifest: `{d['manifest']}`")
    for key in ("source", "built"):
        if d.get(key):
            facts.append(f"{key}: {d[key]}")
    facts.append(f"pollers: {', '.join(d.get('pollers', [])) or 'none'}")
    facts.append(f"families: {', '.join(d.get('families', [])) or 'none'}")
    facts.append(f"Python {d.get('python', '?')} on {d.get('platform', '?')}")
    out += ["- " + f for f in facts] + [""]
    out += ["The run that produced these results:", "", "```sh",
            str(d.get("command", "")), "```", ""]
    out += ["| verdict | rules |", "| --- | --- |"]
    out += [f"| {cell({'status': s, 'passed': 0, 'failed': 0})} | {n} |"
            for s, n in totals.items() if n]
    out.append("")

    def section(title: str, statuses: tuple[str, ...], note: str) -> None:
        rows = [(rid, v) for rid, v in t.rules.items() if v.get("status") in statuses]
        out.extend([f"## {title}", "", note, ""])
        if not rows:
            out.extend(["None.", ""])
            return
        for rid, v in sorted(rows, key=lambda rv: _order(defined, rv[0])):
            reason = f": {v['reason']}" if v.get("reason") else ""
            out.append(f"- [{rid}]({results}#{rid}) ({SHORT.get(v['status'], v['status'])}"
                       f"{reason})")
            for nodeid in v.get("failures", [])[:8]:
                out.append(f"    - `{nodeid}`")
            if len(v.get("failures", [])) > 8:
                out.append(f"    - and {len(v['failures']) - 8} more")
        out.append("")

    section("Fails", ("fail", "partial"),
            "Rules with a failing case (the cases listed; rerun one with "
            "`python -m pytest 'ID'` plus the options above).")
    section("Expected to fail", ("xfail",),
            "Rules whose failures the target's manifest declares, with its reason.")
    section("Skipped", ("skip",), "Rules the manifest skips, with its reason.")
    na = [(rid, v) for rid, v in t.rules.items() if v.get("status") == "not-applicable"]
    by_reason: dict[str, list[str]] = {}
    for rid, v in na:
        by_reason.setdefault(str(v.get("reason") or "no reason given"), []).append(rid)
    out += ["## Not applicable", "",
            "Rules none of whose tests apply to this target, grouped by why.", ""]
    if not by_reason:
        out += ["None.", ""]
    for reason, rids in sorted(by_reason.items()):
        shown = ", ".join(f"[{rid}]({results}#{rid})" for rid in
                          sorted(rids, key=lambda rid: _order(defined, rid)))
        out.append(f"- {reason}: {shown}")
    out.append("")
    return "\n".join(out)


def _order(defined: dict[str, ruletrace.RuleDef], rid: str) -> tuple[int, str]:
    keys = list(defined)
    return (keys.index(rid) if rid in keys else len(keys), rid)


class _State:
    trace: ruletrace.Trace | None = None


_state = _State()


def on_files(files: Files, config: MkDocsConfig) -> Files:
    trace = ruletrace.collect(ROOT)
    _state.trace = trace
    targets = load_targets()
    files.append(File.generated(config, RESULTS_PAGE, content=results_page(trace, targets)))
    for t in targets:
        files.append(File.generated(config, TARGET_PAGE.format(name=t.name),
                                    content=target_page(trace, t)))
    return files


_KIND_RE = re.compile(r"^\s*" + re.escape(ruletrace.CHOICE_TAG))


def mark_kinds(markdown: str, src_uri: str, trace: ruletrace.Trace) -> str:
    """After each rule's id (and tests link) on a spec page, its kind,
    linked to its row of results; the source's ``*(choice)*`` tag goes."""
    defined = trace.defined()
    results = posixpath.relpath(RESULTS_PAGE, posixpath.dirname(src_uri) or ".")
    lines = markdown.split("\n")
    for i, line in ruletrace.outside_fences(lines):
        m = re.match(r"^(\s*[-*]\s+\[\*\*([A-Z][A-Z0-9]*-\d+)\*\*\]\([^)]*\)\{[^}]*\}"
                     r"(?:\s+\[[^\]]*\]\([^)]*\)\{[^}]*\})?)(.*)$", line)
        if not m or m.group(2) not in defined:
            continue
        rid = m.group(2)
        if "docs/" + src_uri != defined[rid].page:
            continue
        kind = defined[rid].kind
        badge = (f'[{kind}]({results}#{rid}){{.rule-kind .rule-{kind} '
                 f'title="{rid} is {kind}: its conformance results"}}')
        lines[i] = f"{m.group(1)} {badge}" + _KIND_RE.sub("", m.group(3), count=1)
    return "\n".join(lines)


def link_trace_rows(markdown: str) -> str:
    """On the rules-and-tests page, each rule's row links to its results row."""
    results = posixpath.relpath(RESULTS_PAGE, posixpath.dirname(TRACE_PAGE))

    def add(m: re.Match[str]) -> str:
        rid = m.group(2)
        return f"{m.group(1)} [results]({results}#{rid}){{.rule-results}} |"

    return re.sub(r"^(\| \[([A-Z][A-Z0-9]*-\d+)\]\([^)]*\)\{#[^}]*\}) \|", add, markdown,
                  flags=re.M)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if _state.trace is None:
        return markdown
    if page.file.src_uri == TRACE_PAGE:
        return link_trace_rows(markdown)
    if page.file.src_uri.startswith("spec/"):
        return mark_kinds(markdown, page.file.src_uri, _state.trace)
    return markdown


def source_of(src_uri: str) -> str | None:
    """What to edit to change a generated page: the hook that writes the
    results page, the manifest of a target's page."""
    if src_uri == RESULTS_PAGE:
        return "tools/conformance_hooks.py"
    m = re.fullmatch(r"conformance/targets/([^/]+)\.md", src_uri)
    if m:
        manifest = f"conformance/targets/{m.group(1)}/manifest.toml"
        return manifest if (ROOT / manifest).is_file() else f"conformance/results/{m.group(1)}.json"
    return None


def on_page_context(context: Any, page: Page, config: MkDocsConfig, nav: Any) -> Any:
    source = source_of(page.file.src_uri)
    if source is not None and config.repo_url:
        # Generated: the edit link leads to what the page is made from.
        page.edit_url = f"{config.repo_url.rstrip('/')}/edit/main/{source}"
    return context
