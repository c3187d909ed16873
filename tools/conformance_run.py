"""Run every committed API target's conformance run and check it against its manifest.

Theory of operation
-------------------
Each target under ``conformance/targets/`` has a manifest that declares what
it lacks and what it is known to fail (docs/conformance/run.md). This tool,
``make conformance``, runs the suite once per ``kind = "api"`` target other
than the reference (which the main ``pytest`` run already covers) and fails
when a run differs from what its manifest declares: a failure it does not
list, or a listed failure that now passes (a strict xfail that passes fails
the pytest run). Deleting a line from a manifest therefore turns the run red.

A manifest's ``[run]`` table keeps CI short: ``pollers`` and ``families``
restrict the parametrised cases, ``args`` adds pytest arguments. Results go
to a temporary directory unless ``--write`` is given, which replaces the
committed ``conformance/results/NAME.json``. Wire targets need programs CI
cannot build and are not run here. This module owns only that loop.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "conformance" / "targets"
RESULTS = ROOT / "conformance" / "results"
REFERENCE = "evio"


def api_targets(names: list[str] | None = None,
                reference: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """The api manifests to run: those named, or every one (the reference's
    only when ``reference``)."""
    out = []
    for path in sorted(TARGETS.glob("*/manifest.toml")):
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
        t = doc.get("target", {})
        if t.get("kind") != "api":
            continue
        if names is not None:
            if t.get("name") in names:
                out.append((path, doc))
        elif reference or t.get("name") != REFERENCE:
            out.append((path, doc))
    return out


def command(path: Path, doc: dict[str, Any], results: Path, full: bool) -> list[str]:
    """The pytest command line for one target."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            f"--evio-target={path.parent.relative_to(ROOT)}", f"--evio-results={results}"]
    run = doc.get("run", {})
    if not full:
        if run.get("pollers"):
            argv.append("--evio-pollers=" + ",".join(run["pollers"]))
        if run.get("families"):
            argv.append("--evio-families=" + ",".join(run["families"]))
    argv += [str(a) for a in run.get("args", [])]
    return argv


def summary(path: Path) -> str:
    """A results file as a table: per spec page, the rules of each status."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    statuses = ["pass", "fail", "partial", "xfail", "not-applicable", "skip", "not-run"]
    pages: dict[str, dict[str, int]] = {}
    for v in doc["rules"].values():
        page = Path(str(v.get("page") or "?")).stem
        row = pages.setdefault(page, dict.fromkeys(statuses, 0))
        row[v["status"]] += 1
    total = {s: sum(r[s] for r in pages.values()) for s in statuses}
    lines = [f"{doc.get('target')} ({doc.get('impl') or doc.get('kind')}; "
             f"pollers {','.join(doc.get('pollers', []))}; "
             f"families {','.join(doc.get('families', []))})",
             "| page | " + " | ".join(statuses) + " |",
             "| --- |" + " --- |" * len(statuses)]
    for page, row in [*sorted(pages.items()), ("all", total)]:
        lines.append(f"| {page} | " + " | ".join(str(row[s]) for s in statuses) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="targets to run (default: every api target "
                    "but the reference)")
    ap.add_argument("--write", action="store_true",
                    help="write conformance/results/NAME.json (the committed results), "
                         "the reference's included")
    ap.add_argument("--full", action="store_true",
                    help="every poller and family, ignoring the manifest's [run] subset")
    ap.add_argument("--summary", nargs="+", type=Path, metavar="RESULTS",
                    help="print these results files' verdicts per spec page, run nothing")
    args = ap.parse_args(argv)
    if args.summary:
        print("\n\n".join(summary(p) for p in args.summary))
        return 0
    chosen = api_targets(args.names or None, reference=args.write)
    if not chosen:
        print("conformance: no api target to run")
        return 0
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for path, doc in chosen:
            name = str(doc["target"]["name"])
            results = (RESULTS if args.write else Path(tmp)) / f"{name}.json"
            cmd = command(path, doc, results, args.full)
            print(f"== conformance: {name}: {' '.join(cmd[1:])}", flush=True)
            start = time.monotonic()
            proc = subprocess.run(cmd, cwd=ROOT, check=False)
            took = time.monotonic() - start
            totals = json.loads(results.read_text())["totals"] if results.exists() else {}
            shown = ", ".join(f"{k} {v}" for k, v in totals.items() if v)
            verdict = "as declared" if proc.returncode == 0 else "DIFFERS from its manifest"
            print(f"== conformance: {name}: {verdict} ({shown}; {took:.0f} s)", flush=True)
            if proc.returncode != 0:
                failed.append(name)
    if failed:
        print(f"conformance: {', '.join(failed)} did not run as their manifests declare")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
