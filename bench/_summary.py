"""From samples to conclusions: medians, per-round ratios, noise, and the targets.

Theory of operation
-------------------
A shared two-core machine is noisy: another process can take CPU 0 for a
second and halve one sample.  Three habits keep that from becoming a
conclusion:

* **Interleaved rounds.** Round 1 runs every server, then round 2 runs
  every server again (in a rotated order), and so on; a slow minute hurts
  one round of every server, not every round of one server.
* **Medians, not means.**  One bad round moves a mean; it does not move the
  median of three.
* **Ratios within a round.**  ``asyncio / evio`` is computed for each round
  from the two samples of that round, and the median of those ratios is
  reported next to their range.  Servers measured minutes apart share less
  noise than servers measured seconds apart.

The *noise* of a load is how far one server's requests/s moved between
rounds: (max - min) / median, the larger of evio's and uvloop's.  "Within
noise of uvloop" means evio's median ratio to uvloop is at least
``1 - noise``.  With
a single round there is no spread to measure, so `DEFAULT_NOISE` stands in.

The targets are the project's: the loop level with asyncio's and idle
connections cheaper (set when the suite was written), and the example
servers costing no more CPU per request than asyncio's minimal servers
(set when their parsers were made fast).  Each is a `Target` row (a
metric, the server compared with, a bound) and is reported with the
measured ratio; nothing here asserts.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

BASELINE = "evio"
DEFAULT_NOISE = 0.05  # assumed when one round gives no spread to measure


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    unit: str
    digits: int  # decimals shown


METRICS = {m.key: m for m in [
    Metric("rps", "requests/s", "req/s", 0),
    Metric("p50_us", "p50 latency", "µs", 0),
    Metric("p99_us", "p99 latency", "µs", 0),
    Metric("user_us_per_req", "user CPU per request", "µs", 2),
    Metric("system_us_per_req", "system CPU per request", "µs", 2),
    Metric("cpu_us_per_req", "CPU per request", "µs", 2),
    Metric("server_cpu", "server CPU use", "share of one CPU", 2),
    Metric("load_cpu", "load generator CPU use", "share of one CPU", 2),
    Metric("foreign_cpu", "other processes' CPU use", "share of one CPU", 2),
    Metric("peak_rss_mib", "peak RSS", "MiB", 1),
    Metric("bytes_per_conn", "RSS per idle connection", "bytes", 0),
    Metric("rss_before_mib", "RSS before", "MiB", 1),
    Metric("rss_after_mib", "RSS after", "MiB", 1),
]}


@dataclass(slots=True)
class Sample:
    """One server under one load in one round. ``metrics`` keys are `METRICS` keys."""

    round: int
    server: str
    load: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of some per-round values, and their range."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread | None:
        v = tuple(values)
        if not v:
            return None
        return cls(float(statistics.median(v)), min(v), max(v), v)


def _by_round(samples: list[Sample], server: str, load: str, metric: str) -> dict[int, float]:
    return {s.round: s.metrics[metric] for s in samples
            if s.server == server and s.load == load and s.error is None and metric in s.metrics}


def medians(samples: list[Sample], server: str, load: str) -> dict[str, Spread]:
    """Every metric of ``server`` under ``load``, across rounds."""
    keys = {k for s in samples if s.server == server and s.load == load for k in s.metrics}
    out = {}
    for k in sorted(keys):
        spread = Spread.of(_by_round(samples, server, load, k).values())
        if spread is not None:
            out[k] = spread
    return out


def ratio(samples: list[Sample], load: str, metric: str, num: str, den: str) -> Spread | None:
    """``num / den`` for ``metric`` under ``load``, per round, over the rounds both ran."""
    a = _by_round(samples, num, load, metric)
    b = _by_round(samples, den, load, metric)
    return Spread.of(a[r] / b[r] for r in sorted(a.keys() & b.keys()) if b[r])


def noise(samples: list[Sample], load: str, servers: tuple[str, ...] = ("evio", "uvloop")
          ) -> float:
    """The relative spread of requests/s across rounds, the larger over ``servers``."""
    spreads = []
    for server in servers:
        s = Spread.of(_by_round(samples, server, load, "rps").values())
        if s is not None and len(s.values) > 1 and s.median:
            spreads.append((s.high - s.low) / s.median)
    return max(spreads) if spreads else DEFAULT_NOISE


@dataclass(frozen=True, slots=True)
class Target:
    """A bound on ``subject / against`` for one metric under one load."""

    text: str  # the target, in words
    load: str
    metric: str
    against: str
    at_most: float | None = None  # subject / against <= at_most
    at_least: float | None = None  # subject / against >= at_least
    within_noise: bool = False  # at_least is 1 - this load's noise
    subject: str = BASELINE  # "evio-min": the same check on the loop alone, informative


def targets(loads: list[str], servers: list[str]) -> list[Target]:
    """The targets, for the loads and servers that were run.

    Each is stated for ``evio`` (the examples); where an ``evio-min`` server
    ran under that load, the same check follows for it.
    """
    out = [
        Target("user CPU per request, Redis PING pipeline 1: at most 0.6× asyncio's",
               "redis-p1", "user_us_per_req", "asyncio", at_most=0.6),
        Target("user CPU per request, Redis PING pipeline 1: at most 1.1× uvloop's",
               "redis-p1", "user_us_per_req", "uvloop", at_most=1.1),
    ]
    # The example servers at the speed of the loop: their user CPU per request
    # at most asyncio's minimal servers', and (a stretch) at most uvloop's.
    for load in ("http", "redis-p1", "redis-p1c", "redis-p8", "redis-p16"):
        out.append(Target(f"user CPU per request, {load}: at most asyncio's", load,
                          "user_us_per_req", "asyncio", at_most=1.0))
        out.append(Target(f"user CPU per request, {load}: at most uvloop's (stretch)", load,
                          "user_us_per_req", "uvloop", at_most=1.0))
    for load in loads:
        if load == "idle":
            continue
        out.append(Target(f"requests/s, {load}: at least asyncio's", load, "rps", "asyncio",
                          at_least=1.0))
        out.append(Target(f"requests/s, {load}: within noise of uvloop's", load, "rps",
                          "uvloop", within_noise=True))
    out.append(Target("RSS per idle connection: at most asyncio's", "idle", "bytes_per_conn",
                      "asyncio", at_most=1.0))
    if "evio-min" in servers:
        out += [replace(t, subject="evio-min") for t in out if t.load.startswith(("http", "redis"))]
        # The loop's own goal (the core second pass): the loop alone, one
        # PING per read, where the loop is most of the work.
        out += [
            Target("the loop alone, user CPU per request, Redis PING pipeline 1: "
                   "at most 0.8× asyncio's", "redis-p1", "user_us_per_req", "asyncio",
                   at_most=0.8, subject="evio-min"),
            Target("the loop alone, user CPU per request, Redis PING pipeline 1: "
                   "at most 1.2× uvloop's", "redis-p1", "user_us_per_req", "uvloop",
                   at_most=1.2, subject="evio-min"),
        ]
    return [t for t in out if t.load in loads and t.against in servers]


@dataclass(frozen=True, slots=True)
class Verdict:
    target: Target
    ratio: Spread | None  # evio / against, per round
    bound: str  # the bound as text, e.g. "≤ 0.60"
    met: bool | None  # None: not measured


def judge(samples: list[Sample], target: Target) -> Verdict:
    r = ratio(samples, target.load, target.metric, target.subject, target.against)
    if target.at_most is not None:
        bound = f"≤ {target.at_most:.2f}"
        met = None if r is None else r.median <= target.at_most
    else:
        least = target.at_least if target.at_least is not None else 1.0
        if target.within_noise:
            least = 1.0 - noise(samples, target.load, (target.subject, target.against))
            bound = f"≥ {least:.2f} (1 − noise)"
        else:
            bound = f"≥ {least:.2f}"
        met = None if r is None else r.median >= least
    return Verdict(target, r, bound, met)


def as_json(value: Any) -> Any:
    """Spreads and verdicts as plain JSON values."""
    if isinstance(value, Spread):
        return {"median": value.median, "low": value.low, "high": value.high,
                "values": list(value.values)}
    if isinstance(value, Verdict):
        t = value.target
        return {"target": t.text, "subject": t.subject, "load": t.load, "metric": t.metric,
                "against": t.against, "bound": value.bound, "ratio": as_json(value.ratio),
                "met": value.met}
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value
