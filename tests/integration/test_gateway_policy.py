"""Upstream policy, auth and observability as a black box: a real `tether gateway` process
(one or two workers), real scripted upstreams on loopback that count what they receive."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .servers import (
    GOOD,
    RID,
    RawUpstream,
    admin_get,
    broken_upstream,
    call,
    free_port,
    gateway,
    raw_exchange,
    read_request,
    service,
    wait_until,
)

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json; charset=utf-8"}
SECRET = "integration-secret-" + "0123456789abcdef" * 3


@dataclass
class Scripted(RawUpstream):
    """An upstream that answers every request with one status after a delay, and records it."""

    status: int = 200
    delay: float = 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_request(reader)
                self.seen.append(request)
                headers = request["headers"]
                if self.delay:
                    await asyncio.sleep(self.delay)
                payload = json.dumps({"port": self.port, "headers": headers}).encode()
                if self.status >= 400:
                    payload = b'{"message": "upstream says no"}'
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def attempts(self) -> list[str]:
        return [r["headers"].get("x-tether-attempt", "?") for r in self.seen]


@asynccontextmanager
async def scripted(status: int = 200, delay: float = 0.0) -> AsyncIterator[Scripted]:
    upstream = Scripted(status=status, delay=delay)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_a_get_answered_503_is_retried_once_on_the_other_endpoint(tmp_path: Path) -> None:
    """The failing endpoint is in the gateway's zone, so it is always tried first; the retry
    goes to the other endpoint and succeeds. The attempt number reaches the upstream."""
    async with scripted(503) as bad, scripted(200) as good:
        body = "services:\n" + service("pair", (bad, "zone-a"), (good, "zone-b"))
        async with gateway(tmp_path, body) as running:
            answers = [await call(running, "/api/pair/v1/x") for _ in range(10)]
            assert [status for status, _, _ in answers] == [200] * 10
            assert bad.attempts() == ["1"] * 10
            assert good.attempts() == ["2"] * 10
            await asyncio.sleep(0.2)
            entry = running.access_log()[-1]
            assert entry["attempts"] == 2
            assert entry["retry_reasons"] == ["status_503"]
            assert [a["outcome"] for a in entry["attempt_detail"]] == ["status_503", "ok"]
            _, text = await admin_get(running, "/metrics")
            assert metric(text, "tether_gateway_retries_total", reason="status_503") == 10
            assert metric(text, "tether_gateway_upstream_attempts_total", attempt="2") == 10
            assert metric(text, "tether_gateway_requests_total", status_class="2xx") == 10


async def test_a_refused_connection_is_retried_elsewhere_and_the_endpoint_rests(
    tmp_path: Path,
) -> None:
    """Nothing listens on the gateway's own-zone endpoint: the first GET is refused there and
    retried on the other endpoint; then that endpoint rests, so the next GETs go straight to
    the one that works (their first attempt lands there)."""
    async with scripted(200) as good:
        dead = Scripted(port=free_port())  # nothing listens on its port
        body = "services:\n" + service("pair", (dead, "zone-a"), (good, "zone-b"))
        async with gateway(tmp_path, body) as running:
            for _ in range(4):
                assert (await call(running, "/api/pair/v1/x"))[0] == 200
            assert good.attempts() == ["2", "1", "1", "1"]
            await asyncio.sleep(0.2)
            first = running.access_log()[0]
            assert first["retry_reasons"] == ["refused"]
            assert [a["outcome"] for a in first["attempt_detail"]] == ["refused", "ok"]


async def test_a_post_is_sent_exactly_once(tmp_path: Path) -> None:
    async with scripted(503) as bad, scripted(200) as good:
        body = "services:\n" + service("pair", (bad, "zone-a"), (good, "zone-b"))
        async with gateway(tmp_path, body) as running:
            for _ in range(5):
                status, headers, problem = await call(
                    running, "/api/pair/v1/orders", {**GOOD, **JSON}, method="POST", data=b"{}"
                )
                assert status == 503
                assert headers["Content-Type"] == "application/problem+json"
                assert problem["detail"] == "upstream says no"
            assert len(bad.seen) == 5
            assert good.seen == []


async def test_a_post_with_an_idempotency_key_is_retried_only_where_enabled(
    tmp_path: Path,
) -> None:
    async with scripted(503) as bad, scripted(200) as good:
        body = (
            "services:\n"
            + service("plain", (bad, "zone-a"), (good, "zone-b"))
            + service(
                "keyed", (bad, "zone-a"), (good, "zone-b"), extra="retry_with_idempotency_key: true"
            )
        )
        keyed = {**GOOD, **JSON, "Idempotency-Key": "order-7"}
        async with gateway(tmp_path, body) as running:
            status, _, _ = await call(
                running, "/api/plain/v1/orders", keyed, method="POST", data=b'{"n": 1}'
            )
            assert status == 503
            assert (len(bad.seen), len(good.seen)) == (1, 0)
            status, _, answer = await call(
                running, "/api/keyed/v1/orders", keyed, method="POST", data=b'{"n": 2}'
            )
            assert status == 200
            assert (len(bad.seen), len(good.seen)) == (2, 1)
            assert good.seen[0]["body"] == '{"n": 2}'  # the body was kept and sent again
            assert answer["headers"]["x-tether-attempt"] == "2"


async def test_a_cross_zone_endpoint_is_not_retried(tmp_path: Path) -> None:
    async with scripted(503) as bad, scripted(503) as also_bad:
        body = "services:\n" + service("far", (bad, "zone-b"), (also_bad, "zone-b"))
        async with gateway(tmp_path, body) as running:
            for _ in range(6):
                status, _, _ = await call(running, "/api/far/v1/x")
                assert status == 503
            assert len(bad.seen) + len(also_bad.seen) == 6
            assert set(bad.attempts() + also_bad.attempts()) == {"1"}


async def test_no_attempt_starts_once_the_budget_is_gone(tmp_path: Path) -> None:
    """The first attempt takes 200 ms of a 300 ms budget; the 100 ms left are below margin plus
    the minimum attempt (150 ms here), so the 503 is answered as it is and the second endpoint
    sees nothing. (A 100 ms slack: the answer never races the deadline on a busy machine.)"""
    async with scripted(503, delay=0.2) as slow_bad, scripted(200) as good:
        body = "retry: {min_attempt: 150ms}\nservices:\n" + service(
            "tight", (slow_bad, "zone-a"), (good, "zone-b")
        )
        async with gateway(tmp_path, body) as running:
            for _ in range(5):
                sent = time.monotonic()
                status, _, _ = await call(
                    running, "/api/tight/v1/x", {**GOOD, "X-Request-Timeout": "300"}
                )
                assert status == 503
                assert all(r["at"] <= sent + 0.3 for r in slow_bad.seen)
            assert len(slow_bad.seen) == 5
            assert good.seen == []


async def test_with_the_upstream_down_attempts_stay_within_the_retry_budget(
    tmp_path: Path,
) -> None:
    """1,000 requests to a service whose every endpoint answers 503: retries are capped at
    20% of requests plus the floor (1/s over 10 s here), and the refusals are counted."""
    async with scripted(503) as one, scripted(503) as two:
        body = (
            "retry: {backoff_base: 1ms, backoff_cap: 2ms, budget: {ratio: 0.2, per_second: 1}}\n"
            "services:\n" + service("down", (one, "zone-a"), (two, "zone-a"))
        )
        async with gateway(tmp_path, body) as running:
            connector = aiohttp.TCPConnector(limit=50)
            async with aiohttp.ClientSession(connector=connector) as session:
                statuses = await asyncio.gather(
                    *(call(running, "/api/down/v1/x", session=session) for _ in range(1000))
                )
            assert {status for status, _, _ in statuses} == {503}
            attempts = len(one.seen) + len(two.seen)
            assert 1000 < attempts <= 1.2 * 1000 + 10
            _, text = await admin_get(running, "/metrics")
            retried = metric(text, "tether_gateway_retries_total", service="down")
            assert retried == attempts - 1000
            refused = metric(text, "tether_gateway_retry_budget_refusals_total", service="down")
            assert refused == 1000 - retried
            assert metric(text, "tether_gateway_requests_total", status_class="5xx") == 1000


async def test_refusals_and_deadlines_move_their_metrics(tmp_path: Path) -> None:
    async with scripted(200, delay=0.5) as slow:
        body = "services:\n" + service("slow", (slow, "zone-a"))
        async with gateway(tmp_path, body) as running:
            await call(running, "/api/slow/v1/x", {"X-App-ID": "checkout-web"})
            await call(running, "/api/slow/v1/x", {**GOOD, "X-App-ID": "stranger"})
            status, _, _ = await call(
                running, "/api/slow/v1/x", {**GOOD, "X-Request-Timeout": "50"}
            )
            assert status == 504
            past = str(int(time.time() * 1000) - 1000)
            status, _, _ = await call(
                running, "/api/slow/v1/x", {**GOOD, "X-Request-Deadline": past}
            )
            assert status == 504
            _, text = await admin_get(running, "/metrics")
            refusals = "tether_gateway_convention_refusals_total"
            assert metric(text, refusals, reason="validation-failed:x-request-id") == 1
            assert metric(text, refusals, reason="forbidden-app") == 1
            assert metric(text, "tether_gateway_deadline_exceeded_total", service="slow") == 1
            assert metric(text, "tether_gateway_expired_on_arrival_total") == 1
            assert metric(text, "tether_gateway_budget_received_seconds_count") >= 2


async def test_admin_endpoints(tmp_path: Path) -> None:
    async with scripted(200) as up:
        body = (
            "auth: {jwt: {algorithm: HS256, secret_env: TETHER_TEST_JWT, issuer: tests}}\n"
            "services:\n" + service("user", (up, "zone-a"))
        )
        async with gateway(tmp_path, body, env={"TETHER_TEST_JWT": SECRET}) as running:
            assert await admin_get(running, "/healthz") == (200, "ok\n")
            assert await admin_get(running, "/readyz") == (200, "ready\n")
            status, text = await admin_get(running, "/config")
            assert status == 200
            document = json.loads(text)
            assert document["services"]["user"]["endpoints"][0]["address"].endswith(str(up.port))
            assert "TETHER_TEST_JWT" in document["auth"]["secret_env"]
            assert SECRET not in text
            assert (await admin_get(running, "/nope"))[0] == 404
            assert (await admin_get(running, "/metrics", method="POST"))[0] == 405
            reader, writer = await asyncio.open_connection(*running.admin[7:].split(":"))
            writer.write(b"garbage\r\n\r\n")
            assert (await reader.read())[:12] == b"HTTP/1.1 400"
            writer.close()


async def test_jwt_sets_the_user_and_discards_the_clients_claim(tmp_path: Path) -> None:
    async with scripted(200) as up:
        body = (
            "auth: {jwt: {algorithm: HS256, secret_env: TETHER_TEST_JWT, issuer: tests}}\n"
            "services:\n" + service("user", (up, "zone-a"))
        )
        token = jwt.encode(
            {"sub": "alice", "iss": "tests", "exp": int(time.time()) + 60}, SECRET, "HS256"
        )
        base = {"X-Request-ID": RID, "X-App-ID": "checkout-web"}
        async with gateway(tmp_path, body, env={"TETHER_TEST_JWT": SECRET}) as running:
            status, headers, problem = await call(running, "/api/user/v1/me", base)
            assert status == 401
            assert headers["WWW-Authenticate"] == "Bearer"
            assert "Bearer token is required" in problem["detail"]
            status, _, problem = await call(
                running, "/api/user/v1/me", {**base, "Authorization": "Bearer " + token[:-3]}
            )
            assert status == 401
            assert "signature" in problem["detail"]
            status, _, answer = await call(
                running,
                "/api/user/v1/me",
                {**base, "Authorization": "Bearer " + token, "X-User-ID": "mallory"},
            )
            assert status == 200
            assert answer["headers"]["x-user-id"] == "alice"
            assert len(up.seen) == 1


async def test_auth_with_a_missing_secret_stops_start_up(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:1\nzone: a\n"
        "auth: {jwt: {algorithm: HS256, secret_env: TETHER_TEST_UNSET}}\n"
        "services: {s: {versions: [v1], endpoints: [{address: 127.0.0.1:2}]}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TETHER_TEST_UNSET"}
    for extra in ([], ["--check"]):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tether.cli",
            "gateway",
            str(config),
            *extra,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        _, err = await process.communicate()
        assert process.returncode == 1
        assert b"TETHER_TEST_UNSET is not set" in err


async def test_two_workers_share_the_port_and_report_through_one_scrape(tmp_path: Path) -> None:
    async with scripted(200) as up:
        body = "services:\n" + service("user", (up, "zone-a"))
        async with gateway(tmp_path, body, workers=2) as running:
            for _ in range(40):  # a new connection each: the kernel spreads them
                assert (await call(running, "/api/user/v1/x"))[0] == 200

            async def scrape() -> str:
                return (await admin_get(running, "/metrics"))[1]

            text = await wait_until(
                scrape,
                lambda t: metric(t, "tether_gateway_requests_total", status_class="2xx") == 40,
                10,
            )
            assert metric(text, "tether_gateway_workers_reporting") == 2
            running.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(running.process.wait(), 30) == 0


def worker_pids(supervisor_pid: int) -> set[int]:
    """The gateway workers a supervisor started (multiprocessing's spawned children; not its
    resource tracker)."""
    pids = set()
    for child in psutil.Process(supervisor_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:  # exited meanwhile, or a zombie not yet reaped
            pass
    return pids


async def test_a_worker_that_dies_is_replaced(tmp_path: Path) -> None:
    """SIGKILL one of two workers (a crash, the OOM killer): the supervisor starts another in
    its place, /readyz is 200 again with two workers reporting, and requests are answered."""
    async with scripted(200) as up:
        body = "services:\n" + service("user", (up, "zone-a"))
        async with gateway(tmp_path, body, workers=2) as running:
            before = await wait_until(
                lambda: asyncio.sleep(0, worker_pids(running.process.pid)),
                lambda pids: len(pids) == 2,
                10,
            )
            killed = min(before)
            os.kill(killed, signal.SIGKILL)
            after = await wait_until(
                lambda: asyncio.sleep(0, worker_pids(running.process.pid)),
                lambda pids: len(pids) == 2 and killed not in pids,
                15,
            )
            assert after - before  # a new worker, not the old one come back

            async def scrape() -> tuple[int, str]:
                ready, _ = await admin_get(running, "/readyz")
                return ready, (await admin_get(running, "/metrics"))[1]

            await wait_until(
                scrape,
                lambda r: r[0] == 200 and metric(r[1], "tether_gateway_workers_reporting") == 2,
                15,
            )
            for _ in range(20):  # a new connection each: both workers answer
                assert (await call(running, "/api/user/v1/x"))[0] == 200
            running.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(running.process.wait(), 30) == 0


async def test_readyz_turns_503_while_draining_and_the_request_in_flight_finishes(
    tmp_path: Path,
) -> None:
    async with scripted(200, delay=0.6) as slow:
        body = "services:\n" + service("slow", (slow, "zone-a"))
        async with gateway(tmp_path, body) as running:
            in_flight = asyncio.ensure_future(call(running, "/api/slow/v1/x"))
            await wait_until(lambda: asyncio.sleep(0, len(slow.seen)), bool, 5)
            running.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            assert await admin_get(running, "/readyz") == (503, "not ready: draining\n")
            assert (await in_flight)[0] == 200
            assert await asyncio.wait_for(running.process.wait(), 30) == 0


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (b"SMTP ready\r\n\r\n", "not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\ncontent-", "mid-answer"),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\n", "mid-answer"),
    ],
    ids=["not-http", "head-cut-short", "head-cut-short-on-close"],
)
async def test_a_broken_head_from_the_upstream_is_a_502_problem_at_once(
    tmp_path: Path, answer: bytes, detail: str
) -> None:
    """An upstream that answers something other than HTTP, or closes before its head is
    complete, gets the client a 502 problem saying so at once (not at the read timeout), and
    the gateway keeps serving. A POST: not retried."""
    async with broken_upstream(answer) as broken, scripted(200) as good:
        body = (
            "services:\n"
            + service("broken", (broken, "zone-a"))
            + service("good", (good, "zone-a"))
        )
        async with gateway(tmp_path, body) as running:
            started = time.monotonic()
            status, headers, problem = await call(running, "/api/broken/v1/x", method="POST")
            took = time.monotonic() - started
            assert (status, headers["Content-Type"]) == (502, "application/problem+json")
            assert problem["type"].endswith("bad-gateway")
            assert detail in problem["detail"]
            assert problem["request_id"] == RID
            assert (await call(running, "/api/good/v1/x"))[0] == 200
    assert took < 0.5  # the read timeout is 1.5 s
    assert len(broken.seen) == 1


@pytest.mark.parametrize(
    "connection", [b"", b"connection: close\r\n"], ids=["keep-alive", "connection-close"]
)
async def test_a_body_cut_short_by_the_upstream_closes_the_clients_connection(
    tmp_path: Path, connection: bytes
) -> None:
    """The head (Content-Length: 50) was relayed, then the upstream closed after 9 bytes: the
    gateway cannot answer otherwise any more and closes the client's connection, so that the
    client sees a short answer as broken, never as a whole one followed by a desynchronised
    connection. Also when the upstream said `connection: close`."""
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n" + connection + b'\r\n{"partial'
    async with broken_upstream(answer) as broken:
        async with gateway(
            tmp_path, "services:\n" + service("broken", (broken, "zone-a"))
        ) as running:
            head = "".join(f"{k}: {v}\r\n" for k, v in GOOD.items()).encode()
            received, closed = await raw_exchange(
                int(running.url.rsplit(":", 1)[1]),
                b"GET /api/broken/v1/x HTTP/1.1\r\nhost: x\r\n" + head + b"\r\n",
            )
    head_part, _, body = received.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 200")
    assert b"content-length: 50" in head_part.lower()
    assert body == b'{"partial'
    assert closed


async def test_a_body_that_ends_with_the_upstreams_connection_is_relayed_whole(
    tmp_path: Path,
) -> None:
    """No Content-Length, no chunks: the body runs to the upstream's close (RFC 9112 6.3), and
    the client gets all of it."""
    answer = (
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: text/plain\r\n\r\n" + b"x" * 100_000
    )
    async with broken_upstream(answer) as upstream:
        async with gateway(
            tmp_path, "services:\n" + service("eof", (upstream, "zone-a"))
        ) as running:
            status, _, body = await call(running, "/api/eof/v1/x")
    assert status == 200
    assert body == b"x" * 100_000
