"""The gateway's metrics: plain counters on the hot path, Prometheus text on a scrape.

Rules:
1. Recording is a dict update or a bisect: no locks, no formatting, no I/O per request.
2. A scrape turns a snapshot (plain JSON-able data) into the Prometheus text format through
   prometheus_client. With `--workers N` each worker writes its snapshot to a shared folder
   every `SNAPSHOT_SECONDS`; the supervisor sums the snapshots of live workers, so one scrape
   sees every worker (counters and gauges add up; histograms add bucket by bucket).
3. Label values come from the configuration or from fixed vocabularies (status classes,
   outcome and refusal slugs), never from raw client input: cardinality stays bounded.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import Metric

SNAPSHOT_SECONDS = 1.0
PREFIX = "tether_gateway_"

LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BUDGET_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# name (without prefix and _total) -> (help, label names)
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "requests": (
        "Requests answered, by service, version, method and status class.",
        ("service", "version", "method", "status_class"),
    ),
    "upstream_attempts": (
        "Attempts sent upstream, by service and attempt number (1 = first try).",
        ("service", "attempt"),
    ),
    "retries": (
        "Retries made, by service and the failure that caused them.",
        ("service", "reason"),
    ),
    "retry_budget_refusals": (
        "Retries not made because the service's retry budget was spent.",
        ("service",),
    ),
    "deadline_exceeded": (
        "Requests whose budget ran out in the gateway (504 deadline-exceeded).",
        ("service",),
    ),
    "expired_on_arrival": ("Requests whose deadline had passed when they arrived.", ()),
    "convention_refusals": (
        "Requests refused for breaking the calling conventions, by reason.",
        ("reason",),
    ),
}
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "request_duration_seconds": (
        "Time from a request's first byte to its answer, by service.",
        ("service",),
        LATENCY_BOUNDS,
    ),
    "budget_received_seconds": (
        "The budget each request was given (clamped, or the default).",
        (),
        BUDGET_BOUNDS,
    ),
}
GAUGES: dict[str, str] = {
    "in_flight_requests": "Requests being served now.",
    "open_connections": "Client connections open now.",
    "workers_reporting": "Gateway processes whose numbers this scrape includes.",
}

Labels = tuple[str, ...]


class Histogram:
    """Bucket counts per label set; the last two cells are the +Inf bucket and the sum."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.series: dict[Labels, list[float]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        cells = self.series.get(labels)
        if cells is None:
            cells = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        cells[bisect.bisect_left(self.bounds, value)] += 1
        cells[-1] += value


class Metrics:
    """One process's metrics. `gauges` reads live values at snapshot time."""

    def __init__(self, gauges: dict[str, Callable[[], float]] | None = None) -> None:
        self.counters: dict[str, dict[Labels, float]] = {name: {} for name in COUNTERS}
        self.histograms = {name: Histogram(spec[2]) for name, spec in HISTOGRAMS.items()}
        self._gauges = gauges or {}
        # The hot path's own handles, looked up once:
        self.requests = self.counters["requests"]
        self.attempts = self.counters["upstream_attempts"]
        self.latency = self.histograms["request_duration_seconds"]
        self.budgets = self.histograms["budget_received_seconds"]

    def count(self, name: str, labels: Labels = (), amount: float = 1) -> None:
        series = self.counters[name]
        series[labels] = series.get(labels, 0) + amount

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": {
                name: [[*labels, value] for labels, value in series.items()]
                for name, series in self.counters.items()
            },
            "histograms": {
                name: [[*labels, cells] for labels, cells in histogram.series.items()]
                for name, histogram in self.histograms.items()
            },
            "gauges": {
                **{name: read() for name, read in self._gauges.items()},
                "workers_reporting": 1.0,
            },
        }


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several processes' snapshots."""
    counters: dict[str, dict[Labels, float]] = {name: {} for name in COUNTERS}
    histograms: dict[str, dict[Labels, list[float]]] = {name: {} for name in HISTOGRAMS}
    gauges: dict[str, float] = dict.fromkeys(GAUGES, 0.0)
    for snapshot in snapshots:
        if not snapshot.get("gauges"):
            continue  # a worker with metrics off, or not yet reporting
        for name, rows in snapshot.get("counters", {}).items():
            series = counters.setdefault(name, {})
            for *labels, value in rows:
                key = tuple(labels)
                series[key] = series.get(key, 0) + value
        for name, rows in snapshot.get("histograms", {}).items():
            merged = histograms.setdefault(name, {})
            for *labels, cells in rows:
                key = tuple(labels)
                total = merged.get(key)
                merged[key] = (
                    list(cells)
                    if total is None
                    else [a + b for a, b in zip(total, cells, strict=True)]
                )
        for name, value in snapshot.get("gauges", {}).items():
            gauges[name] = gauges.get(name, 0.0) + value
    return {
        "counters": {n: [[*k, v] for k, v in s.items()] for n, s in counters.items()},
        "histograms": {n: [[*k, c] for k, c in s.items()] for n, s in histograms.items()},
        "gauges": gauges,
    }


class _SnapshotCollector:
    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snapshot = self._snapshot
        for name, (help_text, label_names) in COUNTERS.items():
            family = CounterMetricFamily(PREFIX + name, help_text, labels=label_names)
            for *labels, value in snapshot["counters"].get(name, []):
                family.add_metric(labels, value)
            yield family
        for name, (help_text, label_names, bounds) in HISTOGRAMS.items():
            hist = HistogramMetricFamily(PREFIX + name, help_text, labels=label_names)
            for *labels, cells in snapshot["histograms"].get(name, []):
                running = 0.0
                buckets = []
                for bound, count in zip((*bounds, float("inf")), cells[:-1], strict=True):
                    running += count
                    buckets.append((_bound(bound), running))
                hist.add_metric(labels, buckets, sum_value=cells[-1])
            yield hist
        for name, help_text in GAUGES.items():
            gauge = GaugeMetricFamily(PREFIX + name, help_text)
            gauge.add_metric([], snapshot["gauges"].get(name, 0.0))
            yield gauge


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def render(snapshot: dict[str, Any]) -> bytes:
    """A snapshot in the Prometheus text exposition format (prometheus_client loads on the
    first scrape, not with the gateway)."""
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


def write_snapshot(folder: Path, snapshot: dict[str, Any]) -> None:
    """Replace this process's snapshot file atomically (readers never see half a file)."""
    final = folder / f"{os.getpid()}.json"
    partial = folder / f".{os.getpid()}.json.tmp"
    partial.write_text(json.dumps(snapshot), encoding="utf-8")
    os.replace(partial, final)


def read_snapshots(folder: Path, pids: Iterable[int]) -> list[dict[str, Any]]:
    """The snapshots of the given worker processes (a worker not yet reporting is skipped)."""
    found = []
    for pid in pids:
        try:
            found.append(json.loads((folder / f"{pid}.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return found
