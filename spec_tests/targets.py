"""Conformance targets: their manifests, and the results of a run against one.

Theory of operation
-------------------
A *target* is an implementation the suite runs against. Each has one
manifest, ``conformance/targets/NAME/manifest.toml``::

    [target]
    name = "mine"
    kind = "api"                # "api": run with --evio-impl; "wire": with --server-cmd
    impl = "mine_evio"          # api: the package to import
    pythonpath = "src"          # optional, relative to the manifest
    description = "..."

    [features]
    lacks = ["udp", "poller:kqueue"]     # names from spec_tests/features.py

    [[xfail]]                   # run; a failure is expected, a pass is reported
    test = "spec_tests/test_wake.py::test_wake_coalesces"   # a test-id prefix
    reason = "wakes are not coalesced yet"

    [[skip]]                    # not run at all
    rule = "REL-7"              # or every test of one rule
    reason = "hangs the loop"

`load` reads and checks a manifest (unknown keys and unknown features are
errors, so a typo cannot make tests vanish); `Manifest.match` tells which
entries a test id matches, and remembers it, so entries that match no
collected test are reported as stale.

`Results` gathers the outcome of every test of the run and folds them into
one verdict per rule (`rule_verdict`): a rule counts once however many
parametrised cases check it. `Results.write` stores the JSON that the docs
site renders (``tools/conformance_hooks.py``).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import features

ROOT = Path(__file__).resolve().parent.parent
TARGETS_DIR = ROOT / "conformance" / "targets"
RESULTS_DIR = ROOT / "conformance" / "results"

_TOP_KEYS = {"target", "features", "xfail", "skip", "commands", "options", "run"}
_TARGET_KEYS = {"name", "kind", "impl", "pythonpath", "description", "source", "built"}
_ENTRY_KEYS = {"test", "rule", "reason", "strict"}


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the key."""


@dataclass
class Entry:
    """One ``[[xfail]]`` or ``[[skip]]`` entry.

    Attributes:
        kind: ``"xfail"`` or ``"skip"``.
        test: A test-id prefix (``spec_tests/test_x.py::test_y``), or "".
        rule: A rule id whose every test the entry covers, or "".
        reason: Why, as the results and the report show it.
        strict: For xfail: a pass fails the run (default True).
        matched: How many collected tests it matched.
    """

    kind: str
    test: str
    rule: str
    reason: str
    strict: bool = True
    matched: int = 0

    def matches(self, nodeid: str, rules: tuple[str, ...]) -> bool:
        """Whether this entry covers the test ``nodeid`` naming ``rules``."""
        if self.rule:
            return self.rule in rules
        p = self.test
        if not nodeid.startswith(p):
            return False
        return (len(nodeid) == len(p) or p[-1] in "/:[" or nodeid[len(p)] in "[:")

    @property
    def label(self) -> str:
        return f"[[{self.kind}]] {self.test or 'rule = ' + self.rule}"


@dataclass
class Manifest:
    """A target's manifest, checked.

    Attributes:
        path: The manifest file.
        name: The target's name (its results file is ``results/NAME.json``).
        kind: ``"api"`` or ``"wire"``.
        impl: For api targets, the package under test.
        pythonpath: A directory to put on ``sys.path`` and PYTHONPATH, or None.
        description: One line for the site.
        lacks: Features the target does not have.
        entries: The xfail and skip entries, in file order.
        commands: For wire targets, example name -> command with ``{port}``.
        options: For wire targets, feature -> the target's own flags.
        run: What ``make conformance`` (tools/conformance_run.py) passes:
            ``pollers``, ``families`` (the subset CI runs), ``args``.
        raw: The whole parsed TOML, for sections other owners add.
    """

    path: Path
    name: str
    kind: str
    impl: str
    pythonpath: Path | None
    description: str
    lacks: tuple[str, ...]
    entries: list[Entry]
    commands: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def match(self, nodeid: str, rules: tuple[str, ...]) -> list[Entry]:
        """The entries covering this test (each one's ``matched`` goes up)."""
        found = [e for e in self.entries if e.matches(nodeid, rules)]
        for e in found:
            e.matched += 1
        return found

    def stale(self) -> list[Entry]:
        """Entries that matched no collected test."""
        return [e for e in self.entries if not e.matched]


def manifest_path(where: str | Path) -> Path:
    """A target directory, a manifest file, or a bare target name -> the manifest."""
    p = Path(where)
    if p.is_dir():
        p = p / "manifest.toml"
    elif not p.exists() and not p.suffix and (TARGETS_DIR / str(where)).is_dir():
        p = TARGETS_DIR / str(where) / "manifest.toml"
    if not p.is_file():
        raise ManifestError(f"{where}: no manifest.toml there")
    return p.resolve()


def load(where: str | Path) -> Manifest:
    """Read and check a target's manifest.

    Args:
        where: The target's directory, its manifest file, or its name under
            ``conformance/targets/``.

    Returns:
        The checked manifest.

    Raises:
        ManifestError: the file is missing, is not TOML, has an unknown key,
            a missing or bad value, or names an unknown feature.
    """
    path = manifest_path(where)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{path}: not valid TOML: {e}") from None

    def bad(msg: str) -> ManifestError:
        return ManifestError(f"{path}: {msg}")

    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise bad(f"unknown section(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    t = raw.get("target")
    if not isinstance(t, dict):
        raise bad("missing [target] table")
    unknown = set(t) - _TARGET_KEYS
    if unknown:
        raise bad(f"[target]: unknown key(s) {sorted(unknown)}; known: {sorted(_TARGET_KEYS)}")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise bad("[target] name must be a non-empty string")
    kind = t.get("kind")
    if kind not in ("api", "wire"):
        raise bad(f"[target] kind must be \"api\" or \"wire\", not {kind!r}")
    impl = t.get("impl", "")
    if kind == "api" and (not isinstance(impl, str) or not impl):
        raise bad("[target] impl (the package to import) is required for kind = \"api\"")
    pythonpath = None
    if "pythonpath" in t:
        pythonpath = (path.parent / str(t["pythonpath"])).resolve()
        if not pythonpath.is_dir():
            raise bad(f"[target] pythonpath {t['pythonpath']!r} is not a directory")
    lacks = raw.get("features", {}).get("lacks", [])
    if set(raw.get("features", {})) - {"lacks"}:
        raise bad("[features]: the only key is lacks")
    if not isinstance(lacks, list) or not all(isinstance(x, str) for x in lacks):
        raise bad("[features] lacks must be a list of strings")
    try:
        features.check(lacks, f"{path}: [features] lacks")
    except ValueError as e:
        raise ManifestError(str(e)) from None
    entries: list[Entry] = []
    for kind_ in ("xfail", "skip"):
        for i, entry in enumerate(raw.get(kind_, [])):
            where_ = f"[[{kind_}]] #{i + 1}"
            if not isinstance(entry, dict):
                raise bad(f"{where_}: must be a table")
            unknown = set(entry) - _ENTRY_KEYS
            if unknown:
                raise bad(f"{where_}: unknown key(s) {sorted(unknown)}")
            test, rule = entry.get("test", ""), entry.get("rule", "")
            if bool(test) == bool(rule):
                raise bad(f"{where_}: give exactly one of test (a test-id prefix) or rule")
            if not isinstance(entry.get("reason"), str) or not entry["reason"].strip():
                raise bad(f"{where_}: a reason is required")
            entries.append(Entry(kind_, str(test), str(rule), entry["reason"].strip(),
                                 bool(entry.get("strict", True))))
    return Manifest(
        path=path, name=name, kind=str(kind), impl=str(impl), pythonpath=pythonpath,
        description=str(t.get("description", "")), lacks=tuple(lacks), entries=entries,
        commands=dict(raw.get("commands", {})), options=dict(raw.get("options", {})),
        run=dict(raw.get("run", {})), raw=raw,
    )


# --------------------------------------------------------------------------
# Results

PASS, FAIL, XFAIL, PARTIAL, NA, SKIP, NOT_RUN = (
    "pass", "fail", "xfail", "partial", "not-applicable", "skip", "not-run")
STATUSES = (PASS, FAIL, XFAIL, PARTIAL, NA, SKIP, NOT_RUN)


@dataclass
class Case:
    """The outcome of one collected test (one parametrised case).

    ``outcome`` is passed, failed, xfailed, xpassed, na (not applicable),
    skipped (by the manifest or by the test itself).
    """

    nodeid: str
    rules: tuple[str, ...]
    outcome: str = "not-run"
    reason: str = ""


def rule_verdict(cases: list[Case]) -> dict[str, Any]:
    """Fold the cases of one rule into its verdict.

    Returns:
        ``{"status", "passed", "failed", "xfailed", "cases", "reason",
        "failures"}``. pass: every applicable case passed; fail: none did;
        partial: ``passed`` of ``passed + failed`` did; xfail: its failures
        are all expected; not-applicable: no case applies (``reason`` names
        the missing features); skip: skipped cases only; not-run: the run
        did not reach any case.
    """
    passed = [c for c in cases if c.outcome in ("passed", "xpassed")]
    failed = [c for c in cases if c.outcome == "failed"]
    xfailed = [c for c in cases if c.outcome == "xfailed"]
    na = [c for c in cases if c.outcome == "na"]
    skipped = [c for c in cases if c.outcome == "skipped"]
    out: dict[str, Any] = {
        "passed": len(passed), "failed": len(failed), "xfailed": len(xfailed),
        "cases": len(cases), "reason": "",
        "failures": sorted(c.nodeid for c in failed),
    }
    if failed:
        out["status"] = PARTIAL if passed else FAIL
        if passed:
            out["reason"] = f"{len(passed)} of {len(passed) + len(failed)}"
    elif xfailed:
        out["status"] = XFAIL
        out["reason"] = "; ".join(sorted({c.reason for c in xfailed}))
        out["failures"] = sorted(c.nodeid for c in xfailed)
    elif passed:
        out["status"] = PASS
    elif na:
        out["status"] = NA
        out["reason"] = ", ".join(sorted({c.reason for c in na}))
    elif skipped:
        out["status"] = SKIP
        out["reason"] = "; ".join(sorted({c.reason for c in skipped}))
    else:
        out["status"] = NOT_RUN
    return out


def write_results(path: Path, header: dict[str, Any], cases: list[Case],
                  rules: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Write one run's results file.

    Args:
        path: Where (``conformance/results/NAME.json``).
        header: target, kind, impl, command, pollers, ... (stored as given).
        cases: Every collected case, run or not applicable.
        rules: Every rule the spec defines -> ``{"page", "kind"}``; a rule
            no case names is ``not-run`` (the run was given a subset).

    Returns:
        The document written.
    """
    by_rule: dict[str, list[Case]] = {rid: [] for rid in rules}
    for c in cases:
        for rid in c.rules:
            by_rule.setdefault(rid, []).append(c)
    verdicts: dict[str, Any] = {}
    for rid, cs in by_rule.items():
        v = rule_verdict(cs) if cs else {
            "status": NOT_RUN, "passed": 0, "failed": 0, "xfailed": 0, "cases": 0,
            "reason": "no test of it was collected in this run", "failures": []}
        v.update(rules.get(rid, {"page": "", "kind": ""}))
        verdicts[rid] = v
    totals: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for v in verdicts.values():
        totals[v["status"]] += 1
    doc = {**header, "totals": totals, "rules": verdicts,
           "unexpected_passes": sorted(c.nodeid for c in cases if c.outcome == "xpassed")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return doc
