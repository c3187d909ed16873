"""Copy evio under another package name, optionally with one rule broken.

Theory of operation
-------------------
The conformance suite must tell right from wrong (docs/conformance/run.md,
*Does the suite tell right from wrong?*). Two runs show it: an exact copy of
``evio`` under another name, run with ``--evio-impl``, must pass what the
reference passes (so no test reaches this implementation behind the
option's back), and the same copy with one rule deliberately broken must
fail that rule's tests and only related ones. This tool makes either copy::

    python tools/conformance_copy.py /tmp/impls                  # /tmp/impls/evio_copy
    python tools/conformance_copy.py /tmp/impls --break wake     # Server.wake a no-op
    PYTHONPATH=/tmp/impls python -m pytest --evio-impl=evio_copy

The package uses relative imports only, so a copy of its directory is a
working package under any name. It owns nothing but `MUTANTS`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MUTANTS: dict[str, tuple[str, str, str, str]] = {
    "wake": (
        "_server.py",
        "        return self._loop.wake(id)\n",
        "        return True  # mutant: a wake is accepted and never delivered\n",
        "WAKE: Server.wake does nothing (and says it did)",
    ),
    "pending": (
        "_server.py",
        "        return self._loop.pending(id)\n",
        "        return 0  # mutant: pending output is never reported\n",
        "Server.pending always answers 0",
    ),
}
"""Mutation name -> (file in the package, exact text, replacement, what it breaks)."""


def make_copy(dest: Path, name: str = "evio_copy", mutant: str | None = None) -> Path:
    """Copy the ``evio`` package to ``dest/name``, applying ``mutant`` if given.

    Args:
        dest: The directory to put the package in (created if missing); it
            goes on PYTHONPATH for the run.
        name: The package's import name.
        mutant: A key of `MUTANTS`, or None for an exact copy.

    Returns:
        The new package's directory.

    Raises:
        KeyError: ``mutant`` is not a known mutation.
        ValueError: the text a mutation replaces is no longer in the source.
    """
    target = dest / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(ROOT / "evio", target, ignore=shutil.ignore_patterns("__pycache__"))
    if mutant is not None:
        file, old, new, _ = MUTANTS[mutant]
        path = target / file
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise ValueError(f"mutant {mutant!r}: {old.strip()!r} is not once in {file}")
        path.write_text(text.replace(old, new), encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dest", type=Path, help="directory to create the package in")
    ap.add_argument("--name", default="evio_copy", help="import name (default evio_copy)")
    ap.add_argument("--break", dest="mutant", choices=sorted(MUTANTS),
                    help="break one rule: " + "; ".join(f"{k}: {v[3]}" for k, v in MUTANTS.items()))
    args = ap.parse_args(argv)
    print(make_copy(args.dest, args.name, args.mutant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
