"""Facts about the code, computed when the site is built, for the pages to quote.

Theory of operation
-------------------
A sentence such as "an `Events` record has eight callbacks" is true the day
it is written and false the day someone adds a ninth. The pages therefore
never write such counts and lists by hand: they write a placeholder,
``{{ evio.callback_count }}``, and ``tools/docs_hooks.py`` replaces it with
what this module reads from the code, the test markers or the changelog at
build time. A placeholder this module does not know fails the build.

Every fact is read the cheap way: the public classes by import (the API
reference imports them anyway), the tutorial's rule map from the markers on
``spec_tests/test_tutorial.py`` (imported, not run: the module's
parametrizations say which stage each test drives), the release state from
``docs/changelog.md`` and the URLs from ``[project.urls]`` in
``pyproject.toml``, the one place the package metadata uses too.

Everything that turns code into words for the site lives here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
import sys
import tomllib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "FACTS",
    "callbacks",
    "fill",
    "project_urls",
    "release_label",
    "translator_methods",
    "tutorial_rule_map",
    "tutorial_rules",
]

_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
          "ten", "eleven", "twelve")


def number(n: int) -> str:
    """``10`` -> ``"ten"`` (up to twelve; figures beyond)."""
    return _WORDS[n] if 0 <= n < len(_WORDS) else str(n)


def _rst(text: str) -> str:
    """Docstring markup to Markdown: ````x```` -> ```x```, `` `Name` `` stays."""
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _docstring_attributes(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring, name -> text."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    out: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        m = re.match(r"^    (\w+): (.*)$", line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif line.startswith("        ") and name:
            out[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return out


# --------------------------------------------------------------------------
# The library


def callbacks() -> dict[str, str]:
    """Every callback an `evio.Events` may hold, in field order, with its docstring entry."""
    import evio

    docs = _docstring_attributes(evio.Events)
    out = {}
    for f in dataclasses.fields(evio.Events):  # annotations are strings here
        if str(f.type).startswith("Callable["):
            out[f.name] = _rst(docs.get(f.name, ""))
    return out


def translator_methods() -> list[str]:
    """The methods of `evio.Translator` a translator may override."""
    import evio

    return [
        name
        for name, member in vars(evio.Translator).items()
        if inspect.isfunction(member) and not name.startswith("_")
    ]


def callback_table() -> str:
    """A Markdown table: each callback and, from its docstring, when it runs."""
    rows = ["| callback | when it runs, and what it may return |", "| --- | --- |"]
    for name, text in callbacks().items():
        rows.append(f"| `{name}` | {text} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------
# The project


@cache
def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def project_urls() -> dict[str, str]:
    """``[project.urls]``: where the sources and the site live."""
    return dict(_pyproject()["project"].get("urls", {}))


def package_version() -> str:
    """``evio.__version__``, read as text: the version's one source (pyproject reads it too)."""
    text = (ROOT / "evio" / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert m is not None, "evio/__init__.py sets no __version__"
    return m.group(1)


def released() -> bool:
    """Whether ``docs/changelog.md`` records a published release of the current version.

    The changelog says in so many words when the version in
    ``evio/__init__.py`` has "not been tagged or published"; until that
    sentence goes, nothing is installable from PyPI.
    """
    text = (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8")
    return not re.search(r"not been tagged or published", text)


def unreleased_changes() -> bool:
    """Whether the changelog's ``[Unreleased]`` section lists anything."""
    text = (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8")
    m = re.search(r"^## \[Unreleased\]\s*\n(.*?)(?=^## \[|\Z)", text, re.MULTILINE | re.DOTALL)
    return bool(m and re.search(r"^\s*-\s+\S", m.group(1), re.MULTILINE))


def release_label() -> str:
    """What the footer says the pages document."""
    version = package_version()
    name = str(_pyproject()["project"]["name"])
    if unreleased_changes() or not released():
        return f"{name}: the main branch, unreleased (evio.__version__ says {version})"
    return f"{name} {version}"


# --------------------------------------------------------------------------
# The tutorial's rule map, from the markers


@dataclasses.dataclass(frozen=True, slots=True)
class StageRules:
    """What the tutorial tests say about one stage.

    Attributes:
        stage: ``"1"`` .. ``"5"``, ``"5 --worker"`` or ``"evio"``.
        met: Rule ids named by tests the stage passes.
        short: Rule ids named by tests that pin what the stage lacks.
    """

    stage: str
    met: tuple[str, ...]
    short: tuple[str, ...]


def _stage_key(path: str, args: tuple[str, ...] = ()) -> str:
    name = Path(path).stem
    m = re.match(r"stage(\d+)_", name)
    if not m:
        return "evio"
    key = m.group(1)
    return " ".join((key, *args)) if args else key


def _load_tutorial_tests() -> ModuleType:
    sys.path.insert(0, str(ROOT / "spec_tests"))
    try:
        spec = importlib.util.spec_from_file_location(
            "_docs_test_tutorial", ROOT / "spec_tests" / "test_tutorial.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "spec_tests"))


@cache
def tutorial_rules() -> list[StageRules]:
    """Per stage, the rules its tests name, read from ``spec_tests/test_tutorial.py``.

    A test's stages come from its ``stage`` parametrization (``Stage``
    records), its ``name`` parametrization (stage module names) or its
    ``pytest.mark.stage(...)`` marker; ``falls_short=True`` on that marker
    says the test pins something the stage cannot do.

    Raises:
        ValueError: A test that names rules but no stage.
    """
    module = _load_tutorial_tests()
    met: dict[str, dict[str, None]] = {}
    short: dict[str, dict[str, None]] = {}
    for name, fn in vars(module).items():
        if not (name.startswith("test_") and callable(fn)):
            continue
        marks = getattr(fn, "pytestmark", [])
        rules = [r for m in marks if m.name == "rule" for r in m.args]
        keys: list[str] = []
        falls_short = False
        for m in marks:
            if m.name == "parametrize" and m.args[0] == "stage":
                keys += [_stage_key(s.path, s.args) for s in m.args[1]]
            elif m.name == "parametrize" and m.args[0] == "name":
                keys += [_stage_key(v) for v in m.args[1]]
            elif m.name == "stage":
                keys += [_stage_key(v) for v in m.args]
                falls_short = bool(m.kwargs.get("falls_short", False))
        if rules and not keys:
            raise ValueError(f"spec_tests/test_tutorial.py::{name} names rules but no stage")
        for key in keys:
            into = short if falls_short else met
            into.setdefault(key, {}).update(dict.fromkeys(rules))
    order = ["1", "2", "3", "4", "5", "5 --worker", "evio"]
    keys_seen = sorted(
        set(met) | set(short), key=lambda k: (order.index(k) if k in order else 99, k)
    )
    return [
        StageRules(
            k,
            tuple(sorted(met.get(k, {}), key=_rule_order)),
            tuple(sorted(short.get(k, {}), key=_rule_order)),
        )
        for k in keys_seen
    ]


def _rule_order(rid: str) -> tuple[str, int]:
    prefix, _, n = rid.rpartition("-")
    return prefix, int(n)


def tutorial_rule_map() -> str:
    """The Markdown table of :func:`tutorial_rules`."""
    rows = [
        "| stage | rules its tests check, and it meets | rules a test shows it falls short of |",
        "| --- | --- | --- |",
    ]
    for s in tutorial_rules():
        label = "evio's `examples/echo_server.py`" if s.stage == "evio" else s.stage
        label = label.replace("--worker", "`--worker`")
        rows.append(f"| {label} | {', '.join(s.met) or 'none'} | {', '.join(s.short) or 'none'} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------
# The placeholders


def tutorial_sizes() -> str:
    """"from 43 lines (stage 1) to 370 (stage 5)": the stages' lengths."""
    stages = sorted((ROOT / "tutorial").glob("stage*_*.py"))
    sizes = [len(p.read_text(encoding="utf-8").splitlines()) for p in stages]
    return (f"from {sizes[0]} lines (stage 1) to {sizes[-1]} (stage {len(sizes)})")


FACTS: dict[str, Callable[[], str]] = {
    "tutorial_sizes": tutorial_sizes,
    "callback_count": lambda: number(len(callbacks())),
    "callback_names": lambda: ", ".join(f"`{n}`" for n in callbacks()),
    "callback_table": callback_table,
    "translator_method_count": lambda: number(len(translator_methods())),
    "repo_url": lambda: project_urls()["Repository"],
    "site_url": lambda: project_urls()["Documentation"],
    "release_label": release_label,
    "tutorial_rule_map": tutorial_rule_map,
}
"""What a page may write as ``{{ evio.NAME }}``."""

PLACEHOLDER_RE = re.compile(r"\{\{\s*evio\.(\w+)\s*\}\}")


def fill(markdown: str, where: str) -> str:
    """Replace every ``{{ evio.NAME }}`` in ``markdown`` with its fact.

    Raises:
        KeyError: A placeholder names no fact (``where`` says which page).
    """

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in FACTS:
            raise KeyError(f"{where}: no fact called {{{{ evio.{name} }}}} (tools/docs_facts.py)")
        return FACTS[name]()

    return PLACEHOLDER_RE.sub(one, markdown)


def check(repository: str, site: str) -> list[str]:
    """What is wrong with ``[project.urls]`` for a site published from ``repository`` to ``site``.

    Returns:
        One sentence per URL that names something else; empty when both agree.
    """
    urls = project_urls()
    wrong = []
    if urls.get("Repository", "").rstrip("/") != repository.rstrip("/"):
        wrong.append(f"Repository is {urls.get('Repository')!r}, but this is {repository!r}")
    if urls.get("Documentation", "").rstrip("/") != site.rstrip("/"):
        wrong.append(f"Documentation is {urls.get('Documentation')!r}, but Pages serves {site!r}")
    return wrong


if __name__ == "__main__":
    # python3 tools/docs_facts.py --check REPOSITORY_URL SITE_URL (the deploy workflow)
    if len(sys.argv) != 4 or sys.argv[1] != "--check":
        sys.exit("usage: docs_facts.py --check REPOSITORY_URL SITE_URL")
    problems = check(sys.argv[2], sys.argv[3])
    for p in problems:
        print(f"pyproject.toml [project.urls]: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)
