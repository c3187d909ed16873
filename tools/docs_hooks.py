"""MkDocs hooks: the build-time machinery that makes the spec traceable on the site.

Theory of operation
-------------------
The spec pages define rules as bullets that start with a bold id
(``- **LOOP-3** ...``, see ``tools/ruletrace.py``); tests name them with
``@pytest.mark.rule(...)``. Writing anchors, links and test lists by hand on
every page would drift the day someone adds a rule, so the site derives them
when it is built, from the same parse the traceability check uses:

1. ``on_files`` collects the trace once (``ruletrace.collect``: spec pages
   and test files read statically, nothing imported or run) and adds a
   generated page, ``spec/traceability.md``, listing every rule with the
   tests that name it and the pollers they run on. It exists only in the
   build; there is no file to edit and none to forget.
2. ``on_page_markdown`` turns each rule's defining bullet into an anchor
   (``#LOOP-3``, a link to itself) followed by a link to its row on the
   generated page ("3 tests").
3. ``on_page_content`` works on the HTML of every page, generated or not
   (the API reference included): each mention of a defined rule id in text
   becomes a link to the rule's anchor, and a spaced ``--`` becomes an em
   dash. Text inside ``code``, ``pre`` (so mermaid source too), links,
   headings, ``script`` and ``style`` is left alone.
4. ``on_config`` puts the package version from ``pyproject.toml`` into the
   footer (``{version}`` in ``copyright``), so the site and the package
   cannot disagree about it.

The trap is that Markdown is not regular: we only ever rewrite the
defining bullets (a line shape ``ruletrace`` already recognises, outside
fenced code) in Markdown, and do everything else on HTML, where code and
links are explicit elements.

``spec_tests/test_site.py`` builds the site and checks all of this the way a
reader sees it, in headless Chromium.
"""

from __future__ import annotations

import html
import posixpath
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from mkdocs.utils import get_relative_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import ruletrace  # noqa: E402

TRACE_PAGE = "spec/traceability.md"
"""Where the generated rules-and-tests page lives in the docs tree."""

RULE_MENTION_RE = re.compile(r"(?<![\w/#.-])([A-Z][A-Z0-9]*-\d+)(?![\w-]|\.\d)")
"""A rule id in running text (not part of a word, a path, a URL or a version)."""

_DASH_RE = re.compile(r"(?<=\s)--(?=\s)")
_TAG_RE = re.compile(r"(<!--.*?-->|<[^>]*>)", re.DOTALL)
_TAG_NAME_RE = re.compile(r"<\s*(/?)\s*([a-zA-Z][a-zA-Z0-9]*)")
_SKIP_TAGS = frozenset(
    {"a", "code", "pre", "kbd", "samp", "script", "style", "textarea", "svg", "title"}
    | {f"h{n}" for n in range(1, 7)}
)


@dataclass(slots=True)
class _State:
    """What one build learns in ``on_files`` and uses on every page."""

    trace: ruletrace.Trace = field(default_factory=ruletrace.Trace)
    rule_page: dict[str, str] = field(default_factory=dict)  # id -> docs src_uri
    rule_tests: dict[str, list[str]] = field(default_factory=dict)
    rule_url: dict[str, str] = field(default_factory=dict)  # id -> page url


_state = _State()


# --------------------------------------------------------------------------
# on_config: the version


def package_version() -> str:
    """The version: ``evio.__version__``, its one source (pyproject reads it too)."""
    text = (ROOT / "evio" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert m is not None, "evio/__init__.py sets no __version__"
    return m.group(1)


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    if config.copyright:
        config.copyright = config.copyright.replace("{version}", package_version())
    return config


# --------------------------------------------------------------------------
# on_files: the generated page


def _src_uri(page: str) -> str:
    """``docs/spec/loop.md`` -> ``spec/loop.md``."""
    return page.removeprefix("docs/")


def _title(page: str) -> str:
    """The first level-1 heading of a spec page, or its file name."""
    for line in (ROOT / page).read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return Path(page).stem


def _pollers_text(pollers: tuple[str, ...]) -> str:
    if pollers == (ruletrace.EVERY_POLLER,):
        return "every poller"
    if not pollers:
        return "default poller"
    return ", ".join(pollers)


def _nav_order(nav: Any) -> list[str]:
    """The docs files named in ``nav`` (mkdocs.yml), in reading order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [src for value in nav.values() for src in _nav_order(value)]
    if isinstance(nav, list):
        return [src for item in nav for src in _nav_order(item)]
    return []


def trace_page(
    trace: ruletrace.Trace,
    repo_url: str | None,
    branch: str = "main",
    order: Sequence[str] = (),
) -> str:
    """The Markdown of the rules-and-tests page.

    Args:
        trace: What ``ruletrace.collect`` returned.
        repo_url: Where the sources are browsed (tests link to their line
            there), or ``None`` for no links.
        branch: The branch the links point into.
        order: Docs files in reading order; spec pages follow it (those it
            does not name come last, by name).

    Returns:
        One section per spec page, one table row per rule, each test with the
        pollers it runs on.
    """
    defined = trace.defined()
    table = trace.table()
    by_name = {t.name: t for t in trace.tests}
    traced = sum(1 for owners in table.values() if owners)
    here = posixpath.dirname(TRACE_PAGE)
    out = [
        "# Rules and tests",
        "",
        "This page is generated each time the site is built, by `tools/ruletrace.py`",
        "reading the spec pages and the `@pytest.mark.rule(...)` markers in",
        "`spec_tests/`; nobody writes it by hand. "
        f"**{len(table)} rules** on {len(trace.pages)} spec pages, "
        f"**{len(trace.tests)} tests**; {traced} rules are checked by at least one test"
        f" and {len(table) - traced} by none.",
        "",
        "*Every poller* means the test runs once for each poller the machine",
        "offers (epoll, kqueue, poll, select: whichever exist there); *default",
        "poller* means it runs on the one `serve()` picks, or needs no loop.",
        "`python3 tools/trace_rules.py --names` prints the same table in a terminal.",
        "",
    ]
    rank = {src: i for i, src in enumerate(order)}
    pages = sorted(
        dict.fromkeys(r.page for r in defined.values()),
        key=lambda page: (rank.get(_src_uri(page), len(rank)), page),
    )
    for page in pages:
        link = posixpath.relpath(_src_uri(page), here)
        out += [f"## {_title(page)}", "", f"Rules defined on [{_title(page)}]({link}).", ""]
        out += ["| rule | tests, and the pollers each runs on |", "| --- | --- |"]
        for rid, rule in defined.items():
            if rule.page != page:
                continue
            tests = []
            for owner in table[rid]:
                shown = f"`{owner.removeprefix('spec_tests/')}`"
                test = by_name.get(owner)
                if test is None:  # a marker no test can be seen under
                    tests.append(shown)
                    continue
                if repo_url:
                    url = f"{repo_url.rstrip('/')}/blob/{branch}/{test.file}#L{test.line}"
                    shown = f"[{shown}]({url})"
                tests.append(f"{shown} ({_pollers_text(test.pollers)})")
            cell = "<br>".join(tests) if tests else "**no test**"
            out.append(f"| [{rid}]({link}#{rid}){{#{rid}}} | {cell} |")
        out.append("")
    return "\n".join(out)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    trace = ruletrace.collect(ROOT)
    _state.trace = trace
    _state.rule_page = {rid: _src_uri(r.page) for rid, r in trace.defined().items()}
    _state.rule_tests = trace.table()
    files.append(
        File.generated(
            config,
            TRACE_PAGE,
            content=trace_page(trace, config.repo_url, order=_nav_order(config.nav)),
        )
    )
    _state.rule_url = {}
    for rid, src in _state.rule_page.items():
        f = files.get_file_from_path(src)
        if f is not None:
            _state.rule_url[rid] = f.url
    return files


# --------------------------------------------------------------------------
# on_page_markdown: anchors on the defining bullets


def anchor_rules(markdown: str, src_uri: str) -> str:
    """Give each rule defined on this page an anchor and a link to its tests.

    ``- **LOOP-3** text`` becomes ``- [**LOOP-3**](#LOOP-3){#LOOP-3 .rule-id}
    [3 tests](traceability.md#LOOP-3){.rule-tests} text``. Bullets inside
    fenced code and ids defined on another page are left as they are.
    """
    trace_link = posixpath.relpath(TRACE_PAGE, posixpath.dirname(src_uri) or ".")
    lines = markdown.split("\n")
    for i, line in ruletrace.outside_fences(lines):
        d = ruletrace.RULE_DEF_RE.match(line)
        if not d or _state.rule_page.get(d.group(1)) != src_uri:
            continue
        rid = d.group(1)
        n = len(_state.rule_tests.get(rid, []))
        tests = f"{n} test{'s' if n != 1 else ''}" if n else "no test"
        new = (
            f"[**{rid}**](#{rid}){{#{rid} .rule-id}} "
            f'[{tests}]({trace_link}#{rid}){{.rule-tests title="tests that check {rid}"}}'
        )
        start, end = d.span(1)
        lines[i] = line[: start - 2] + new + line[end + 2 :]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri in _state.rule_page.values():
        # A page that defines rules ranks first when a rule id is searched
        # for (the home page and the guides mention a few as examples).
        page.meta.setdefault("search", {}).setdefault("boost", 2)
    return anchor_rules(markdown, page.file.src_uri)


# --------------------------------------------------------------------------
# on_page_content: links to rules, dashes


def link_text(text: str, page_url: str) -> str:
    """Link each defined rule id in one run of HTML text; turn `` -- `` into a dash."""

    def link(m: re.Match[str]) -> str:
        rid = m.group(1)
        target = _state.rule_url.get(rid)
        if target is None:
            return rid
        href = f"#{rid}" if target == page_url else f"{get_relative_url(target, page_url)}#{rid}"
        return f'<a class="rule-ref" href="{html.escape(href)}">{rid}</a>'

    return _DASH_RE.sub("\u2014", RULE_MENTION_RE.sub(link, text))


_ID_LINK_RE = re.compile(r'<a href="[^"#]*">([A-Z][A-Z0-9]*-\d+)</a>')


def _retarget(content: str, page_url: str) -> str:
    """A link whose text is a rule id but that points at a page, not the rule, gets the anchor."""

    def fix(m: re.Match[str]) -> str:
        rid = m.group(1)
        return m.group(0) if rid not in _state.rule_url else link_text(rid, page_url)

    return _ID_LINK_RE.sub(fix, content)


def link_rules(content: str, page_url: str) -> str:
    """Apply :func:`link_text` to the text of ``content`` outside code, links and headings."""
    content = _retarget(content, page_url)
    depth: dict[str, int] = {}
    out: list[str] = []
    for part in _TAG_RE.split(content):
        if not part:
            continue
        if part.startswith("<"):
            out.append(part)
            m = _TAG_NAME_RE.match(part)
            if m and m.group(2).lower() in _SKIP_TAGS and not part.endswith("/>"):
                name = m.group(2).lower()
                depth[name] = depth.get(name, 0) + (-1 if m.group(1) else 1)
            continue
        if any(v > 0 for v in depth.values()):
            out.append(part)
        else:
            out.append(link_text(part, page_url))
    return "".join(out)


def on_page_content(html_: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return link_rules(html_, page.url)


# --------------------------------------------------------------------------
# Search: keep LOOP-3 whole in queries too
#
# Material splits indexed text with the `separator` set in mkdocs.yml, which
# keeps rule ids whole, but lunr's query lexer keeps the separator it was
# loaded with (whitespace and "-"), so the query "LOOP-3" became "LOOP" and
# "3". Material's worker script has a hashed name; each page is pointed at a
# small worker of ours that loads it and makes the lexer split queries at
# whitespace only (Material then splits each term with our separator).

_WORKER_RE = re.compile(r'("search":\s*"[^"]*/workers/)(search\.[0-9a-f]+\.min\.js)(")')
_WORKER = "evio-search.js"
_worker_name: list[str] = []


_MERMAID_TAG_RE = re.compile(r'\s*<script src="[^"]*assets/javascripts/mermaid\.min\.js"></script>')


def on_post_page(output: str, page: Page, config: MkDocsConfig) -> str:
    def swap(m: re.Match[str]) -> str:
        if not _worker_name:
            _worker_name.append(m.group(2))
        return m.group(1) + _WORKER + m.group(3)

    output = _WORKER_RE.sub(swap, output)
    if 'class="mermaid"' not in output:
        # 3.5 MB of diagram library only where there is a diagram to draw.
        output = _MERMAID_TAG_RE.sub("", output)
    return output


def on_post_build(config: MkDocsConfig) -> None:
    if not _worker_name:
        return
    workers = Path(config.site_dir) / "assets" / "javascripts" / "workers"
    (workers / _WORKER).write_text(
        "// Material's search worker, with queries split at whitespace only\n"
        "// (tools/docs_hooks.py explains why).\n"
        f'importScripts("{_worker_name[0]}");\n'
        "self.lunr.QueryLexer.termSeparator = /\\s+/;\n",
        encoding="utf-8",
    )


def on_page_context(context: Any, page: Page, config: MkDocsConfig, nav: Any) -> Any:
    if page.file.src_uri == TRACE_PAGE:
        page.edit_url = None  # generated: there is no file to edit
    return context
