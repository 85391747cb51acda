"""The examples run as real processes: FastAPI under uvicorn calling the grpc.aio service, and
the gateway as the Kubernetes example starts it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tether.gateway.config import parse
from tether.gateway.server import DRAIN_SECONDS

from .servers import free_port, listening, spawn_gateway, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def process(*argv: str, env: dict[str, str] | None = None) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def wait_for_port(port: int) -> None:
    if not await listening(port, 15):
        raise AssertionError(f"nothing listens on {port}")


@pytest.mark.parametrize(
    ("delay", "budget_ms", "status"), [("0.05", "800", 200), ("2", "300", 504)]
)
async def test_fastapi_example_calls_the_grpc_example(
    delay: str, budget_ms: str, status: int
) -> None:
    """A fast stock check answers 200 with the budget passed on; a slow one gives a 504
    problem at the budget."""
    grpc_port, http_port = free_port(), free_port()
    async with (
        process(
            sys.executable, "examples/grpc_service.py", "--port", str(grpc_port), "--delay", delay
        ),
        process(
            sys.executable,
            "-m",
            "uvicorn",
            "examples.fastapi_service:app",
            "--port",
            str(http_port),
            "--log-level",
            "warning",
            env={"STOCK_TARGET": f"127.0.0.1:{grpc_port}"},
        ),
    ):
        await wait_for_port(grpc_port)
        await wait_for_port(http_port)
        async with aiohttp.ClientSession() as client:
            url = f"http://127.0.0.1:{http_port}/orders/42"
            headers = {"x-request-timeout": budget_ms, "x-request-id": "example-1"}
            async with client.get(url, headers=headers) as answer:
                body = await answer.json(content_type=None)
    assert answer.status == status
    assert answer.headers["x-request-id"] == "example-1"
    if status == 200:
        assert body["request_id"] == "example-1"
        assert 700 < body["budget_received_ms"] <= 800
        assert "in stock" in body["stock"]
    else:
        assert body["type"].endswith("deadline-exceeded")


KUBERNETES = ROOT / "examples" / "kubernetes" / "gateway.yaml"


def kubernetes_example() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The example's ConfigMap, the Deployment's pod spec and the Service."""
    config_map, deployment, service = yaml.safe_load_all(KUBERNETES.read_text())
    assert (config_map["kind"], deployment["kind"], service["kind"]) == (
        "ConfigMap",
        "Deployment",
        "Service",
    )
    template = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    return config_map, template["spec"], service


def test_the_kubernetes_example_fits_the_gateway() -> None:
    """The example's configuration is accepted, and the container's command, ports, probes and
    grace period match what the gateway does."""
    config_map, pod, service = kubernetes_example()
    config = parse(config_map["data"]["gateway.yaml"], str(KUBERNETES))
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": config.listen.port, "admin": config.admin_listen.port}
    assert config.listen.host == config.admin_listen.host == "0.0.0.0"  # the kubelet's probes
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # The command reads the ConfigMap where the volume puts it.
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    args = container["args"]
    assert args[:3] == ["tether", "gateway", f"{mount['mountPath']}/gateway.yaml"]
    workers = int(args[args.index("--workers") + 1])
    assert workers == int(container["resources"]["requests"]["cpu"])  # one worker per core
    # Kubernetes kills the pod after the grace period: preStop, then the whole drain, must fit.
    sleep_command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= float(sleep_command[1]) + DRAIN_SECONDS + 1


async def test_the_kubernetes_example_answers_its_probes_and_drains(tmp_path: Path) -> None:
    """The container's own arguments (workers and all), with the example's configuration moved
    to loopback ports: both probes answer 200 once it serves, and SIGTERM ends it, exit 0,
    well within the grace period left after preStop."""
    config_map, pod, _ = kubernetes_example()
    text = config_map["data"]["gateway.yaml"]
    config = parse(text, str(KUBERNETES))
    port, admin = free_port(), free_port()
    for address, loopback in ((config.listen, port), (config.admin_listen, admin)):
        text = text.replace(f"{address.host}:{address.port}", f"127.0.0.1:{loopback}")
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(text)
    container = pod["containers"][0]
    proc = await spawn_gateway(config_path, tmp_path / "access.log", *container["args"][3:])
    try:
        async with aiohttp.ClientSession() as client:

            async def probe(path: str) -> int:
                async with client.get(f"http://127.0.0.1:{admin}{path}") as answer:
                    return answer.status

            await wait_until(lambda: probe("/readyz"), lambda status: status == 200, 20)
            assert await probe("/healthz") == 200
        proc.send_signal(signal.SIGTERM)
        sleep_seconds = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
        left = pod["terminationGracePeriodSeconds"] - sleep_seconds
        assert await asyncio.wait_for(proc.wait(), left) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
