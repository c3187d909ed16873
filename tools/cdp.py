"""A small client for headless Chromium, over the DevTools protocol on a pipe.

Theory of operation
-------------------
``spec_tests/test_site.py`` loads every page of the built site in a real
browser and asks it what a reader would see: did each diagram render, did
anything log an error, did every image load, where do the links go. That
needs a browser it can talk to while pages run, not just ``--dump-dom``.

Chromium speaks the DevTools protocol (CDP) on file descriptors 3 and 4
when started with ``--remote-debugging-pipe``: JSON messages, each ended by
a NUL byte, commands in on fd 3, replies and events out on fd 4. No port,
no websocket, nothing else to install. The trap is putting our pipe ends
at exactly those numbers in the child: ``subprocess`` can keep descriptors
open but not renumber them, and doing it in ``preexec_fn`` can clobber
subprocess's own error pipe. So ``bash`` does it, with ``exec ... 3<&N
4>&M``, which is what shell redirections are for.

Everything is single-threaded and bounded: :meth:`Browser.call` writes a
command and reads until its reply arrives, keeping the events that arrive
meanwhile; every read has a deadline, and a browser that stops answering
raises :class:`TimeoutError` instead of hanging the suite. Closing the
browser kills its process group.

Command line, for looking at a page by hand::

    python3 tools/cdp.py screenshot http://127.0.0.1:8000/ page.png
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "Browser", "find_chromium"]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)
"""How Chromium must run here: as root, with no network but loopback."""

Json = dict[str, Any]


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary on this machine, or ``None``."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _above(fd: int, low: int) -> int:
    """Move ``fd`` to a number of at least ``low`` (close-on-exec); return it."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium process and one tab in it.

    Args:
        executable: The Chromium binary.
        timeout: Seconds any one command may take before :class:`TimeoutError`.
        width: The viewport width in CSS pixels (the height is 900).
    """

    def __init__(self, executable: str, timeout: float = 30.0, width: int = 1280) -> None:
        self.timeout = timeout
        self.events: list[Json] = []
        self._next_id = 0
        self._buf = b""
        self._profile = tempfile.mkdtemp(prefix="evio-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Keep the child's ends clear of 3 and 4, which bash is about to set.
        to_chrome_r, from_chrome_w = (_above(fd, 10) for fd in (to_chrome_r, from_chrome_w))
        r, w = to_chrome_r, from_chrome_w
        script = f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-'
        self.proc = subprocess.Popen(
            [
                "bash",
                "-c",
                script,
                executable,
                *CHROMIUM_FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}",
                f"--window-size={width},900",
                "about:blank",
            ],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
            self.session: str | None = attached["sessionId"]
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ the pipe

    def _read(self, deadline: float) -> Json:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise ConnectionError(f"Chromium exited (status {self.proc.poll()})")
                self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        message: Json = json.loads(raw)
        return message

    def call(self, method: str, params: Json | None = None, *, browser: bool = False) -> Json:
        """Send one command to the tab (or to the browser) and return its result.

        Raises:
            RuntimeError: If Chromium answers with an error.
            TimeoutError: If it does not answer within ``timeout`` seconds.
        """
        self._next_id += 1
        msg: Json = {"id": self._next_id, "method": method, "params": params or {}}
        session = None if browser else getattr(self, "session", None)
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to_chrome, data) :]
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: Json = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float | None = None) -> Json:
        """Wait for the next event called ``method`` (one already kept counts)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, ev in enumerate(self.events):
                if ev["method"] == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def drain(self) -> None:
        """Take in every event Chromium has already sent, without waiting."""
        while True:
            ready, _, _ = select.select([self._from_chrome], [], [], 0)
            if not ready and b"\0" not in self._buf:
                return
            self.events.append(self._read(time.monotonic() + self.timeout))

    # ------------------------------------------------------------ the tab

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page (awaiting a promise) and return its value.

        Raises:
            RuntimeError: If the expression throws.
        """
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def until(self, expression: str, timeout: float = 10.0, interval: float = 0.05) -> Any:
        """Evaluate ``expression`` until it is truthy; return that value.

        Raises:
            TimeoutError: If it is still falsy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(interval)

    def navigate(self, url: str, ready: Callable[[], object] | None = None) -> None:
        """Load ``url`` and wait for its load event (and for ``ready``, if given)."""
        self.call("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")
        if ready is not None:
            ready()

    def screenshot(self, path: Path) -> None:
        """Save the whole page as a PNG."""
        import base64

        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        """End the browser process (and its children) and remove its profile."""
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str]) -> int:
    """``cdp.py screenshot URL OUT.png``: save what a reader sees."""
    if len(argv) != 3 or argv[0] != "screenshot":
        print(__doc__.strip().splitlines()[-1] if __doc__ else "usage", file=sys.stderr)
        return 2
    exe = find_chromium()
    if exe is None:
        print("chromium is not installed (Debian: apt-get install chromium)", file=sys.stderr)
        return 1
    with Browser(exe) as b:
        b.call("Page.enable")
        b.navigate(argv[1])
        time.sleep(1.0)  # let diagrams render
        b.screenshot(Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
