"""The conformance plugin, and the fixtures shared by the suite.

Theory of operation
-------------------
With no option, a run is the reference run: this project's ``evio`` under
test, every test collected, as always. Three options make it a
*conformance run* against another target (docs/conformance/run.md):

* ``--evio-impl=PACKAGE`` (or the ``EVIO_IMPL`` environment variable) names
  the package offering the evio API; tests reach it only through
  ``spec_tests/implementation.py``, and child processes inherit the choice;
* ``--evio-target=conformance/targets/NAME`` reads that target's manifest
  (`targets.load`): its package, the features it lacks, its expected
  failures and skips;
* ``--evio-results=PATH`` says where the per-rule results go (by default
  ``conformance/results/NAME.json`` in a conformance run; nowhere otherwise).

At collection each test is classified (`_classify`): tests about this
implementation only (``@pytest.mark.impl_detail``, or naming a rule its page
tags *(choice)*) and tests about the project itself
(``@pytest.mark.project``) are deselected from another target's run; a test
needing a feature the target lacks is kept but marked *not applicable*
(a skip whose reason starts ``not applicable:``); manifest entries become
xfail or skip marks. Outcomes are gathered per test and folded into one
verdict per rule when the session ends (`targets.write_results`).

This module owns the options; `features` owns the feature names, `targets`
the manifest format and the results file.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import features
import pytest
import targets

ROOT = Path(__file__).resolve().parent.parent
CHILDPATH = ROOT / "conformance" / "childpath"
sys.path.insert(0, str(ROOT / "tools"))

import ruletrace  # noqa: E402

# The wire profiles' options and markers (docs/spec/wire-targets.md).
pytest_plugins = ["wire"]


class _Run:
    """What the plugin knows about this run (one per session)."""

    def __init__(self) -> None:
        self.conformance = False
        self.reference = True
        self.impl = "evio"
        self.manifest: targets.Manifest | None = None
        self.results: Path | None = None
        self.lacks: set[str] = set()
        self.pollers: list[str] | None = None
        self.families: list[str] | None = None
        self.cases: dict[str, targets.Case] = {}
        self.rules: dict[str, dict[str, str]] = {}
        self.started = time.time()


RUN = _Run()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("evio", "evio conformance (docs/conformance/run.md)")
    g.addoption("--evio-impl", metavar="PACKAGE", default=None,
                help="run the suite against this package instead of evio "
                     "(also: the EVIO_IMPL environment variable)")
    g.addoption("--evio-target", metavar="DIR", default=None,
                help="a conformance target: its directory under conformance/targets/, "
                     "or its manifest.toml")
    g.addoption("--evio-results", metavar="PATH", default=None,
                help="write the per-rule results here (default in a conformance run: "
                     "conformance/results/NAME.json)")
    g.addoption("--evio-pollers", metavar="LIST", default=None,
                help="comma-separated pollers to run the poller cases on (default: all)")
    g.addoption("--evio-families", metavar="LIST", default=None,
                help="comma-separated families (tcp4,tcp6,unix) to run (default: all)")


def _prepend_env_path(var: str, path: Path) -> None:
    old = os.environ.get(var)
    os.environ[var] = str(path) + (os.pathsep + old if old else "")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "feature(*names): features (spec_tests/features.py) "
                            "this test needs beyond those derived from its rules")
    config.addinivalue_line("markers", "impl_detail: checks this implementation's internals "
                            "or choices; never run against another target")
    config.addinivalue_line("markers", "project: checks the project itself (site, "
                            "traceability); never part of a conformance run")
    config.addinivalue_line("markers", "wire: a black-box test of an example over the wire; "
                            "the only kind a wire target runs")
    target = config.getoption("evio_target")
    impl = config.getoption("evio_impl") or os.environ.get("EVIO_IMPL") or None
    m = targets.load(target) if target else None
    RUN.manifest = m
    if m is not None:
        if m.kind == "api":
            impl = impl or m.impl
        if m.pythonpath is not None:
            sys.path.insert(0, str(m.pythonpath))
            _prepend_env_path("PYTHONPATH", m.pythonpath)
        RUN.lacks = set(m.lacks)
    RUN.conformance = m is not None or impl is not None
    RUN.impl = impl or "evio"
    RUN.reference = RUN.impl == "evio"
    os.environ["EVIO_IMPL"] = RUN.impl
    if not RUN.reference:
        _prepend_env_path("PYTHONPATH", CHILDPATH)
    for opt, attr in (("evio_pollers", "pollers"), ("evio_families", "families")):
        v = config.getoption(opt)
        if v:
            setattr(RUN, attr, [x.strip() for x in v.split(",") if x.strip()])
    results = config.getoption("evio_results")
    if results:
        RUN.results = Path(results)
    elif RUN.conformance:
        name = m.name if m is not None else RUN.impl
        RUN.results = targets.RESULTS_DIR / f"{name}.json"
    trace = ruletrace.collect(ROOT)
    RUN.rules = {rid: {"page": r.page, "kind": r.kind} for rid, r in trace.defined().items()}


def pytest_report_header(config: pytest.Config) -> list[str]:
    from harness import POLLERS

    lines = [f"evio pollers under test: {', '.join(POLLERS)}"]
    if RUN.conformance:
        name = RUN.manifest.name if RUN.manifest else RUN.impl
        lines.append(f"conformance target: {name} (package {RUN.impl}); results -> "
                     f"{RUN.results}")
    return lines


# --------------------------------------------------------------------------
# Parametrising: every poller, every family (of the implementation under test)


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give the ``poller`` and ``family`` fixtures their values, once.

    They can only be known after `pytest_configure` chose the implementation
    (its ``available_pollers()``), so the fixtures are declared with a
    placeholder and their definitions get the real values here, before
    pytest's own fixture parametrisation reads them: test ids stay as they
    always were (``test_x[epoll-tcp4]``).
    """
    from harness import FAMILIES, POLLERS

    for name, values in (("poller", POLLERS), ("family", FAMILIES)):
        for fixturedef in metafunc._arg2fixturedefs.get(name, ()):
            if fixturedef.params == (_UNSET,):
                fixturedef.params = tuple(values)  # type: ignore[misc]


_UNSET = "<set by pytest_generate_tests>"


@pytest.fixture(params=[_UNSET])
def poller(request: pytest.FixtureRequest) -> str:
    """Each poller backend this machine has (as the implementation reports them)."""
    return str(request.param)


@pytest.fixture(params=[_UNSET])
def family(request: pytest.FixtureRequest) -> str:
    """tcp on 127.0.0.1, tcp on ::1, and a unix socket."""
    return str(request.param)


@pytest.fixture
def addr(family: str, tmp_path: Path) -> str:
    """An ephemeral listen address of the family under test."""
    from harness import listen_address

    return listen_address(family, tmp_path)


# --------------------------------------------------------------------------
# Collection: what applies to the target


def item_rules(item: pytest.Item) -> tuple[str, ...]:
    """The rule ids a collected test names (its own, its class's, its module's)."""
    out: list[str] = []
    for mark in item.iter_markers("rule"):
        out += [str(a) for a in mark.args]
    return tuple(dict.fromkeys(out))


def item_features(item: pytest.Item, rules: tuple[str, ...]) -> list[str]:
    """Every feature a test needs: from its rules, its parameters and its marks."""
    need: list[str] = []
    for rid in rules:
        f = features.prefix_feature(rid)
        if f:
            need.append(f)
        if rid in features.RULE_FEATURES:
            need.append(features.RULE_FEATURES[rid])
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(isinstance(v, str) and v in features.WRITE_HOOKS for v in params.values()):
        need.append("write-hooks")
    if "poller" in params and isinstance(params["poller"], str):
        need.append(f"poller:{params['poller']}")
    if "family" in params and isinstance(params["family"], str):
        need.append(f"family:{params['family']}")
    if item.get_closest_marker("wire") is not None or item.path.name in EXAMPLE_FILES:
        need.append("examples")  # it starts an example program on the implementation
    for mark in item.iter_markers("feature"):
        names = [str(a) for a in mark.args]
        features.check(names, f"{item.nodeid}: @pytest.mark.feature")
        need += names
    return list(dict.fromkeys(need))


EXAMPLE_FILES = frozenset({"test_examples.py", "test_examples_more.py", "test_example_tls.py",
                           "test_attacks.py"})
"""Test files whose every test starts an example program (feature ``examples``); in
test_http.py and test_redis.py the ``@pytest.mark.wire`` tests do."""


PROJECT_FILES = frozenset({"test_site.py", "test_traceability.py", "test_tutorial.py"})
"""Test files about the project itself (the site, the spec/test tracing, the
tutorial's own programs): as if every test in them were marked ``project``."""


def _classify(item: pytest.Item, rules: tuple[str, ...]) -> str | None:
    """Why ``item`` is no part of this target's run, or None if it is."""
    if item.get_closest_marker("project") is not None or item.path.name in PROJECT_FILES:
        return "about the project itself"
    wire = RUN.manifest is not None and RUN.manifest.kind == "wire"
    if RUN.reference and not wire:
        return None
    if item.get_closest_marker("impl_detail") is not None:
        return "about the reference implementation only"
    choices = [r for r in rules if RUN.rules.get(r, {}).get("kind") == ruletrace.CHOICE]
    if choices:
        return f"checks this implementation's choice ({', '.join(choices)})"
    if wire and item.get_closest_marker("wire") is None:
        return "an API test (this target is run on the wire)"
    return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    m = RUN.manifest
    for item in items:
        rules = item_rules(item)
        params = getattr(getattr(item, "callspec", None), "params", {})
        other_poller = RUN.pollers is not None and params.get("poller") not in (None, *RUN.pollers)
        other_family = RUN.families is not None and params.get("family") not in (
            None, *RUN.families)
        if other_poller or other_family:
            dropped.append(item)
            if m is not None:
                m.match(item.nodeid, rules)  # left out of this run, so an entry for it is not stale
            continue
        if RUN.conformance:
            why = _classify(item, rules)
            if why is not None:
                dropped.append(item)
                RUN.cases[item.nodeid] = targets.Case(item.nodeid, rules, "na", why)
                continue
        keep.append(item)
        RUN.cases[item.nodeid] = targets.Case(item.nodeid, rules)
        if not RUN.conformance:
            continue
        missing = [f for f in item_features(item, rules) if f in RUN.lacks]
        if missing:
            item.add_marker(pytest.mark.skip(
                reason=f"{targets_na()}{', '.join(missing)}"))
            continue
        if m is None:
            continue
        for entry in m.match(item.nodeid, rules):
            if entry.kind == "skip":
                item.add_marker(pytest.mark.skip(reason=f"skipped by manifest: {entry.reason}"))
            else:
                item.add_marker(pytest.mark.xfail(reason=entry.reason, strict=entry.strict,
                                                  run=True))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    if m is not None:
        for entry in m.stale():
            warnings.warn(f"{m.path}: {entry.label} matches no collected test", stacklevel=1)


def targets_na() -> str:
    from implementation import NOT_APPLICABLE

    return NOT_APPLICABLE


# --------------------------------------------------------------------------
# Outcomes and results


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    case = RUN.cases.get(report.nodeid)
    if case is None:
        return
    wasxfail = getattr(report, "wasxfail", None)
    if report.skipped:
        if wasxfail is not None:
            case.outcome, case.reason = "xfailed", str(wasxfail)
            return
        reason = _skip_reason(report)
        na = targets_na()
        if reason.startswith(na):
            case.outcome, case.reason = "na", reason[len(na):]
        else:
            case.outcome, case.reason = "skipped", reason
        return
    if report.failed:
        # A strict xfail that passed is a failure of the run, and a pass of its rule.
        strict_xpass = report.when == "call" and str(report.longrepr).startswith(
            "[XPASS(strict)]")
        case.outcome = "xpassed" if strict_xpass else "failed"
        return
    if report.when == "call":
        case.outcome = "xpassed" if wasxfail is not None else "passed"


def _skip_reason(report: pytest.TestReport) -> str:
    lr: Any = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if RUN.results is None or not RUN.cases or hasattr(session.config, "workerinput"):
        return
    from harness import FAMILIES, POLLERS

    m = RUN.manifest
    header = {
        "target": m.name if m else RUN.impl,
        "kind": m.kind if m else "api",
        "impl": RUN.impl,
        "description": m.description if m else "",
        "manifest": (str(m.path.resolve().relative_to(ROOT))
                     if m and m.path.resolve().is_relative_to(ROOT) else ""),
        "command": "python -m pytest " + shlex.join(sys.argv[1:]) if sys.argv else "",
        "pollers": RUN.pollers or list(POLLERS),
        "families": RUN.families or list(FAMILIES),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "seconds": round(time.time() - RUN.started),
        "exit_status": int(exitstatus),
    }
    if m is not None and m.kind == "wire":  # what was run, and where it came from
        import wire

        header["wire"] = wire.describe()
        header["impl"] = ""  # a program, not a package: see header["wire"]["commands"]
        header["pollers"], header["families"] = [], []  # the target picks its own
        names = sorted({v for c in m.commands.values()
                        for v in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", c)})
        header["command"] = "".join(f"{v}=... " for v in names) + str(header["command"])
        header.update({k: m.raw["target"][k] for k in ("source", "built")
                       if k in m.raw["target"]})
    targets.write_results(RUN.results, header, list(RUN.cases.values()), RUN.rules)
