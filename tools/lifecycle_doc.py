"""Draw the connection lifecycle table and diagram from ``evio.lifecycle.LIFECYCLE``.

The spec page ``docs/spec/loop.md`` holds the rendered table and diagram
between ``<!-- lifecycle:begin -->`` and ``<!-- lifecycle:end -->``; the
conformance suite checks that what is there is exactly what this renders.

    python tools/lifecycle_doc.py          # print the block
    python tools/lifecycle_doc.py --write  # rewrite it in docs/spec/loop.md
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evio.lifecycle import LIFECYCLE, On, State  # noqa: E402

PAGE = ROOT / "docs" / "spec" / "loop.md"
BEGIN, END = "<!-- lifecycle:begin -->", "<!-- lifecycle:end -->"


def _id(state: str) -> str:
    """A mermaid state id for a state's name."""
    return state.replace(" ", "_")


def _wrap(text: str, width: int = 18) -> str:
    """Break a long event name into lines of about ``width`` characters."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br/>".join(lines)


def render() -> str:
    """The markdown between the markers: a table, then a mermaid diagram."""
    rows = ["| from | on | to | what happens |", "| --- | --- | --- | --- |"]
    for t in LIFECYCLE:
        rows.append(f"| {t.source.value} | {t.event.value} | {t.target.value} | {t.effect} |")
    # One arrow per pair of states, its events one per line: mermaid draws
    # parallel arrows between the same two states over each other (their
    # labels lost), and one arrow per transition made the diagram so wide
    # that it was shrunk to unreadable text.
    # A transition that stays in its state is written as a note beside it:
    # mermaid lays a looping arrow's label over its neighbours.
    # SHUTDOWN takes every live state to closed: a sentence says so, instead
    # of a SHUTDOWN on four arrows, and long events wrap, to keep it narrow.
    edges: dict[tuple[str, str], list[str]] = {}
    stays: dict[str, list[str]] = {}
    for t in LIFECYCLE:
        if t.source == t.target:
            stays.setdefault(t.source.value, []).append(t.event.value)
        elif t.event is not On.SHUTDOWN:
            edges.setdefault((_id(t.source.value), _id(t.target.value)), []).append(
                _wrap(t.event.value))
    shut = [t.source.value for t in LIFECYCLE if t.event is On.SHUTDOWN]
    diagram = ["```mermaid", "stateDiagram-v2", "    [*] --> opening", "    [*] --> dialing"]
    # A state id cannot hold a space: "writing only" is drawn from writing_only.
    diagram += [f'    state "{s.value}" as {_id(s.value)}' for s in State if " " in s.value]
    for (source, target), events in edges.items():
        diagram.append(f"    {source} --> {target}: {'<br/>'.join(events)}")
    diagram += ["    closed --> [*]", "```"]
    # Notes beside states widened the diagram until it was shrunk to
    # unreadable text, so what is not drawn is said under it.
    stay = "; ".join(f"{', '.join(events)} (in {state})" for state, events in stays.items())
    below = [f"Not drawn: the rows that stay in their state -- {stay} -- and SHUTDOWN, "
             f"which takes {', '.join(shut)} to closed."]
    return "\n".join([BEGIN, *rows, "", *diagram, "", *below, END])


def current() -> str:
    """The block as it stands on the spec page."""
    text = PAGE.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def write() -> None:
    """Rewrite the block on the spec page."""
    text = PAGE.read_text()
    PAGE.write_text(text.replace(current(), render()))


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write()
    else:
        print(render())
