"""Reports: how a loop's process tells its supervisor why it ended (rule LOOPS-8).

Owns: how a loop's process tells its supervisor why it ended.

Theory of operation
-------------------
A forked loop ends in one of three ways, and the supervisor
(`evio._supervisor`) must tell them apart to decide between "stop everything",
"raise this" and "start another": an exit status of 0 is a stop, a signal
or another status is a death, and an exception from ``serving`` or
``tick`` is sent as a *report* on the loop's own pipe before it exits with
`RAISED`.

The report must carry the exception across a process boundary, which only
``pickle`` can, and not every exception pickles: an attribute may be a
lock or a socket, and a class whose ``__init__`` takes other arguments than
it passes to ``Exception`` pickles but cannot be rebuilt.  So `send` tries
both ways at once in the child; when either fails it sends what can always
be said -- the type's qualified name, the message and the traceback text --
and `rebuild` turns that into a ``RuntimeError`` naming the type, so the
caller of ``serve()`` never gets an error about the error.  Either way the
exception gets a note with the loop's name and its traceback text, which
no pickle carries.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import traceback

__all__ = ["RAISED", "describe", "rebuild", "send"]

RAISED = 70
"""A loop's exit status when it sent a report (``EX_SOFTWARE``)."""


def send(fd: int, e: BaseException) -> None:
    """Write the report of ``e`` to ``fd``: the exception if pickle can carry
    it, else its type name, message and traceback text."""
    text = "".join(traceback.format_exception(e))
    kind = f"{type(e).__module__}.{type(e).__qualname__}"
    try:
        blob = pickle.dumps((e, kind, str(e), text))
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        try:
            message = str(e)
        except Exception:
            message = "(its message could not be read)"
        blob = pickle.dumps((None, kind, message, text))
    with contextlib.suppress(OSError):
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view):]


def rebuild(blob: bytes, name: str) -> BaseException:
    """The exception a loop reported, noted with where it came from.

    Args:
        blob: What `send` wrote.
        name: The loop, as the note and a fallback message name it.
    """
    try:
        e, kind, message, text = pickle.loads(blob)
    except Exception:
        return RuntimeError(f"{name} raised, and its report could not be read")
    error: BaseException = e if isinstance(e, BaseException) else RuntimeError(
        f"{name} raised {kind}: {message}")
    error.add_note(f"raised in {name}; its traceback there:\n{text}")
    return error


def describe(status: int) -> str:
    """A ``waitpid`` status in words: "killed by SIGKILL", "exit status 1"."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
