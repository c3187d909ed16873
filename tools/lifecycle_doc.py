"""Draw the connection lifecycle table and diagram from ``evio._lifecycle.LIFECYCLE``.

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

from evio._lifecycle import LIFECYCLE, On, State, Transition  # noqa: E402

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


HALF_CLOSE = (State.WRITE_ONLY, State.READ_ONLY)
"""States drawn in diagrams of their own, one each: one diagram of every
state was too wide to read, and one of both half-close states crossed its
arrows, leaving labels between two of them."""

INIT = '%%{init: {"state": {"useMaxWidth": false}}}%%'
"""Each diagram keeps its natural size (text at full size) and scrolls
sideways on a narrow screen, rather than shrinking its text below reading
size."""


def _diagram(rows: list[Transition], starts: list[str]) -> list[str]:
    """A mermaid state diagram of ``rows``: one arrow per pair of states."""
    # Mermaid draws parallel arrows between the same two states over each
    # other (their labels lost), so each pair gets one arrow with its events
    # one per line, long ones wrapped, to keep it narrow.
    edges: dict[tuple[str, str], list[str]] = {}
    for t in rows:
        edges.setdefault((_id(t.source.value), _id(t.target.value)), []).append(
            _wrap(t.event.value))
    names = [s for s in State if any(s in (t.source, t.target) for t in rows)]
    out = ["```mermaid", INIT, "stateDiagram-v2", *(f"    [*] --> {s}" for s in starts)]
    # A state id cannot hold a space: "writing only" is drawn from writing_only.
    out += [f'    state "{s.value}" as {_id(s.value)}' for s in names if " " in s.value]
    for (source, target), events in edges.items():
        out.append(f"    {source} --> {target}: {'<br/>'.join(events)}")
    return [*out, "    closed --> [*]", "```"]


def render() -> str:
    """The markdown between the markers: a table, then mermaid diagrams."""
    rows = ["| from | on | to | what happens |", "| --- | --- | --- | --- |"]
    for t in LIFECYCLE:
        rows.append(f"| {t.source.value} | {t.event.value} | {t.target.value} | {t.effect} |")
    # Not drawn, but said under the diagrams: the rows that stay in their
    # state (a looping arrow's label lands on its neighbours) and SHUTDOWN,
    # which takes every live state to closed.
    drawn = [t for t in LIFECYCLE if t.source != t.target and t.event is not On.SHUTDOWN]
    main = [t for t in drawn if not {t.source, t.target} & set(HALF_CLOSE)]
    stays: dict[str, list[str]] = {}
    for t in LIFECYCLE:
        if t.source == t.target:
            stays.setdefault(t.source.value, []).append(t.event.value)
    shut = [t.source.value for t in LIFECYCLE if t.event is On.SHUTDOWN]
    stay = "; ".join(f"{', '.join(events)} (in {state})" for state, events in stays.items())
    below = [f"Not drawn: the rows that stay in their state -- {stay} -- and SHUTDOWN, "
             f"which takes {', '.join(shut)} to closed."]
    blocks = [*rows, "", *_diagram(main, ["opening", "dialing"])]
    for state in HALF_CLOSE:
        half = [t for t in drawn if state in (t.source, t.target)]
        if half:
            blocks += ["", f"Half-close (**REL-11**, **REL-12**): *{state.value}*, from *open*:",
                       "", *_diagram(half, ["open"])]
    return "\n".join([BEGIN, *blocks, "", *below, END])


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
