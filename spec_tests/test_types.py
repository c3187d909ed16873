"""Types and constructors that catch mistakes (EV-23, EV-24).

``Events`` refuses positional arguments; a type checker refuses a callback
that returns ``str`` (mypy --strict is run on a small user program with
that mistake, and on the corrected one); at run time the same mistake
closes the connection with a ``TypeError`` that says ``.encode()``; and
``serve(loops=2)`` with a thread running warns in evio's words, at the
user's call, instead of Python's fork warning from inside evio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from harness import Recorder, echo_events, recv_all, running, wait_for
from implementation import evio

pytestmark = pytest.mark.feature("typed-api")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.rule("EV-23")
def test_events_takes_keywords_only() -> None:
    def data(cid: int, d: bytes) -> bytes:
        return d

    with pytest.raises(TypeError):
        evio.Events(data)  # type: ignore[call-arg, arg-type]  # positional on purpose: keywords only
    assert evio.Events(data=data).data is data


_PROGRAM = textwrap.dedent("""
    import evio

    def data(id: int, data: bytes) -> {ret}:
        return {value}

    def tick() -> float:
        return 1.0

    evio.serve(evio.Events(data=data, tick=tick), "tcp://127.0.0.1:0", poller={poller})
""")


def _mypy(tmp_path: Path, ret: str, value: str, poller: str = '"epoll"') -> tuple[int, str]:
    prog = tmp_path / "user_server.py"
    prog.write_text(_PROGRAM.format(ret=ret, value=value, poller=poller))
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), str(prog)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=dict(os.environ, MYPYPATH=str(ROOT)))
    return out.returncode, out.stdout + out.stderr


@pytest.mark.timeout(300)
@pytest.mark.impl_detail  # type-checks against this implementation's annotations
@pytest.mark.rule("EV-23")
def test_mypy_strict_refuses_a_callback_that_returns_text(tmp_path: Path) -> None:
    code, out = _mypy(tmp_path, "str", '"text"')
    assert code == 1, out
    assert 'Argument "data" to "Events" has incompatible type' in out, out
    code, out = _mypy(tmp_path, "bytes", 'b"text"', poller='"epol"')
    assert code == 1 and 'Argument "poller" to "serve"' in out, out
    code, out = _mypy(tmp_path, "bytes", 'data.upper()')
    assert code == 0, out


@pytest.mark.rule("EV-23", "EV-6")
def test_text_returned_at_run_time_says_encode(poller: str, addr: str) -> None:
    rec = Recorder()

    def data(cid: int, d: bytes) -> Any:
        return "text"

    with running(echo_events(rec, data=data), addr, poller=poller) as r:
        c = r.connect()
        c.sendall(b"hi")
        assert recv_all(c) == b""
        wait_for(lambda: rec.of("closed"), what="closed")
    [(_, err)] = rec.of("closed")
    assert isinstance(err, TypeError) and ".encode()" in str(err), err


_FORKING = textwrap.dedent("""
    import sys, threading, time, warnings
    import evio

    stop = threading.Event()
    threading.Thread(target=stop.wait, name="metrics", daemon=True).start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evio.serve(evio.Events(serving=lambda s: evio.Action.SHUTDOWN),
                   "tcp4://127.0.0.1:0", loops=2)
    stop.set()
    for w in caught:
        print(w.category.__name__, w.filename, w.lineno, str(w.message)[:80], sep="|")
""")


@pytest.mark.timeout(60)
@pytest.mark.rule("EV-24")
def test_loops_with_a_thread_running_warn_in_evios_words(tmp_path: Path) -> None:
    script = tmp_path / "forking.py"
    script.write_text(_FORKING)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    lines = [line.split("|") for line in out.stdout.splitlines()]
    assert [line[0] for line in lines] == ["RuntimeWarning"], out.stdout
    _, filename, lineno, message = lines[0]
    assert filename == str(script) and lineno == "9", lines  # the serve() call
    assert "metrics" in message and "loops=2" in message
