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
      edge_labels: edgeLabels,
      text: [...svg.querySelectorAll("text, foreignObject")].map((e) => e.textContent)
        .join(" ").slice(0, 2000),
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
  out.page_width = document.documentElement.scrollWidth;
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
  // Each code block: its title, its lines, its highlighted lines, and
  // whether any of it is cut off at the right edge.
  out.code = [...article.querySelectorAll("div.highlight")].map((d) => {
    const code = d.querySelector("pre > code");
    const nums = [...d.querySelectorAll(".linenos")].map((n) => n.getAttribute("data-linenos"));
    return {
      classes: d.className,
      title: (d.querySelector(".filename") || {}).textContent || "",
      text: code ? code.textContent : "",
      first_line: nums.length ? parseInt(nums[0], 10) : null,
      highlighted: d.querySelectorAll(".hll").length,
      width: code ? code.scrollWidth : 0, room: code ? code.clientWidth : 0,
    };
  });
  out.folded = [...article.querySelectorAll("details")].map(
    (d) => (d.querySelector("summary") || {}).textContent || "");
  out.h2 = [...article.querySelectorAll("h2")].map((h) => h.textContent.replace("¶", "").trim());
  // Ids and code in table cells: a token drawn on two lines is broken.
  const broken = [];
  for (const el of article.querySelectorAll("td a.rule-ref, td a.rule-id, td code")) {
    const texts = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let node = texts.nextNode(); node; node = texts.nextNode()) {
      // Each word of it (a break at a space is a break between tokens).
      for (const m of node.textContent.matchAll(/\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
        if (lines.size > 1) broken.push(m[0].slice(0, 60));
      }
    }
  }
  out.broken_tokens = broken;
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
    """site_url and repo_url as the site uses them: from [project.urls] in pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        urls = tomllib.load(f)["project"]["urls"]
    return {"site_url": urls["Documentation"], "repo_url": urls["Repository"]}


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
    # A leading %%{init: ...}%% line configures the drawing, not the diagram.
    return [re.sub(r"^\s*%%\{.*?\}%%\s*", "", html.unescape(src)) for src in found]


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
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING:
                continue
            default = re.sub(r"\s+", "", repr(f.default).replace("'", '"'))
            shown = re.escape(f.name) + r"(:[^=]*)?=" + re.escape(default)
            assert re.search(shown, flat), f"{cls.__name__}: {f.name}={default} is not shown"


SEARCH_ALL = r"""
(async (queries) => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const input = document.querySelector(".md-search__input");
  const list = document.querySelector(".md-search-result__list");
  const out = {};
  input.focus();
  for (const query of queries) {
    list.innerHTML = "";
    input.value = query;
    input.dispatchEvent(new Event("input", { bubbles: true }));
    input.dispatchEvent(new KeyboardEvent("keyup", { bubbles: true, key: "0" }));
    // Results for this query: the first names the id, or the list has
    // stopped changing for half a second (what an earlier query left is
    // cleared first, but its answer may still arrive).
    const t0 = Date.now();
    const id = query.toUpperCase();
    let last = "", since = Date.now();
    while (Date.now() - t0 < 5000) {
      const first = list.querySelector(".md-search-result__item a");
      if (first && first.href.endsWith("#" + id)) break;
      if (list.innerHTML !== last) { last = list.innerHTML; since = Date.now(); }
      else if (last && Date.now() - since > 500) break;
      await sleep(20);
    }
    await sleep(20);  // the rest of the first batch
    const items = [...list.querySelectorAll(".md-search-result__item")];
    out[query] = {
      hrefs: items.map((li) => li.querySelector("a").href),
      links: items.flatMap((li) => [...li.querySelectorAll("a")].map((a) => a.href)),
      marks: [...list.querySelectorAll("mark")].map((m) => m.textContent),
    };
  }
  return out;
})
"""


@pytest.mark.rule("DOCS-6")
def test_search_lands_on_every_rule(site: Site, browser: cdp.Browser) -> None:
    """Every rule id, typed into the search box: the rule first, whole, nothing else."""
    defined = ruletrace.collect(ROOT).defined()
    queries = sorted(defined) + [defined_id.lower() for defined_id in ("LOOP-2", "EV-9")]
    browser.navigate(site.base)
    browser.until("!!document.querySelector('.md-search__input')")
    found: dict[str, Any] = {}
    for i in range(0, len(queries), 20):  # each call must answer within cdp's timeout
        found |= browser.evaluate(f"({SEARCH_ALL})({json.dumps(queries[i:i + 20])})")
    pages: dict[str, str] = {}

    def text_of(page: str) -> str:
        if page not in pages:
            path = site.dir / page.removeprefix(site.base) / "index.html"
            pages[page] = path.read_text(encoding="utf-8") if path.exists() else ""
        return pages[page]

    bad: dict[str, list[str]] = {}
    first_ok = 0
    for query in queries:
        rid = query.upper()
        res = found[query]
        problems = bad.setdefault(query, [])
        home = site.base + defined[rid].page.removeprefix("docs/").removesuffix(".md") + "/"
        if not res["hrefs"]:
            problems.append("no result")
            continue
        top = urllib.parse.urlsplit(res["hrefs"][0])
        top_page = f"{top.scheme}://{top.netloc}{top.path}"
        if top_page != home or top.fragment != rid:
            problems.append(f"first result {res['hrefs'][0]}, not {home}#{rid}")
        else:
            first_ok += 1
        whole = re.compile(rf"(?<![\w/#.-]){re.escape(rid)}(?![\w-]|\.\d)")
        for href in dict.fromkeys(res["links"]):
            parts = urllib.parse.urlsplit(href)
            page = f"{parts.scheme}://{parts.netloc}{parts.path}"
            if not whole.search(text_of(page)):
                problems.append(f"{page} is offered but does not contain {rid} whole")
        wrong_marks = [m for m in res["marks"] if m.upper() != rid]
        if wrong_marks:
            problems.append(f"highlighted fragments {sorted(set(wrong_marks))[:5]}")
        if not res["marks"]:
            problems.append("the id is not highlighted in the results")
    failed = {q: ps for q, ps in bad.items() if ps}
    assert not failed, (
        f"{len(failed)} of {len(queries)} rule-id searches went wrong "
        f"({first_ok} put the rule first):\n"
        + "\n".join(f"{q}: {'; '.join(ps)}" for q, ps in sorted(failed.items()))
    )


@pytest.mark.rule("DOCS-6")
def test_opening_a_rule_from_search_marks_the_id_whole(site: Site, browser: cdp.Browser) -> None:
    browser.navigate(site.base + "spec/loop/?rule=LOOP-2#LOOP-2")
    marks = browser.evaluate(
        "[...document.querySelectorAll('article mark')].map((m) => m.textContent)"
    )
    assert marks and set(marks) == {"LOOP-2"}, marks
    scrolled = browser.evaluate(
        "document.getElementById('LOOP-2').getBoundingClientRect().top"
    )
    assert 0 <= scrolled < 400, f"the rule is at {scrolled} px, not at the top of the window"


@pytest.mark.rule("DOCS-6")
def test_search_keeps_identifiers_whole(site: Site, browser: cdp.Browser) -> None:
    browser.navigate(site.base)
    browser.until("!!document.querySelector('.md-search__input')")
    found = browser.evaluate(f"({SEARCH_ALL})({json.dumps(['idle_timeout'])})")
    hrefs = found["idle_timeout"]["hrefs"]
    assert hrefs, "searching idle_timeout found nothing"
    for page in dict.fromkeys(h.split("#")[0].split("?")[0] for h in hrefs):
        html_ = (site.dir / page.removeprefix(site.base) / "index.html").read_text()
        assert "idle_timeout" in html_, f"idle_timeout: {page} does not contain it"


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
    changelog = (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8")
    unreleased = "not been tagged or published" in changelog
    version = re.search(r'^__version__ = "([^"]+)"$',
                        (ROOT / "evio" / "__init__.py").read_text(), re.M)
    assert version is not None
    for url, v in visits.items():
        footer = v.probe["footer"]
        assert version.group(1) in footer, f"{url}: no version in the footer"
        if unreleased:
            assert "unreleased" in footer, f"{url}: the footer does not say unreleased"
        if not url.endswith("spec/traceability/"):
            assert v.probe["edit_link"], f"{url}: no edit link"
            edit = [link["href"] for link in v.probe["links"] if "/edit/" in link["href"]]
            assert edit and edit[0].startswith(cfg["repo_url"]), (url, edit)
    home = visits[site.base].probe["text"]
    install = f'pip install "{project["name"]} @ git+{cfg["repo_url"]}"'
    assert install in home, f"the home page does not say: {install}"
    assert f"git clone {cfg['repo_url']}" in home, "the home page does not say how to clone"
    if unreleased:  # nothing is on PyPI: no page may say it is
        bare = re.compile(rf"pip install {re.escape(project['name'])}(?![\w-])(?!\s*@)")
        said = [url for url, v in visits.items() if bare.search(v.probe["text"])]
        assert not said, f"pages that install from PyPI, where nothing is published: {said}"
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


# ------------------------------------------------- generated facts, tutorial


_NUMBER = {w: i for i, w in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve"))}


def _callbacks() -> list[str]:
    """The callbacks of evio.Events, read here independently of the docs' hook."""
    return [f.name for f in dataclasses.fields(evio.Events)
            if str(f.type).startswith("Callable[")]


@pytest.mark.rule("DOCS-10")
def test_no_page_contradicts_the_code(site: Site, visits: dict[str, Visit]) -> None:
    callbacks = _callbacks()
    methods = [n for n, m in vars(evio.Translator).items()
               if callable(m) and not n.startswith("_")]
    bad: dict[str, list[str]] = {}
    for url, v in visits.items():
        text = v.probe["text"]
        found = bad.setdefault(url, [])
        for m in re.finditer(r"\b(\w+) optional callbacks", text):
            if m.group(1) in _NUMBER and _NUMBER[m.group(1)] != len(callbacks):
                found.append(f"{m.group(0)!r}: Events has {len(callbacks)} callbacks")
        for m in re.finditer(r"object with (\w+) methods", text):
            if m.group(1) in _NUMBER and _NUMBER[m.group(1)] != len(methods):
                found.append(f"{m.group(0)!r}: Translator has {len(methods)}: {methods}")
        if re.search(r"one server per core", text):
            found.append("'one server per core': serve(..., loops=N) runs N loops")
        if re.search(r"evio behaves the same", text):
            found.append("'evio behaves the same' about a finished peer: eof changes that")
    home = visits[site.base].probe["text"]
    bad[site.base] += [f"the home page does not name `{c}`" for c in callbacks if c not in home]
    assert not any(bad.values()), "statements the code contradicts:\n" + _problems(bad)


_TIMER_KINDS = {
    "_resume": r"LOOP-5", "_timed_out": r"DIAL-4|dial", "check": r"REL-4|idle too long",
    "_fin_due": r"REL-12", "_next_tick": r"tick", "_sweep": r"UDP-10",
    "_check": r"LOOP-14|linger", "_end_due": r"TIMER-3", "_user_timer": r"TIMER-1",
    "_handshake_due": r"TIMER-5",
}
"""What each callback the loop puts in its deadline queue is, as the spec names it."""


@pytest.mark.rule("DOCS-10")
def test_what_bounds_the_poll_is_what_fires(site: Site) -> None:
    """LOOP-2 (what bounds the poll) and LOOP-16 (what fires) name every timer the code sets."""
    set_in_code = set()
    for path in (ROOT / "evio").glob("*.py"):
        for m in re.finditer(r"timers\.at\((?:[^(),]|\([^()]*\))+,\s*"
                             r"(?:(?:functools\.)?partial\(\s*)?(?:self\.)?(?:idle\.)?(\w+)",
                             path.read_text(encoding="utf-8")):
            set_in_code.add(m.group(1))
    assert set_in_code == set(_TIMER_KINDS), (
        f"the loop's timers are now {sorted(set_in_code)}: say what each is in _TIMER_KINDS, "
        "and name it in LOOP-2 and LOOP-16"
    )
    loop = ruletrace.collect(ROOT).defined()
    text = (ROOT / "docs" / "spec" / "loop.md").read_text(encoding="utf-8")

    def rule(rid: str) -> str:
        start = text.index(f"- **{rid}**")
        return text[start:text.index("\n\n", start)]

    assert "LOOP-2" in loop and "LOOP-16" in loop
    for rid in ("LOOP-2", "LOOP-16"):
        missing = [k for k in _TIMER_KINDS.values() if not re.search(k, rule(rid))]
        assert not missing, f"{rid} does not name {missing}"


@pytest.mark.rule("DOCS-10")
def test_the_tutorial_rule_map_is_what_the_tests_name(site: Site, visits: dict[str, Visit]) -> None:
    trace = ruletrace.collect(ROOT)
    named = {rid for t in trace.tests if t.file.endswith("test_tutorial.py") for rid in t.rules}
    page = visits[site.base + "tutorial/6-evio/"].probe["text"]
    start = page.index("rules its tests check")
    table = page[start:page.index("\n\n", start) if "\n\n" in page[start:] else None]
    shown = set(re.findall(r"\b[A-Z][A-Z0-9]*-\d+\b", table))
    assert shown, "no rule map on the last tutorial page"
    assert shown <= named, f"the rule map names rules no tutorial test names: {shown - named}"
    assert named <= shown, f"rules the tutorial tests name that the map leaves out: {named - shown}"
    stage2 = next(line for line in table.splitlines() if line.startswith("2"))
    assert "POLL-7" not in stage2, "stage 2 dies on a descriptor >= 1024: it does not meet POLL-7"


def _file_lines(title: str) -> tuple[str, list[str]] | None:
    m = re.match(r"(\S+\.py) · (\S+) · lines (\d+)–(\d+)$", title.strip())
    if not m:
        return None
    lines = (ROOT / m.group(1)).read_text(encoding="utf-8").splitlines()
    body = lines[int(m.group(3)) - 1 : int(m.group(4))]
    indent = min(len(x) - len(x.lstrip()) for x in body if x.strip())
    return m.group(1), [x[indent:] for x in body]


def _same_code(shown: str, lines: list[str]) -> bool:
    return [x.rstrip() for x in shown.rstrip("\n").split("\n")] == [x.rstrip() for x in lines]


@pytest.mark.rule("DOCS-9")
def test_the_tutorial_is_taught_in_steps(site: Site, visits: dict[str, Visit]) -> None:
    stages = sorted(u for u in visits if re.search(r"tutorial/\d-[a-z-]+/$", u))
    stage_pages = [u for u in stages if not u.endswith("6-evio/")]
    assert len(stage_pages) == 5, stages
    bad: dict[str, list[str]] = {}
    for n, url in enumerate(stage_pages, start=1):
        p = visits[url].probe
        found = bad.setdefault(url, [])
        fragments = [
            c for c in p["code"] if "tutorial-code" in c["classes"] and ".py ·" in c["title"]
        ]
        if len(fragments) < 2:
            found.append(f"{len(fragments)} code fragments: the code is not woven into the prose")
        for c in p["code"]:
            if c["width"] > c["room"] + 1:
                found.append(f"code cut off at the right edge: {c['title'] or c['text'][:40]!r}")
        for c in fragments:
            got = _file_lines(c["title"])
            if got is None:
                found.append(f"a fragment whose title names no file and lines: {c['title']!r}")
                continue
            path, lines = got
            if not _same_code(c["text"], lines):
                found.append(f"{c['title']!r} is not what {path} has at those lines")
            first = int(c["title"].rsplit("lines ", 1)[1].split("–")[0])
            if c["first_line"] != first:
                found.append(f"{c['title']!r} is numbered from {c['first_line']}")
            if not path.startswith(f"tutorial/stage{n}_"):
                found.append(f"{c['title']!r} is not from stage {n}'s file")
        if n > 1:
            if not any(c["highlighted"] for c in fragments):
                found.append("no line highlighted as new since the stage before")
            if not any(f.startswith("What changed since stage") for f in p["folded"]):
                found.append("no diff from the stage before")
            traces = [c for c in p["code"] if "--trace" in c["title"]]
            if not traces or not re.search(
                rf"^stage {n} echo server listening on 127\.0\.0\.1:\d+\nturn 1",
                traces[0]["text"]):
                found.append("no trace of the stage's turns")
        if not p["h2"] or p["h2"][-1] != "Things to try":
            found.append(f"does not end with things to try (last heading {p['h2'][-1:]})")
    turn = [d for url in stage_pages for d in visits[url].probe["diagrams"] if d["rendered"]
            and all(w in d["text"] for w in ("timeout", "poll", "dispatch", "wakes", "timers"))]
    assert turn, "no diagram of one turn (timeout, poll, dispatch, wakes, timers)"
    assert not any(bad.values()), "tutorial pages that do not teach in steps:\n" + _problems(bad)


@pytest.mark.rule("DOCS-12")
def test_guides_quote_the_example_files(site: Site, visits: dict[str, Visit]) -> None:
    guides = [u for u in visits if "/guides/" in u]
    assert guides, "no guides"
    quoted = 0
    for url in guides:
        code = [c for c in visits[url].probe["code"]
                if ".py ·" in c["title"] or "language-python" in c["classes"]]
        quoted += len(code)
        for c in code:
            got = _file_lines(c["title"])
            assert got is not None, f"{url}: code not taken from a file: {c['text'][:60]!r}"
            assert _same_code(c["text"], got[1]), f"{url}: {c['title']!r} differs from the file"
            assert c["width"] <= c["room"] + 1, f"{url}: {c['title']!r} is cut off"
    assert quoted >= 4, f"only {quoted} pieces of example code in the guides"


@pytest.mark.rule("DOCS-11")
def test_ids_and_paths_in_tables_never_break_mid_token(visits: dict[str, Visit]) -> None:
    bad = {url: v.probe["broken_tokens"] for url, v in visits.items()}
    assert not any(bad.values()), "tokens broken across lines in table cells:\n" + _problems(bad)


@pytest.mark.rule("DOCS-11")
def test_the_rules_page_shows_each_rule_beside_its_tests(
    site: Site, visits: dict[str, Visit]
) -> None:
    text = re.sub(r"\s+", " ", visits[site.base + "spec/traceability/"].probe["text"])
    for rid, rule in ruletrace.collect(ROOT).defined().items():
        line = (ROOT / rule.page).read_text(encoding="utf-8").splitlines()[rule.line - 1]
        words = re.sub(r"^\s*[-*]\s+\*\*[^*]+\*\*\s*", "", line)
        words = re.sub(r"[`*]|\[([^]]*)\]\([^)]*\)", r"\1", words).replace(" -- ", " — ")
        first = words.split()[:4]
        assert f"{rid} " + " ".join(first) in text, f"{rid}: its text is not shown: {first}"


@pytest.mark.rule("DOCS-11")
def test_diagrams_are_legible_on_a_phone(site: Site, browser: cdp.Browser,
                                         visits: dict[str, Visit]) -> None:
    with_diagrams = [u for u, v in visits.items() if v.probe["diagrams"]]
    assert with_diagrams, "no page with a diagram"
    # And the pages a newcomer reads first, on the phone they read them on.
    with_diagrams += [u for u in visits if u == site.base or "/tutorial/" in u
                      or u.endswith("getting-started/")]
    with_diagrams = list(dict.fromkeys(with_diagrams))
    bad: dict[str, list[str]] = {}
    browser.call("Emulation.setDeviceMetricsOverride",
                 {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        for url in with_diagrams:
            v = _visit(browser, site, url)
            bad[url] = [
                f"{d['kind']} at 390 px: smallest text {d['min_font_px']:.1f} px (11 px wanted)"
                for d in v.probe["diagrams"]
                if not d["rendered"] or (d["min_font_px"] or 0) < 11
            ]
            bad[url] += [
                f"labels drawn over each other: {a['lines']!r} and {b['lines']!r}"
                for d in v.probe["diagrams"] if d["rendered"]
                for i, a in enumerate(d["edge_labels"]) for b in d["edge_labels"][i + 1 :]
                if _overlap(a, b)
            ]
            if v.probe["page_width"] > 391:
                bad[url].append(f"the page is {v.probe['page_width']} px wide: it scrolls sideways")
    finally:
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    assert not any(bad.values()), "diagrams too small to read on a phone:\n" + _problems(bad)


@pytest.mark.rule("DOCS-13")
def test_every_reader_is_led_to_a_start(site: Site, visits: dict[str, Visit]) -> None:
    def targets(url: str) -> set[str]:
        return {link["href"].split("#")[0].removeprefix(site.base)
                for link in visits[url].probe["links"]}

    home = targets(site.base)
    for page in ("getting-started/", "examples/echo/", "guides/back-pressure/",
                 "tutorial/", "design/", "spec/", "spec/traceability/", "changelog/",
                 "contributing/"):
        assert page in home, f"the home page does not lead to {page}"
    start = visits[site.base + "getting-started/"].probe["text"]
    assert "evio.serve(" in start and "git+" in start, "Getting started has no install and server"
    assert "make test" not in start, "Getting started is the user's path: make test is contributing"
    assert "tutorial/" in targets(site.base + "getting-started/")
    assert "make test" in visits[site.base + "contributing/"].probe["text"]
    design = visits[site.base + "design/"]
    cited = set(re.findall(r"(?:issue|PR) #(\d+)", design.probe["text"]))
    linked = {m.group(1) for link in design.probe["links"]
              if (m := re.search(r"github\.com/tidwall/evio/(?:issues|pull)/(\d+)", link["href"]))}
    assert cited and cited <= linked, f"Go issues cited but not linked: {cited - linked}"
    assert "goroutine" in design.probe["text"] and "share nothing" in design.probe["text"]
