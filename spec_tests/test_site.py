"""The docs site as readers see it: built, served, and loaded in headless Chromium.

The site is built with ``mkdocs build --strict`` into a temporary directory
and served on 127.0.0.1 (port 0) under the path of its ``site_url``, as it
is published, so links that only work at the root fail here too. One
Chromium (``tools/cdp.py``, the DevTools protocol on a pipe) then loads
every page the build produced and asks it what a reader would see; the
tests below each check one part of that record against the spec page
``docs/spec/site.md``.

Chromium is required: without it these tests fail and say how to install
it (``tools/sysdeps.sh``), they never skip. Every step has a timeout.
"""

from __future__ import annotations

import dataclasses
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import evio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import cdp  # noqa: E402
import ruletrace  # noqa: E402

pytestmark = pytest.mark.timeout(600)

BUILD_TIMEOUT = 180
ROLE_RE = re.compile(r":(?:py:)?(?:meth|func|class|attr|mod|exc|data|obj|const|ref|term):`?")
DASH_RE = re.compile(r"(?:^|\s)--(?:\s|$)")

# Makes Material's diagram shadow roots (closed) readable by the probe.
OPEN_SHADOWS = """
(() => {
  const attach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (init) {
    return attach.call(this, Object.assign({}, init, { mode: "open" }));
  };
})();
"""

# What a reader would see on one page: run once it has loaded.
PROBE = r"""
(async (ruleIds) => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const t0 = Date.now();
  // Diagrams render asynchronously; wait until none is left as source.
  while (document.querySelector("pre.mermaid") && Date.now() - t0 < 15000) await sleep(50);
  await sleep(100);
  const out = {};
  out.url = location.href;
  out.title = document.title;
  out.raw_diagrams = [...document.querySelectorAll("pre.mermaid")].map(
    (e) => e.textContent.trim().slice(0, 120));
  const hosts = [...document.querySelectorAll("div.mermaid")];
  out.diagrams = hosts.map((host) => {
    const svg = host.shadowRoot && host.shadowRoot.querySelector("svg");
    if (!svg) return { rendered: false, text: host.textContent.slice(0, 120) };
    const vb = svg.viewBox && svg.viewBox.baseVal;
    const box = svg.getBoundingClientRect();
    const scale = vb && vb.width ? box.width / vb.width : 1;
    let minFont = Infinity;
    for (const el of svg.querySelectorAll("text, tspan, foreignObject span, foreignObject p")) {
      if (!el.textContent.trim()) continue;
      const px = parseFloat(getComputedStyle(el).fontSize) * scale;
      if (px < minFont) minFont = px;
    }
    const edgeLabels = [...svg.querySelectorAll("g.edgeLabel")].map((l) => {
      const r = l.getBoundingClientRect();
      const fo = l.querySelector("foreignObject");
      const html = fo && fo.firstElementChild;
      const lines = html ? html.innerText : l.textContent;
      return { lines: lines, x: r.x, y: r.y, w: r.width, h: r.height };
    }).filter((l) => l.w > 1 && l.h > 1 && l.lines.trim());
    return {
      rendered: true,
      kind: svg.getAttribute("aria-roledescription") || "",
      width: box.width, scale: scale, min_font_px: minFont === Infinity ? null : minFont,
      edge_labels: edgeLabels, text: svg.textContent.slice(0, 2000),
    };
  });
  // A mermaid syntax error is drawn as an SVG that says so, wherever it lands.
  const texts = [document.body.innerText];
  for (const host of hosts) if (host.shadowRoot) texts.push(host.shadowRoot.textContent);
  for (const el of document.querySelectorAll("svg[aria-roledescription=error], [id^=dmermaid]"))
    texts.push(el.textContent);
  out.syntax_errors = texts
    .filter((t) => /Syntax error in (text|graph)|Parse error on line/.test(t))
    .map((t) => t.slice(0, 200));
  out.broken_images = [...document.images]
    .filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.currentSrc || i.src);
  out.links = [...document.querySelectorAll("a[href]")]
    .map((a) => ({ href: a.href, text: a.textContent.trim().slice(0, 60) }));
  out.ids = [...document.querySelectorAll("[id]")].map((e) => e.id)
    .concat([...document.querySelectorAll("a[name]")].map((e) => e.name));
  const article = document.querySelector("article") || document.body;
  out.text = article.innerText;
  // Text outside code and pre: what the dash and role checks read.
  const prose = [];
  const unlinked = [];
  const ids = new Set(ruleIds);
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest("pre, code, script, style")) continue;
    prose.push(n.textContent);
    if (el.closest("h1, h2, h3, h4, h5, h6")) continue;
    for (const m of n.textContent.matchAll(/(?<![\w\/#.-])([A-Z][A-Z0-9]*-\d+)(?![\w-]|\.\d)/g)) {
      if (!ids.has(m[1])) continue;
      const a = el.closest("a[href]");
      if (!a || !a.getAttribute("href").endsWith("#" + m[1]))
        unlinked.push(m[1] + " in: " + n.textContent.trim().slice(0, 80));
    }
  }
  out.prose = prose.join("");
  out.unlinked_rules = unlinked;
  // Each rule anchor, and the text of the list item it starts.
  out.rule_anchors = [...document.querySelectorAll("a.rule-id")].map((a) => {
    const li = a.closest("li");
    return { id: a.id, item: li ? li.textContent.trim().slice(0, 40) : "" };
  });
  out.edit_link = !!document.querySelector("a.md-content__button[href*='edit']");
  out.footer = (document.querySelector(".md-copyright") || {}).textContent || "";
  out.prev_next = [...document.querySelectorAll("a.md-footer__link")].map((a) => a.href);
  // Each table: how wide it is against the room it has, and its header rows.
  out.tables = [...article.querySelectorAll("table")].map((t) => {
    const wrap = t.closest(".md-typeset__scrollwrap") || t.parentElement;
    return {
      first: t.textContent.trim().replace(/\s+/g, " ").slice(0, 60),
      width: t.scrollWidth, room: wrap.clientWidth,
      head: [...t.querySelectorAll("thead tr")].map((r) => r.textContent.trim()),
    };
  });
  // The sidebar's entries: a title that names two different pages misleads.
  // (Pages only: a page's own table of contents nests there too, as links to anchors.)
  out.nav = [...document.querySelectorAll("nav.md-nav--primary a.md-nav__link[href]")]
    .filter((a) => !a.closest(".md-nav--secondary") && !a.getAttribute("href").includes("#"))
    .map((a) => ({ text: a.textContent.trim(), href: a.href }));
  return out;
})
"""


# ----------------------------------------------------------------- fixtures


def _config() -> dict[str, str]:
    """site_url, repo_url and edit_uri from mkdocs.yml (the plain keys only)."""
    out: dict[str, str] = {}
    for line in (ROOT / "mkdocs.yml").read_text(encoding="utf-8").splitlines():
        m = re.match(
            r'^(site_url|repo_url|edit_uri):\s*(?:!ENV\s*\[\s*\w+\s*,\s*)?"?([^"\]]*)', line
        )
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


@dataclass
class Site:
    """The built site and where it is served."""

    dir: Path
    origin: str
    prefix: str  # the path of site_url, e.g. "/evio/"
    log: str

    @property
    def base(self) -> str:
        return self.origin + self.prefix

    def pages(self) -> list[str]:
        """The URL of every HTML page the build wrote (404.html aside)."""
        urls = []
        for path in sorted(self.dir.rglob("*.html")):
            rel = path.relative_to(self.dir).as_posix()
            if rel == "404.html":
                continue
            rel = rel.removesuffix("index.html")
            urls.append(self.base + rel)
        return urls


def _handler(root: Path, prefix: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def translate_path(self, path: str) -> str:
            path = urllib.parse.urlsplit(path).path
            if not path.startswith(prefix):
                return str(root / "__outside_the_site__")
            return super().translate_path("/" + path[len(prefix) :])

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            page = root / "404.html"
            if code != 404 or not page.exists():
                super().send_error(code, message, explain)
                return
            body = page.read_bytes()  # as GitHub Pages does
            self.send_response(404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env.pop("SITE_URL", None)
    env.pop("REPO_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=env, check=False,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    prefix = urllib.parse.urlsplit(_config()["site_url"]).path or "/"
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(out, prefix))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(out, f"http://127.0.0.1:{server.server_address[1]}", prefix, done.stderr)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _chromium() -> str:
    exe = cdp.find_chromium()
    if exe is None:
        pytest.fail(
            "chromium is not installed, and the site tests load every page in it: "
            "run `sudo tools/sysdeps.sh` (Debian: apt-get install chromium)",
            pytrace=False,
        )
    return exe


@dataclass
class Visit:
    """What one page showed and logged."""

    url: str
    status: int = 0
    probe: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    offsite: list[str] = field(default_factory=list)  # requests that left the site


def _visit(browser: cdp.Browser, site: Site, url: str) -> Visit:
    visit = Visit(url)
    browser.events.clear()
    browser.navigate(url)
    visit.probe = browser.evaluate(f"({PROBE})({json.dumps(sorted(_rule_ids()))})")
    browser.drain()
    for ev in browser.events:
        method, p = ev["method"], ev.get("params", {})
        if method == "Network.requestWillBeSent":
            req = p["request"]["url"]
            if not req.startswith((site.origin + "/", "data:", "blob:", "about:")):
                visit.offsite.append(req)
        elif method == "Network.responseReceived" and p.get("type") == "Document":
            if p["response"]["url"].split("#")[0] == url.split("#")[0]:
                visit.status = int(p["response"]["status"])
        elif method == "Network.responseReceived" and p["response"]["url"] == url:
            pass  # the page itself: its status is checked on its own
        elif method == "Network.responseReceived" and int(p["response"]["status"]) >= 400:
            visit.errors.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        elif method == "Network.loadingFailed" and p.get("errorText") == "net::ERR_ABORTED":
            pass  # a request the previous page left when the browser moved on
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            visit.errors.append(f"load failed ({p.get('errorText')}): request {p['requestId']}")
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            visit.errors.append(
                "exception: " + str(d.get("exception", {}).get("description") or d.get("text"))
            )
        elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            visit.errors.append(f"console.{p['type']}: {args[:300]}")
        elif method == "Log.entryAdded" and p["entry"].get("url") == url and visit.status >= 400:
            pass  # "failed to load" for a page served as not found on purpose
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            visit.errors.append(f"log: {p['entry']['text'][:300]} {p['entry'].get('url', '')}")
    return visit


@pytest.fixture(scope="module")
def browser() -> Iterator[cdp.Browser]:
    with cdp.Browser(_chromium(), timeout=30) as b:
        b.call("Page.addScriptToEvaluateOnNewDocument", {"source": OPEN_SHADOWS})
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.call(f"{domain}.enable")
        yield b


@pytest.fixture(scope="module")
def visits(site: Site, browser: cdp.Browser) -> dict[str, Visit]:
    """Every page of the site, loaded once, keyed by URL."""
    pages = site.pages()
    assert len(pages) >= 10, f"the build wrote only {pages}"
    return {url: _visit(browser, site, url) for url in pages}


def _rule_ids() -> set[str]:
    return set(ruletrace.collect(ROOT).defined())


def _problems(found: dict[str, list[str]]) -> str:
    return "\n".join(
        f"{url}\n" + "\n".join(f"    {p}" for p in ps) for url, ps in found.items() if ps
    )


_TRANSITION_RE = re.compile(r"^\s*(\S+)\s*-->\s*(\S+)\s*:\s*(.+?)\s*$", re.MULTILINE)


def _diagram_sources(site: Site, url: str) -> list[str]:
    """The mermaid sources of one page, in page order, from the built HTML."""
    path = site.dir / url.removeprefix(site.base) / "index.html"
    text = path.read_text(encoding="utf-8")
    found = re.findall(r'<pre class="mermaid"><code>(.*?)</code></pre>', text, re.DOTALL)
    return [html.unescape(src) for src in found]


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
    dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
    return dx > 2 and dy > 2



# -------------------------------------------------------------------- tests


@pytest.mark.rule("DOCS-3")
def test_every_page_loads_without_errors(visits: dict[str, Visit]) -> None:
    bad = {url: [f"status {v.status}"] * (v.status != 200) + v.errors for url, v in visits.items()}
    assert not any(bad.values()), "pages that failed to load cleanly:\n" + _problems(bad)


@pytest.mark.rule("DOCS-4")
def test_everything_is_served_from_the_site(visits: dict[str, Visit]) -> None:
    bad = {url: v.offsite for url, v in visits.items()}
    assert not any(bad.values()), (
        "pages that fetched something from outside the site (fonts, scripts, ...), "
        "which an offline reader cannot load:\n" + _problems(bad)
    )


@pytest.mark.rule("DOCS-3")
def test_every_diagram_renders(site: Site, visits: dict[str, Visit]) -> None:
    bad: dict[str, list[str]] = {}
    count = 0
    for url, v in visits.items():
        p = v.probe
        bad[url] = [f"left as source: {s!r}" for s in p["raw_diagrams"]]
        bad[url] += [f"syntax error shown: {s!r}" for s in p["syntax_errors"]]
        drawn = [d for d in p["diagrams"] if d["rendered"]]
        bad[url] += [f"no SVG drawn for {d['text']!r}" for d in p["diagrams"] if not d["rendered"]]
        written = len(_diagram_sources(site, url))
        if len(drawn) != written:
            bad[url].append(f"{written} diagrams in the page's source, {len(drawn)} drawn")
        count += written
    assert not any(bad.values()), "diagrams that did not render:\n" + _problems(bad)
    assert count >= 2, f"only {count} diagrams found on the whole site"


@pytest.mark.rule("DOCS-3")
def test_diagram_text_is_readable(visits: dict[str, Visit]) -> None:
    bad = {
        url: [
            f"{d['kind']} drawn at {d['scale']:.0%}: its smallest text is "
            f"{d['min_font_px']:.1f} px (at least 10 px wanted)"
            for d in v.probe["diagrams"]
            if d["rendered"] and d["min_font_px"] is not None and d["min_font_px"] < 10
        ]
        for url, v in visits.items()
    }
    assert not any(bad.values()), "diagrams scaled down too far to read:\n" + _problems(bad)


@pytest.mark.rule("DOCS-3")
def test_state_diagram_transitions_all_show_their_labels(
    site: Site, visits: dict[str, Visit]
) -> None:
    bad: dict[str, list[str]] = {}
    states = 0
    for url, v in visits.items():
        sources = _diagram_sources(site, url)
        bad[url] = []
        if len(sources) != len(v.probe["diagrams"]):
            continue  # test_every_diagram_renders says which did not render
        for src, d in zip(sources, v.probe["diagrams"], strict=True):
            if not src.lstrip().startswith("stateDiagram") or not d["rendered"]:
                continue
            states += 1
            labels = d["edge_labels"]
            shown = {line.strip() for lab in labels for line in lab["lines"].splitlines()}
            for source, target, label in _TRANSITION_RE.findall(src):
                for event in re.split(r"<br\s*/?>", label):
                    if event.strip() not in shown:
                        bad[url].append(f"{source} --> {target}: {event.strip()!r} not shown")
            bad[url] += [
                f"labels drawn over each other: {a['lines']!r} and {b['lines']!r}"
                for i, a in enumerate(labels) for b in labels[i + 1 :] if _overlap(a, b)
            ]
    assert states, "no state diagram on the site (the loop page draws the lifecycle)"
    assert not any(bad.values()), "state diagrams that hide transitions:\n" + _problems(bad)


@pytest.mark.rule("DOCS-3")
def test_every_image_loads(visits: dict[str, Visit]) -> None:
    bad = {url: v.probe["broken_images"] for url, v in visits.items()}
    assert not any(bad.values()), "images that did not load:\n" + _problems(bad)


@pytest.mark.rule("DOCS-3")
def test_internal_links_and_anchors_resolve(site: Site, visits: dict[str, Visit]) -> None:
    ids = {url: set(v.probe["ids"]) for url, v in visits.items()}
    bad: dict[str, list[str]] = {}
    checked = 0
    for url, v in visits.items():
        bad[url] = []
        for link in v.probe["links"]:
            href = link["href"]
            if not href.startswith(site.origin + "/"):
                continue
            target, _, anchor = href.partition("#")
            target = target.split("?")[0]
            checked += 1
            if target in ids:
                if anchor and urllib.parse.unquote(anchor) not in ids[target]:
                    bad[url].append(f"no #{anchor} on {target} (link {link['text']!r})")
                continue
            if target.endswith("/"):
                bad[url].append(f"no page at {target} (link {link['text']!r})")
                continue
            try:  # a file: an image, the sitemap, a licence
                with urllib.request.urlopen(target, timeout=10) as r:
                    ok = r.status == 200
            except OSError:
                ok = False
            if not ok:
                bad[url].append(f"nothing at {target} (link {link['text']!r})")
    assert checked > 100, f"only {checked} internal links found"
    assert not any(bad.values()), "broken internal links:\n" + _problems(bad)


@pytest.mark.rule("DOCS-3")
def test_every_table_fits_and_names_its_columns(visits: dict[str, Visit]) -> None:
    bad = {
        url: [
            f"{t['first']!r}: {t['width']} px wide in {t['room']} px (columns scrolled out of view)"
            for t in v.probe["tables"] if t["width"] > t["room"] + 1
        ] + [
            f"{t['first']!r}: an empty header row"
            for t in v.probe["tables"] if any(not row for row in t["head"])
        ]
        for url, v in visits.items()
    }
    assert any(v.probe["tables"] for v in visits.values()), "no table found on the whole site"
    assert not any(bad.values()), "tables a reader cannot read whole:\n" + _problems(bad)


@pytest.mark.rule("DOCS-3")
def test_no_two_sidebar_entries_share_a_title(visits: dict[str, Visit]) -> None:
    titles: dict[str, set[str]] = {}
    for v in visits.values():
        for entry in v.probe["nav"]:
            if entry["text"]:
                titles.setdefault(entry["text"], set()).add(entry["href"])
    assert len(titles) > 20, f"only {len(titles)} sidebar entries found"
    twice = {t: sorted(h) for t, h in titles.items() if len(h) > 1}
    assert not twice, f"sidebar titles that name more than one page: {twice}"


@pytest.mark.rule("DOCS-3")
def test_the_404_page_works_under_the_sub_path(site: Site, browser: cdp.Browser) -> None:
    assert site.prefix != "/", "site_url has no sub-path, so this test would prove nothing"
    v = _visit(browser, site, site.base + "no/such/page/")
    assert v.status == 404
    assert not v.errors, "the 404 page failed to load its parts:\n" + "\n".join(v.errors)
    home = [
        link["href"] for link in v.probe["links"] if link["href"].rstrip("/") + "/" == site.base
    ]
    assert home, "the 404 page has no working link to the home page"


@pytest.mark.rule("DOCS-1")
def test_every_rule_has_an_anchor_that_starts_its_item(visits: dict[str, Visit]) -> None:
    trace = ruletrace.collect(ROOT)
    where: dict[str, list[str]] = {}
    for url, v in visits.items():
        for a in v.probe["rule_anchors"]:
            where.setdefault(a["id"], []).append(url)
            assert a["item"].startswith(a["id"]), (
                f"{a['id']} on {url} does not start a list item of its own: it is inside "
                f"{a['item']!r} (a Markdown block swallowed it)"
            )
    for rid, rule in trace.defined().items():
        page = rule.page.removeprefix("docs/").removesuffix(".md") + "/"
        assert [u for u in where.get(rid, []) if u.endswith(page)], (
            f"{rid} ({rule.where}) has no #{rid} anchor on its page"
        )


@pytest.mark.rule("DOCS-1")
def test_every_mention_of_a_rule_links_to_it(visits: dict[str, Visit]) -> None:
    bad = {url: v.probe["unlinked_rules"] for url, v in visits.items()}
    assert not any(bad.values()), "rule ids mentioned without a link:\n" + _problems(bad)
    linked = [
        link for v in visits.values() for link in v.probe["links"]
        if re.search(r"#[A-Z][A-Z0-9]*-\d+$", link["href"])
    ]
    assert len(linked) > len(_rule_ids()), "hardly any links to rules on the whole site"


@pytest.mark.rule("DOCS-2")
def test_the_generated_page_lists_every_rule_with_its_tests(
    site: Site, visits: dict[str, Visit]
) -> None:
    trace = ruletrace.collect(ROOT)
    page = visits.get(site.base + "spec/traceability/")
    assert page is not None, "no spec/traceability/ page in the build"
    ids = set(page.probe["ids"])
    assert set(trace.defined()) <= ids, f"rules missing: {sorted(set(trace.defined()) - ids)}"
    text = page.probe["text"]
    for rid, tests in trace.table().items():
        for test in tests:
            assert test.removeprefix("spec_tests/") in text, f"{test} not listed for {rid}"
    shown_pollers = {"every poller", "default poller"}
    assert all(p in text for p in shown_pollers), "the pollers the tests run on are not shown"


@pytest.mark.rule("DOCS-2")
def test_each_rule_links_to_its_tests(site: Site, visits: dict[str, Visit]) -> None:
    trace = ruletrace.collect(ROOT)
    for rid, rule in trace.defined().items():
        url = site.base + rule.page.removeprefix("docs/").removesuffix(".md") + "/"
        links = [link for link in visits[url].probe["links"] if link["href"].endswith(
            f"spec/traceability/#{rid}")]
        assert links, f"{rid} on {url} has no link to its tests"
        n = len(trace.table()[rid])
        assert links[0]["text"] == f"{n} test{'s' if n != 1 else ''}", links[0]


@pytest.mark.rule("DOCS-5")
def test_no_raw_sphinx_roles_or_double_dashes(visits: dict[str, Visit]) -> None:
    bad = {
        url: [f"raw role: {m.group(0)!r}" for m in ROLE_RE.finditer(v.probe["prose"])]
        + [f"literal '--' near {v.probe['prose'][max(0, m.start() - 40):m.end() + 20]!r}"
           for m in DASH_RE.finditer(v.probe["prose"])]
        for url, v in visits.items()
    }
    assert not any(bad.values()), (
        "raw Sphinx roles (write cross-references as [`Server.flush`][evio.Server.flush] "
        "or plain `flush` in docstrings) or a '--' the build did not turn into a dash:\n"
        + _problems(bad)
    )


@pytest.mark.rule("DOCS-5")
def test_the_reference_shows_constructor_defaults(site: Site, visits: dict[str, Visit]) -> None:
    text = visits[site.base + "reference/"].probe["text"]
    flat = re.sub(r"\s+", "", text.replace("'", '"'))
    for cls in (evio.Options, evio.Events):
        assert re.search(rf"\b{cls.__name__}\s*\(", text), f"no signature for {cls.__name__}"
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.default is dataclasses.MISSING:
                continue
            default = re.sub(r"\s+", "", repr(f.default).replace("'", '"'))
            shown = re.escape(f.name) + r"(:[^=]*)?=" + re.escape(default)
            assert re.search(shown, flat), f"{cls.__name__}: {f.name}={default} is not shown"


@pytest.mark.rule("DOCS-6")
def test_search_finds_rule_ids_and_identifiers(site: Site, browser: cdp.Browser) -> None:
    trace = ruletrace.collect(ROOT)
    defined = trace.defined()
    queries = ["LOOP-3", "EV-9", "idle_timeout"]
    for query in queries:
        browser.navigate(site.base)  # a fresh page: no results left from the last query
        browser.until("!!document.querySelector('.md-search__input')")
        hrefs = browser.evaluate(f"""(async () => {{
            const input = document.querySelector(".md-search__input");
            input.focus();
            input.value = {json.dumps(query)};
            input.dispatchEvent(new Event("input", {{bubbles: true}}));
            input.dispatchEvent(new KeyboardEvent("keyup", {{bubbles: true, key: "3"}}));
            const t0 = Date.now();
            let items = [];
            while (Date.now() - t0 < 10000) {{
              items = [...document.querySelectorAll(".md-search-result__item > a")];
              if (items.length) break;
              await new Promise((r) => setTimeout(r, 50));
            }}
            return items.map((a) => a.href);
        }})()""")
        assert hrefs, f"searching {query!r} found nothing"
        pages = list(dict.fromkeys(h.split("#")[0].split("?")[0] for h in hrefs))
        for page in pages:
            html = urllib.request.urlopen(page, timeout=10).read().decode()
            assert query.lower() in html.lower(), f"{query!r}: {page} does not contain it"
        if query in defined:
            home = site.base + defined[query].page.removeprefix("docs/").removesuffix(".md") + "/"
            assert pages[0] == home, f"{query!r}: first result {pages[0]}, not {home}"


@pytest.mark.rule("DOCS-7")
def test_the_site_is_publishable(site: Site, visits: dict[str, Visit]) -> None:
    cfg = _config()
    assert cfg.get("site_url", "").startswith("https://"), cfg
    assert cfg.get("repo_url", "").startswith("https://"), cfg
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    sitemap = (site.dir / "sitemap.xml").read_text()
    for url in visits:
        assert url.replace(site.base, cfg["site_url"]) in sitemap, f"{url} not in sitemap.xml"
    version = re.search(r'^__version__ = "([^"]+)"$',
                        (ROOT / "evio" / "__init__.py").read_text(), re.M)
    assert version is not None
    for url, v in visits.items():
        assert version.group(1) in v.probe["footer"], f"{url}: no version in the footer"
        if not url.endswith("spec/traceability/"):
            assert v.probe["edit_link"], f"{url}: no edit link"
    home = visits[site.base].probe["text"]
    install = f'pip install "{project["name"]} @ git+'  # not on PyPI yet: from the repository
    assert install in home, "no install instructions on the home page"
    middle = [v for v in visits.values() if len(v.probe["prev_next"]) == 2]
    assert middle, "no page has previous/next links"


@pytest.mark.rule("DOCS-8")
def test_sysdeps_names_the_command_when_it_cannot_install(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "id", "dirname", "cat", "sed", "tr", "grep", "uname"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "sysdeps.sh"), "--check"],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    message = done.stdout + done.stderr
    assert "apt-get install" in message and "chromium" in message and "wrk" in message, message
