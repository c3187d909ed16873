"""The conformance suite itself: options, manifests, verdicts, and whether it
tells right from wrong (docs/spec/conformance.md).

Each test runs pytest on a small part of the suite in a child process,
against a copy of evio made for the test (`tools/conformance_copy.py`), on
one poller and one family so that it stays quick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import targets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import conformance_copy  # noqa: E402

pytestmark = pytest.mark.project
TIMEOUT = 240

# One wake test: quick when wakes work, 10 s (the harness's deadline) when not.
WAKE_TEST = "spec_tests/test_wake.py::test_wake_from_another_thread_answers_with_data_none"
WAKE_RULES = ("WAKE-1", "WAKE-2")


@pytest.fixture(scope="module")
def impls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``evio_copy`` (exact) and ``evio_mutant`` (wake broken)."""
    d = tmp_path_factory.mktemp("impls")
    conformance_copy.make_copy(d, "evio_copy")
    conformance_copy.make_copy(d, "evio_mutant", "wake")
    return d


def run(impls: Path, *args: str, results: Path | None = None,
        env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str],
                                                   dict[str, Any]]:
    """Run pytest on part of the suite; return the process and its results.

    A conformance run is always given ``results`` (a temporary file): left to
    itself it would write conformance/results/NAME.json in the repository.
    """
    assert results is not None or not any(a.startswith("--evio-") and "pollers" not in a
                                          and "families" not in a for a in args)
    e = dict(os.environ, **(env or {}))
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(impls), e.get("PYTHONPATH")]))
    e.pop("EVIO_IMPL", None)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--evio-pollers=epoll,poll", "--evio-families=tcp4", *args]
    if results is not None:
        argv.append(f"--evio-results={results}")
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                          env=e)
    doc = json.loads(results.read_text()) if results is not None and results.exists() else {}
    return proc, doc


def manifest(tmp_path: Path, body: str, name: str = "t") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "manifest.toml").write_text(textwrap.dedent(body))
    return d


# ------------------------------------------------------------ the options


@pytest.mark.rule("CONF-1", "CONF-4")
def test_no_option_collects_everything_and_another_target_not_the_project(impls: Path) -> None:
    files = ["spec_tests/test_wake.py", "spec_tests/test_traceability.py"]
    plain, _ = run(impls, "--collect-only", *files)
    other, _ = run(impls, "--collect-only", "--evio-impl=evio_copy", *files,
                   results=impls / "collected.json")
    ids = [ln for ln in plain.stdout.splitlines() if "::" in ln]
    other_ids = [ln for ln in other.stdout.splitlines() if "::" in ln]
    assert any("test_traceability.py" in i for i in ids), plain.stdout[-2000:]
    assert other_ids and not any("test_traceability.py" in i for i in other_ids)
    assert [i for i in ids if "test_wake.py" in i] == other_ids


@pytest.mark.rule("CONF-1", "CONF-6", "CONF-7")
def test_an_exact_copy_passes_what_evio_passes(impls: Path, tmp_path: Path) -> None:
    proc, doc = run(impls, "--evio-impl=evio_copy", WAKE_TEST, results=tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert doc["impl"] == "evio_copy"
    for rid in WAKE_RULES:
        assert doc["rules"][rid]["status"] == "pass", doc["rules"][rid]
        # One rule, counted once: its cases are summed, not listed as rules.
        assert doc["rules"][rid]["cases"] == doc["rules"][rid]["passed"] >= 1
    assert doc["totals"]["pass"] == len(WAKE_RULES)


@pytest.mark.rule("CONF-1", "CONF-7")
def test_a_copy_with_wake_broken_fails_the_wake_rules(impls: Path, tmp_path: Path) -> None:
    proc, doc = run(impls, "--evio-impl=evio_mutant", "--evio-pollers=epoll", WAKE_TEST,
                    results=tmp_path / "r.json")
    assert proc.returncode == 1, proc.stdout[-3000:]
    for rid in WAKE_RULES:
        assert doc["rules"][rid]["status"] == "fail", doc["rules"][rid]
        assert doc["rules"][rid]["failures"]


@pytest.mark.rule("CONF-1")
def test_child_processes_run_the_implementation_under_test(impls: Path) -> None:
    # The wake example runs in a child process: broken wakes there mean the
    # child imported the mutant, not this project's evio.
    test = ("spec_tests/test_examples_more.py::"
            "test_wake_server_exec_answers_later_and_echo_at_once[epoll]")
    good, _ = run(impls, "--evio-impl=evio_copy", test, results=impls / "good.json")
    bad, _ = run(impls, "--evio-impl=evio_mutant", test, results=impls / "bad.json")
    assert good.returncode == 0, good.stdout[-3000:]
    assert bad.returncode == 1, bad.stdout[-3000:]


# ------------------------------------------------------------ manifests


@pytest.mark.rule("CONF-2")
@pytest.mark.parametrize(("body", "complaint"), [
    ("[target]\nname='x'\nkind='api'\nimpl='evio'\n[features]\nlacks=['wakes']\n",
     "unknown feature(s) wakes"),
    ("[target]\nname='x'\nkind='api'\nimpl='evio'\ncolour='red'\n", "unknown key(s) ['colour']"),
    ("[target]\nname='x'\nkind='api'\nimpl='evio'\n[extra]\n", "unknown section(s) ['extra']"),
    ("[target]\nname='x'\nkind='api'\n", "impl (the package to import) is required"),
    ("[target]\nname='x'\nkind='api'\nimpl='evio'\n[[xfail]]\ntest='spec_tests/x.py'\n",
     "a reason is required"),
    ("[target]\nname='x'\nkind='api'\nimpl='evio'\n[[skip]]\nreason='r'\n",
     "give exactly one of test"),
    ("[target\n", "not valid TOML"),
])
def test_a_bad_manifest_is_an_error_naming_what_is_wrong(tmp_path: Path, body: str,
                                                         complaint: str) -> None:
    d = manifest(tmp_path, body)
    with pytest.raises(targets.ManifestError) as e:
        targets.load(d)
    assert complaint in str(e.value) and str(d / "manifest.toml") in str(e.value)


@pytest.mark.rule("CONF-2")
def test_every_committed_manifest_loads() -> None:
    found = sorted(targets.TARGETS_DIR.glob("*/manifest.toml"))
    assert any(p.parent.name == "evio" for p in found)
    for path in found:
        m = targets.load(path)
        assert m.name == path.parent.name, f"{path}: name {m.name!r} is not its directory's"


@pytest.mark.rule("CONF-3", "CONF-6")
def test_a_lacked_feature_makes_tests_not_applicable(impls: Path, tmp_path: Path) -> None:
    d = manifest(tmp_path, """
        [target]
        name = "nowake"
        kind = "api"
        impl = "evio_mutant"
        [features]
        lacks = ["wake", "poller:poll"]
    """)
    proc, doc = run(impls, f"--evio-target={d}", WAKE_TEST, results=tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout[-3000:]
    for rid in WAKE_RULES:
        v = doc["rules"][rid]
        assert v["status"] == "not-applicable" and "wake" in v["reason"], v


@pytest.mark.rule("CONF-3", "CONF-4")
def test_a_missing_hook_makes_tests_not_applicable(impls: Path, tmp_path: Path) -> None:
    hooks = impls / "evio_copy" / "conformance_hooks.py"
    away = impls / "conformance_hooks.py.away"
    hooks.rename(away)
    try:
        proc, doc = run(impls, "--evio-impl=evio_copy",
                        "spec_tests/test_ticker.py::test_idle_server_without_ticker_sleeps_in_poll",
                        "spec_tests/test_loop_lifecycle.py::test_a_change_the_table_does_not_allow_is_refused",
                        results=tmp_path / "r.json")
    finally:
        away.rename(hooks)
    assert proc.returncode == 0, proc.stdout[-3000:]
    v = doc["rules"]["TICK-5"]  # its test counts the loop's polls through make_poller
    assert (v["status"], v["reason"]) == ("not-applicable", "hook:make_poller"), v
    # LOOP-20 is a choice: not the copy's to show, hook or no hook.
    v = doc["rules"]["LOOP-20"]
    assert v["status"] == "not-applicable" and "choice" in v["reason"], v


@pytest.mark.rule("CONF-5", "CONF-6")
def test_xfail_entries_expect_failure_and_report_a_pass(impls: Path, tmp_path: Path) -> None:
    body = """
        [target]
        name = "{name}"
        kind = "api"
        impl = "{impl}"
        [[xfail]]
        test = "{test}"
        reason = "wakes are lost"
        [[skip]]
        test = "spec_tests/test_wake.py::no_such_test"
        reason = "stale"
    """
    d = manifest(tmp_path, body.format(name="m", impl="evio_mutant", test=WAKE_TEST), "m")
    proc, doc = run(impls, f"--evio-target={d}", "--evio-pollers=epoll", WAKE_TEST,
                    results=tmp_path / "m.json")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert doc["rules"]["WAKE-2"]["status"] == "xfail"
    assert doc["rules"]["WAKE-2"]["reason"] == "wakes are lost"
    assert "matches no collected test" in proc.stdout + proc.stderr
    d = manifest(tmp_path, body.format(name="c", impl="evio_copy", test=WAKE_TEST), "c")
    proc, doc = run(impls, f"--evio-target={d}", WAKE_TEST, results=tmp_path / "c.json")
    assert proc.returncode == 1, "an expected failure that passes must fail the run"
    assert doc["unexpected_passes"], doc


@pytest.mark.rule("CONF-6")
def test_a_rule_with_passing_and_failing_cases_is_partial() -> None:
    cases = [targets.Case(f"t[{i}]", ("X-1",), outcome) for i, outcome in
             enumerate(["passed", "passed", "failed", "na"])]
    v = targets.rule_verdict(cases)
    assert (v["status"], v["reason"], v["passed"], v["failed"]) == ("partial", "2 of 3", 2, 1)
    v = targets.rule_verdict([targets.Case("t", ("X-1",), "na", "hook:lifecycle")])
    assert (v["status"], v["reason"]) == ("not-applicable", "hook:lifecycle")
