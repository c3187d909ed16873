"""The one list of features a conformance target may lack.

Theory of operation
-------------------
A target's manifest (``conformance/targets/NAME/manifest.toml``) says which
features it does not have (``[features] lacks = [...]``); every test that
needs one of them is *not applicable* to that target, never failed. Most
features are derived, so tests rarely name one:

* the rule prefix: a test of ``DIAL-3`` needs ``dial`` (see `PREFIXES`);
* the ``poller`` and ``family`` fixtures: a case on ``select`` needs
  ``poller:select``, one on a unix socket needs ``family:unix``;
* a hook the test asks for (`implementation.hook`): ``hook:lifecycle``; a
  hook the implementation does not provide is lacking without being declared;
* an explicit ``@pytest.mark.feature("name")`` for the rest.

This module owns the names: a manifest or marker naming a feature that is
not listed here is an error, so a typo cannot silently make tests vanish.
"""

from __future__ import annotations

PREFIXES: dict[str, str] = {
    "ADDR": "addresses",
    "LOOP": "loop",
    "LOOPS": "loops",
    "EV": "events",
    "POLL": "pollers",
    "TICK": "ticker",
    "WAKE": "wake",
    "DIAL": "dial",
    "UDP": "udp",
    "DETACH": "detach",
    "TR": "translate",
    "TLS": "tls",
    "ZLIB": "zlib",
    "REL": "reliability",
    "HTTP": "http-example",
    "REDIS": "redis-example",
    "DOCS": "site",
    "CONF": "conformance-suite",
    "TIMER": "timers",
}
"""Rule prefix -> the feature every test of such a rule needs."""

POLLER_NAMES = ("epoll", "kqueue", "poll", "select", "devpoll")
FAMILY_NAMES = ("tcp4", "tcp6", "unix")

HOOKS: dict[str, str] = {
    "lifecycle": "the connection state machine: State, On, LIFECYCLE, FLOW_ROWS, "
                 "move, LifecycleError and observe(fn) -> stop",
    "make_poller": "make_poller(name) -> a Poller instance of the named backend",
    "poller_classes": "a mapping of backend name -> Poller class (select's FD_SETSIZE check)",
    "resolver": "an object whose `resolve` attribute the loop calls to resolve dial "
                "host names, which a test may replace",
    "sun_path_max": "the longest unix socket path the platform accepts",
}
"""Hooks an implementation may provide in ``PACKAGE.conformance_hooks``."""

EXTRA: dict[str, str] = {
    "poller-argument": "serve(..., poller=NAME or Poller instance) chooses the backend",
    "custom-poller": "serve() accepts a Poller subclass instance that wraps a backend",
    "stop-signals": "serve() stops cleanly on SIGINT, SIGTERM and SIGHUP",
    "examples": "the example programs (echo, wake, proxy, udp, http, tls, redis) "
                "run on the implementation as child processes",
    "fork": "loops > 1: a supervisor forks worker processes",
    "linger": "a closing TCP connection lingers (LOOP-14) and Action.ABORT resets it",
    "bind-errors": "evio.BindError: one OSError subclass naming the address that failed",
    "inherited-sockets": "serve() takes bound sockets and fd://N; evio.listen_fds",
    "debug-mode": "serve(slow_callback=...) and EVIO_DEBUG report slow callbacks",
    "typed-api": "Events is keyword-only and the package's annotations catch bad returns",
    "write-hooks": "the prewrite and postwrite callbacks around each write attempt "
                   "(derived from the rules LOOP-10, LOOP-21, EV-10, EV-20 and from a "
                   "test parameter naming one of the two)",
}
"""Features a test names with ``@pytest.mark.feature(...)``."""

WIRE: dict[str, str] = {
    # options (mapped, dropped or unmapped in [options])
    "option:poller": "choose the poller backend (dropped: the test runs once)",
    "option:unixsocket": "also listen on a unix socket at a given path",
    "option:max-buffer": "bound one Redis client's unparsed input",
    # echo
    "echo:signal-sigint": "SIGINT stops the server too",
    # redis, beyond PING/ECHO/SET/GET/DEL/FLUSHDB/QUIT/SHUTDOWN
    "redis:exists": "the EXISTS command",
    "redis:hello": "HELLO and RESP3 replies",
    "redis:command": "COMMAND, COMMAND DOCS/COUNT/LIST/INFO/HELP",
    "redis:config": "CONFIG GET/HELP",
    "redis:wget": "the WGET command (fetch a URL through Server.dial)",
    "redis:half-close": "answers every request sent before the client's FIN",
    "redis:inline": "inline (telnet-style) requests with quotes",
    "redis:real-clients": "what redis-py, redis-cli and redis-benchmark send on connect",
    # http, beyond one canned Hello World per request
    "http:keep-alive": "persistent HTTP/1.1 and HTTP/1.0 keep-alive connections",
    "http:post-echo": "POST echoes its body",
    "http:pages": "an index page, /echo and other paths beyond Hello World",
    "http:tls": "HTTPS on a second port (the example's throwaway certificate or one given)",
}
"""Wire features (docs/spec/wire-targets.md), named by ``@pytest.mark.wire(kind, ...)``:
``option:NAME`` is an option a test passes to the server (a wire manifest maps it
in ``[options]``); the rest is behaviour beyond the seed's examples."""


def all_features() -> dict[str, str]:
    """Every feature name -> what having it means."""
    out: dict[str, str] = {}
    for prefix, name in PREFIXES.items():
        out[name] = f"the {prefix} rules"
    for p in POLLER_NAMES:
        out[f"poller:{p}"] = f"the {p} poller backend"
    for f in FAMILY_NAMES:
        out[f"family:{f}"] = f"stream listeners of the {f} family"
    for h, what in HOOKS.items():
        out[f"hook:{h}"] = f"the conformance hook {h}: {what}"
    out.update(EXTRA)
    out.update(WIRE)
    return out


FEATURES = all_features()


def check(names: list[str] | tuple[str, ...], where: str) -> None:
    """Raise ValueError naming ``where`` if any name is not a known feature."""
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"{where}: unknown feature(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(FEATURES))}")


RULE_FEATURES: dict[str, str] = {
    "LOOP-10": "write-hooks",
    "LOOP-21": "write-hooks",
    "EV-10": "write-hooks",
    "EV-20": "write-hooks",
}
"""Single rules that imply a feature of their own, beyond their prefix's."""

WRITE_HOOKS = ("prewrite", "postwrite")
"""A test parameter with one of these values runs that write hook."""


def prefix_feature(rule_id: str) -> str | None:
    """The feature a rule's prefix implies (``DIAL-3`` -> ``dial``)."""
    return PREFIXES.get(rule_id.rsplit("-", 1)[0])
