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
4. ``on_config`` takes ``site_url``, ``repo_url`` and ``repo_name`` from
   ``[project.urls]`` in ``pyproject.toml`` and puts what the pages
   document in the footer (``{release}`` in ``copyright``: the main
   branch, unreleased, while the changelog says so), so the site and the
   package cannot disagree about either.
5. ``on_page_markdown`` also fills in ``{{ evio.NAME }}`` placeholders with
   facts read from the code and the test markers (``tools/docs_facts.py``):
   counts and lists that describe the code are never written by hand; and
   it expands ``{{ fragment ... }}``, ``{{ diff ... }}`` and ``{{ trace
   ... }}`` lines into code cut from the tested files
   (``tools/docs_code.py``): code on a page is never copied by hand.
6. ``on_post_build`` adds one search entry per rule and a search worker
   that answers an exact rule id with the rule itself (see "Search" below);
   ``on_page_content`` also marks where code in a table cell may break.

The trap is that Markdown is not regular: we only ever rewrite the
defining bullets (a line shape ``ruletrace`` already recognises, outside
fenced code) in Markdown, and do everything else on HTML, where code and
links are explicit elements.

``spec_tests/test_site.py`` builds the site and checks all of this the way a
reader sees it, in headless Chromium.
"""

from __future__ import annotations

import html
import json
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

import docs_code  # noqa: E402
import docs_facts  # noqa: E402
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
# on_config: the addresses and the version label


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    urls = docs_facts.project_urls()
    config.site_url = urls["Documentation"]
    config.repo_url = urls["Repository"]
    config.repo_name = "/".join(urls["Repository"].rstrip("/").split("/")[-2:])
    if config.copyright:
        config.copyright = config.copyright.replace("{release}", docs_facts.release_label())
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


def rule_text(rule: ruletrace.RuleDef, link: str = "") -> str:
    """The first paragraph of a rule's bullet, on one line, without its id.

    For a table cell: nested blocks (a table inside the rule) are left on
    the spec page, and ``|`` is escaped; a link to an anchor of its own
    page is pointed at ``link`` (that page, from where the text is shown).
    """
    lines = (ROOT / rule.page).read_text(encoding="utf-8").splitlines()[rule.line - 1 :]
    first = re.sub(r"^\s*[-*]\s+\*\*[A-Z][A-Z0-9]*-\d+\*\*\s*", "", lines[0])
    words = [first.strip()]
    for line in lines[1:]:
        if not line.strip() or not line.startswith("  ") or line.lstrip().startswith(("- ", "|")):
            break
        words.append(line.strip())
    return " ".join(words).replace("|", "\\|").replace("](#", f"]({link}#")


def _code_link(ref: ruletrace.CodeRef, repo_url: str | None, branch: str) -> str:
    """``streams.py:249``, linked to that line in the repository when there is one."""
    shown = f"{ref.file}:{ref.line}"
    if not repo_url:
        return shown
    return f"[{shown}]({repo_url.rstrip('/')}/blob/{branch}/{ref.file}#L{ref.line})"


def trace_page(
    trace: ruletrace.Trace,
    repo_url: str | None,
    branch: str = "main",
    order: Sequence[str] = (),
) -> str:
    """The Markdown of the rules-and-tests page.

    Args:
        trace: What ``ruletrace.collect`` returned.
        repo_url: Where the sources are browsed (tests and the code lines
            that cite a rule link to their line there), or ``None`` for no
            links.
        branch: The branch the links point into.
        order: Docs files in reading order; spec pages follow it (those it
            does not name come last, by name).

    Returns:
        One section per spec page, one table row per rule, each test with the
        pollers it runs on, and the code lines that cite the rule.
    """
    defined = trace.defined()
    table = trace.table()
    cited = trace.citations()
    by_name = {t.name: t for t in trace.tests}
    traced = sum(1 for owners in table.values() if owners)
    here = posixpath.dirname(TRACE_PAGE)
    out = [
        "# Rules and tests",
        "",
        "This page is generated each time the site is built, by `tools/ruletrace.py`",
        "reading the spec pages and the `@pytest.mark.rule(...)` markers in",
        "`spec_tests/` and the rule ids cited in the comments of `evio/` and",
        "`examples/`; nobody writes it by hand. "
        f"**{len(table)} rules** on {len(trace.pages)} spec pages, "
        f"**{len(trace.tests)} tests**; {traced} rules are checked by at least one test"
        f" and {len(table) - traced} by none.",
        "",
        "*Every poller* means the test runs once for each poller the machine",
        "offers (epoll, kqueue, poll, select: whichever exist there); *default",
        "poller* means it runs on the one `serve()` picks, or needs no loop.",
        "The code column links to the lines that cite each rule: where it is",
        "implemented.",
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
        out += [
            "| rule, and what it says | tests, and the pollers each runs on | code |",
            "| --- | --- | --- |",
        ]
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
            code = "<br>".join(_code_link(ref, repo_url, branch) for ref in cited[rid]) or "none"
            said = rule_text(rule, link)
            out.append(f"| [{rid}]({link}#{rid}){{#{rid}}}<br>{said} | {cell} | {code} |")
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
    markdown = docs_code.expand(markdown, page.file.src_uri)
    markdown = docs_facts.fill(markdown, page.file.src_uri)
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


_CELL_RE = re.compile(r"<td\b[^>]*>.*?</td>", re.DOTALL)
_CELL_CODE_RE = re.compile(r"<code>([^<]+)</code>")


def break_points(content: str) -> str:
    """In table cells, let code break only between tokens: after ``/`` and ``::``.

    A test's name (after ``::``) may also break between its words, after an
    ``_``: the rules-and-tests page lists names of up to 70 characters.

    Each piece between those points (and spaces) is a ``span.tok`` that the
    stylesheet keeps on one line (``docs/assets/stylesheets/extra.css``), so
    a path or a test name wraps at these points or not at all.
    """

    def pieces(word: str) -> list[str]:
        head, sep, name = word.partition("::")
        parts = re.split(r"(?<=/)(?=[^/])", head)
        if sep:
            parts[-1] += sep
            parts += re.split(r"(?<=_)", name)
        return [p for p in parts if p]

    def code(m: re.Match[str]) -> str:
        out = []
        # A "|" in a table cell's code had to be written "\|" in Markdown,
        # and the tables extension leaves the backslash in code.
        for word in re.split(r"(\s+)", m.group(1).replace("\\|", "|")):
            if not word or word.isspace():
                out.append(word)
                continue
            out.append("<wbr>".join(f'<span class="tok">{p}</span>' for p in pieces(word)))
        return f"<code>{''.join(out)}</code>"

    return _CELL_RE.sub(lambda cell: _CELL_CODE_RE.sub(code, cell.group(0)), content)


def on_page_content(html_: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return break_points(link_rules(html_, page.url))


# --------------------------------------------------------------------------
# Search: an exact rule id lands on the rule
#
# Material splits indexed text with the `separator` set in mkdocs.yml, which
# keeps rule ids whole, but three things still went wrong for a reader who
# typed "LOOP-2": lunr's query lexer split the query at "-" (so it searched
# "LOOP" and "2"); Material appends a wildcard to every term (so LOOP-2
# matched LOOP-22 to LOOP-24, and pages that only mention those); and its
# results open a page or a section, never the rule. Its highlighter also
# splits the query at "-" and marked every "loop" and every "2" on the page.
#
# So the index gets one entry per rule (location `spec/loop/#LOOP-2`, the
# rule's own text), and each page is pointed at a small worker of ours
# (Material's worker script has a hashed name) that loads Material's, makes
# the lexer split queries at whitespace only, and answers a query that is
# exactly a rule id itself: first the rule (its page, scrolled to it), then
# only the sections that contain the id whole, each highlighted at the id,
# with links that carry `?rule=ID` instead of Material's `h`, which
# `docs/assets/javascripts/rule-mark.js` uses to mark the id, whole, on the
# page it opens.

_WORKER_RE = re.compile(r'("search":\s*"[^"]*/workers/)(search\.[0-9a-f]+\.min\.js)(")')
_WORKER = "evio-search.js"
_worker_name: list[str] = []
_RULE_ITEM_RE = re.compile(
    r"<li>\s*(?:<p>)?([A-Z][A-Z0-9]*-\d+) (?:\d+ tests?|no test) (.*?)</li>", re.DOTALL
)

WORKER_JS = r"""// Material's search worker, with rule ids searched whole (tools/docs_hooks.py
// says why). Loaded in place of Material's worker by every page.
const SETUP = 0, QUERY = 2, RESULT = 3;
const ID = /^\s*([A-Za-z][A-Za-z0-9]*-\d+)\s*$/;
let rules = new Map();   // "LOOP-2" -> its entry in the index
let docs = new Map();    // location -> entry, as indexed (unhighlighted)
const queries = [];      // the queries Material's handler has yet to answer

const whole = (id) => new RegExp(
  "(?<![\\w/#.-])(" + id.replace("-", "\\-") + ")(?![\\w-]|\\.\\d)", "gi");
const strip = (html) => html.replace(/<[^>]*>/g, " ");
const mark = (html, id) => html.split(/(<[^>]*>)/).map(
  (part) => part.startsWith("<") ? part : part.replace(whole(id), "<mark>$1</mark>")).join("");
const withRule = (location, id) => {
  const [path, anchor] = location.split("#");
  return path + "?rule=" + id + (anchor ? "#" + anchor : "");
};

function answer(query, result) {
  const m = ID.exec(query || "");
  const rule = m && rules.get(m[1].toUpperCase());
  if (!rule) return result;
  const id = rule.rule;
  const page = rule.location.split("#")[0];
  const item = (doc, score) => ({
    ...doc, location: withRule(doc.location, id), score: score, terms: {},
    title: mark(doc.title, id), text: mark(doc.text, id),
  });
  const contains = (doc) => whole(id).test(strip(doc.title + " " + doc.text));
  // The rule first: a section showing its text, under its page's title,
  // both opening the page scrolled to the rule.
  const first = [
    item(rule, 1e6),
    { ...item(rule, 0), title: rule.page_title, text: "" },
  ];
  const groups = [first];
  for (const group of result.items || []) {
    const kept = group
      .map((found) => docs.get(found.location))
      .filter((doc) => doc && !doc.rule && contains(doc));
    if (!kept.length) continue;
    const path = kept[0].location.split("#")[0];
    if (path === page) {
      // Other mentions on the rule's own page follow the rule.
      // (Its opening text is not one: the page is already there, at the rule.)
      first.splice(1, 0, ...kept.filter((doc) => doc.location !== page).map((doc) => item(doc, 1)));
      continue;
    }
    const article = docs.get(path);
    const items = kept.map((doc) => item(doc, doc.location === path ? 2 : 1));
    if (!kept.some((doc) => doc.location === path) && article)
      items.push({ ...item(article, 0), text: "" });
    groups.push(items);
  }
  return { items: groups };
}

// Ours first: a listener's microtasks run before the next listener is
// called, so Material's answer is posted before a later listener would see
// the query.
addEventListener("message", (ev) => {
  const msg = ev.data;
  if (msg.type === SETUP) {
    rules = new Map();
    docs = new Map();
    for (const doc of msg.data.docs) {
      docs.set(doc.location, doc);
      if (doc.rule) rules.set(doc.rule, doc);
    }
  } else if (msg.type === QUERY) {
    queries.push(msg.data);
  }
});

importScripts("__MATERIAL__");
self.lunr.QueryLexer.termSeparator = /\s+/;

const post = self.postMessage.bind(self);
self.postMessage = (msg) => post(
  msg && msg.type === RESULT ? { ...msg, data: answer(queries.shift(), msg.data) } : msg);
"""


def rule_entries(index: dict[str, Any]) -> list[dict[str, Any]]:
    """One search entry per rule, from the sections of the index that define them.

    Each has the rule's page location with its anchor, the id as title, the
    rule's text, and ``rule`` / ``page_title`` for the worker.
    """
    titles = {d["location"]: d["title"] for d in index["docs"] if "#" not in d["location"]}
    out = []
    for doc in index["docs"]:
        path = doc["location"].split("#")[0]
        for m in _RULE_ITEM_RE.finditer(doc["text"]):
            rid, text = m.group(1), m.group(2).strip()
            if _state.rule_url.get(rid) != path:
                continue  # a definition quoted elsewhere, not the rule's own page
            out.append(
                {
                    "location": f"{path}#{rid}",
                    "title": rid,
                    "text": f"<p>{text}</p>",
                    "rule": rid,
                    "page_title": titles.get(path, path),
                }
            )
    return out


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
    site = Path(config.site_dir)
    index_path = site / "search" / "search_index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        entries = rule_entries(index)
        missing = sorted(set(_state.rule_url) - {e["rule"] for e in entries})
        if missing:
            raise ValueError(f"no search entry could be made for rules {missing}")
        index["docs"] += entries
        index_path.write_text(json.dumps(index, ensure_ascii=False), encoding="utf-8")
    if not _worker_name:
        return
    workers = site / "assets" / "javascripts" / "workers"
    (workers / _WORKER).write_text(
        WORKER_JS.replace("__MATERIAL__", _worker_name[0]), encoding="utf-8"
    )


def on_page_context(context: Any, page: Page, config: MkDocsConfig, nav: Any) -> Any:
    if page.file.src_uri == TRACE_PAGE:
        page.edit_url = None  # generated: there is no file to edit
    return context
