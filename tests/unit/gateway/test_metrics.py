"""Metrics: recording, summing workers' snapshots, and the Prometheus text they become."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from tether.gateway.metrics import Metrics, merge, render


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_counters_histograms_and_gauges_render() -> None:
    metrics = Metrics(gauges={"in_flight_requests": lambda: 3.0})
    metrics.requests[("user", "v1", "GET", "2xx")] = 5
    metrics.count("retries", ("user", "status_503"))
    metrics.count("retries", ("user", "status_503"))
    metrics.latency.observe(("user",), 0.003)
    metrics.latency.observe(("user",), 0.2)
    found = samples(render(metrics.snapshot()))
    labels = (("method", "GET"), ("service", "user"), ("status_class", "2xx"), ("version", "v1"))
    assert found[("tether_gateway_requests_total", labels)] == 5
    retries = ("tether_gateway_retries_total", (("reason", "status_503"), ("service", "user")))
    assert found[retries] == 2
    le = "tether_gateway_request_duration_seconds_bucket"
    assert found[(le, (("le", "0.0025"), ("service", "user")))] == 0
    assert found[(le, (("le", "0.005"), ("service", "user")))] == 1
    assert found[(le, (("le", "+Inf"), ("service", "user")))] == 2
    assert found[("tether_gateway_request_duration_seconds_count", (("service", "user"),))] == 2
    assert found[("tether_gateway_in_flight_requests", ())] == 3


def test_snapshots_of_two_workers_add_up() -> None:
    one, two = (
        Metrics(gauges={"open_connections": lambda: 2.0}),
        Metrics(gauges={"open_connections": lambda: 5.0}),
    )
    for m, n in ((one, 3), (two, 4)):
        m.requests[("user", "v1", "GET", "2xx")] = n
        m.latency.observe(("user",), 0.01)
    # Snapshots travel as JSON between processes.
    merged = merge(json.loads(json.dumps(m.snapshot())) for m in (one, two))
    found = samples(render(merged))
    labels = (("method", "GET"), ("service", "user"), ("status_class", "2xx"), ("version", "v1"))
    assert found[("tether_gateway_requests_total", labels)] == 7
    assert found[("tether_gateway_request_duration_seconds_count", (("service", "user"),))] == 2
    assert found[("tether_gateway_open_connections", ())] == 7


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.count("convention_refusals", ('odd "reason"\n',))
    found = samples(render(metrics.snapshot()))
    key = ("tether_gateway_convention_refusals_total", (("reason", 'odd "reason"\n'),))
    assert found[key] == 1


def test_an_empty_merge_still_renders_every_family() -> None:
    text = render(merge([])).decode()
    for name in ("requests_total", "retries_total", "in_flight_requests", "budget_received"):
        assert f"tether_gateway_{name}" in text
