"""What the gateway makes of its upstreams' answers, read by a strict HTTP/1.1 client (h11):
interim answers, answers without a body, bytes that answer nothing, answers that break off,
pipelined requests, and a few hundred randomly broken answers. A real `tether gateway` process
and raw upstreams on loopback that write exactly the bytes each test gives them."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest

from tether.problems import CATALOGUE, MEDIA_TYPE

from .servers import (
    GOOD,
    RawUpstream,
    Reply,
    Running,
    fuzz_seed,
    gateway,
    gateway_stderr,
    raw_upstream,
    service,
    wait_until,
)

pytestmark = pytest.mark.integration

# Short timeouts keep every broken case short: an answer that never completes ends at the
# read timeout (no head) or at the budget (a head, then silence).
POLICY = "policies:\n  same_zone: {connect: 300ms, read: 500ms, retries: 1}\n"
BUDGET_MS = 900


@dataclass
class Answer:
    """One answer as a strict client read it."""

    status: int | None = None  # None: no head came
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # the whole answer, well framed
    error: str = ""  # what the client saw instead: h11's complaint, a close, a timeout
    took: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


class StrictClient:
    """One keep-alive connection to the gateway, read with h11 (which knows that answers to
    HEAD, 204 and 304 have no body and checks every frame)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._h11 = h11.Connection(h11.CLIENT)

    @property
    def reusable(self) -> bool:
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def call(
        self, method: str, target: str, headers: dict[str, str], wait: float = 3.0
    ) -> Answer:
        if self._h11.our_state is h11.DONE:
            self._h11.start_next_cycle()
        sent = [("host", "gateway"), *GOOD.items(), *headers.items()]
        self._writer.write(
            self._h11.send(h11.Request(method=method, target=target, headers=sent))
            + (self._h11.send(h11.EndOfMessage()) or b"")
        )
        answer = Answer()
        started = time.monotonic()
        try:
            async with asyncio.timeout(wait):
                await self._read(answer)
        except TimeoutError:
            answer.error = "no complete answer and no close in time"
        except h11.RemoteProtocolError as exc:
            answer.error = f"h11: {exc}"
        answer.took = time.monotonic() - started
        return answer

    async def _read(self, answer: Answer) -> None:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                self._h11.receive_data(await self._reader.read(65536))
            elif isinstance(event, h11.InformationalResponse):
                raise h11.RemoteProtocolError("the gateway relayed an interim answer")
            elif isinstance(event, h11.Response):
                answer.status = event.status_code
                answer.headers = dict(event.headers)
            elif isinstance(event, h11.Data):
                answer.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                answer.complete = True
                return
            elif isinstance(event, h11.ConnectionClosed):
                answer.error = "closed"
                return

    def close(self) -> None:
        self._writer.close()


@asynccontextmanager
async def strict_client(running: Running) -> AsyncIterator[StrictClient]:
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    client = StrictClient(reader, writer)
    try:
        yield client
    finally:
        client.close()


def head_of(answer: bytes) -> bytes:
    return answer[: answer.index(b"\r\n\r\n") + 4]


def json_answer(payload: dict[str, Any], status: str = "200 OK", extra: bytes = b"") -> bytes:
    body = json.dumps(payload).encode()
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        extra,
        body,
    )


@asynccontextmanager
async def proxied(tmp_path: Path, upstream: RawUpstream) -> AsyncIterator[Running]:
    async with gateway(tmp_path, POLICY + "services:\n" + service("up", (upstream, "zone-a"))) as g:
        yield g


def by_target(answers: dict[str, bytes]) -> Any:
    """A reply function: the answer for the request's path (after /v1), keep-alive; only the
    head of it for a HEAD request, as a server does."""

    def reply(request: dict[str, Any]) -> Reply:
        answer = answers[request["target"].removeprefix("/v1")]
        return Reply([head_of(answer) if request["method"] == "HEAD" else answer])

    return reply


async def last_access_line(running: Running) -> dict[str, Any]:
    """The newest access log line (written in batches, so waited for)."""
    lines = await wait_until(running.access_log, bool, 2)
    return lines[-1]  # type: ignore[no-any-return]


def no_traceback(running: Running) -> None:
    assert "Traceback" not in gateway_stderr(running.log_path).read_text()


# -- interim answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.js>\r\n\r\n",
    ],
    ids=["100", "103", "102-then-103"],
)
async def test_interim_answers_are_skipped(tmp_path: Path, interim: bytes) -> None:
    """1xx answers before the final one are not relayed (a client that did not ask for them
    may not expect them), and their headers do not leak into the final answer; the final
    answer is relayed whole, and the connections on both sides stay in step."""
    final = json_answer({"final": True})
    async with (
        raw_upstream(lambda _: Reply([interim, final], pause=0.02)) as upstream,
        proxied(tmp_path, upstream) as running,
        strict_client(running) as client,
    ):
        for _ in range(2):
            answer = await client.call("GET", "/api/up/v1/x", {})
            assert (answer.status, answer.complete, answer.error) == (200, True, "")
            assert answer.json() == {"final": True}
            assert b"link" not in answer.headers
        no_traceback(running)


async def test_an_upstream_that_switches_protocols_is_a_bad_gateway(tmp_path: Path) -> None:
    """101 Switching Protocols was never asked for (the gateway does not pass Upgrade on): 502
    bad-gateway, and the connection it came on is not used again."""
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    )
    async with (
        raw_upstream(lambda _: Reply([switch + b"\x81\x05hello"])) as upstream,
        proxied(tmp_path, upstream) as running,
        strict_client(running) as client,
    ):
        answer = await client.call("GET", "/api/up/v1/x", {})
        assert (answer.status, answer.complete) == (502, True)
        assert answer.headers[b"content-type"] == MEDIA_TYPE.encode()
        assert answer.json()["detail"] == "the upstream switched protocols unasked"
        no_traceback(running)
    assert upstream.connections == len(upstream.seen) == 2  # the retry came on a new one


# -- answers without a body ---------------------------------------------------------------


async def test_answers_without_a_body_are_relayed_without_one(tmp_path: Path) -> None:
    """204, 304 and any answer to HEAD have no body, whatever length they announce: the client
    gets the head alone at once (not at the budget), with no framing a body would need, and its
    keep-alive connection stays in step for the next answer."""
    answers = {
        "/no-content": b"HTTP/1.1 204 No Content\r\nx-kind: empty\r\n\r\n",
        "/not-modified": b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\ncontent-length: 12\r\n\r\n',
        "/json": json_answer({"hello": "world"}),
        "/chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    }
    async with (
        raw_upstream(by_target(answers)) as upstream,
        proxied(tmp_path, upstream) as running,
        strict_client(running) as client,
    ):
        for method, path, status in [
            ("GET", "/no-content", 204),
            ("GET", "/json", 200),
            ("GET", "/not-modified", 304),
            ("HEAD", "/json", 200),
            ("HEAD", "/chunked", 200),
            ("GET", "/chunked", 200),
            ("HEAD", "/json", 200),
            ("GET", "/json", 200),
        ]:
            answer = await client.call(method, "/api/up/v1" + path, {})
            where = f"{method} {path}: {answer}"
            assert (answer.status, answer.complete, answer.error) == (status, True, ""), where
            assert answer.took < 0.3, where
            if method == "GET" and path == "/json":
                assert answer.json() == {"hello": "world"}, where
            elif method == "GET" and path == "/chunked":
                assert answer.body == b"hello", where
            else:
                assert answer.body == b"", where
            if status == 204:
                assert b"content-length" not in answer.headers, where
                assert b"transfer-encoding" not in answer.headers, where
            if status == 304 or (method, path) == ("HEAD", "/json"):
                # the length a GET would get is passed on
                length = b"12" if status == 304 else b"18"
                assert answer.headers[b"content-length"] == length, where
        no_traceback(running)


async def test_a_refusal_of_a_head_request_has_no_body(tmp_path: Path) -> None:
    """The gateway's own problems answer HEAD with their head only."""
    async with (
        raw_upstream(by_target({})) as upstream,
        proxied(tmp_path, upstream) as running,
        strict_client(running) as client,
    ):
        for _ in range(2):
            answer = await client.call("HEAD", "/api/nowhere/v1/x", {})
            assert (answer.status, answer.complete, answer.body) == (404, True, b"")
            assert answer.headers[b"content-type"] == MEDIA_TYPE.encode()


# -- bytes that answer nothing -----------------------------------------------------------


async def test_bytes_after_the_answer_are_never_relayed(tmp_path: Path) -> None:
    """An upstream that writes more than its answer (here a second answer) has its connection
    closed: the extra bytes reach no client, and the next request is answered by its own
    answer, on a new upstream connection."""
    calls = 0

    def reply(_: dict[str, Any]) -> Reply:
        nonlocal calls
        calls += 1
        stray = json_answer({"stray": calls})
        return Reply([json_answer({"call": calls}) + stray])

    async with (
        raw_upstream(reply) as upstream,
        proxied(tmp_path, upstream) as running,
        strict_client(running) as client,
    ):
        for call in (1, 2, 3):
            answer = await client.call("GET", "/api/up/v1/x", {})
            assert (answer.status, answer.complete, answer.error) == (200, True, "")
            assert answer.json() == {"call": call}
        no_traceback(running)
    assert upstream.connections == 3


async def test_bytes_on_an_idle_pooled_connection_close_it(tmp_path: Path) -> None:
    """Bytes that arrive on a pooled connection between requests (an upstream out of step)
    close it; they are never taken for the next request's answer."""
    calls = 0

    def reply(_: dict[str, Any]) -> Reply:
        nonlocal calls
        calls += 1
        stray = json_answer({"stray": calls})
        return Reply([json_answer({"call": calls}), stray], pause=0.05)

    async with (
        raw_upstream(reply) as upstream,
        proxied(tmp_path, upstream) as running,
        strict_client(running) as client,
    ):
        for call in (1, 2):
            answer = await client.call("GET", "/api/up/v1/x", {})
            assert answer.json() == {"call": call}
            await asyncio.sleep(0.15)  # the stray answer arrives while the connection idles
    assert upstream.connections == 2


# -- the keep-alive race -------------------------------------------------------------------


async def test_a_pooled_connection_closed_as_it_is_reused_is_replaced_once(
    tmp_path: Path,
) -> None:
    """An upstream that ends a kept-alive connection just as the gateway sends on it (here it
    reads the second request on each connection and closes without a byte of answer): a GET is
    sent again at once on a new connection and answered, counted as no retry; a POST, which
    may have been read and acted on, is not (502)."""
    requests = 0

    def reply(request: dict[str, Any]) -> Reply:
        nonlocal requests
        requests += 1
        if requests % 2 == 0:  # the second request on each connection
            return Reply([], close=True)
        return Reply([json_answer({"request": requests})])

    async with (
        raw_upstream(reply) as upstream,
        proxied(tmp_path, upstream) as running,
        strict_client(running) as client,
    ):
        for number in range(3):
            answer = await client.call("GET", "/api/up/v1/x", {})
            assert (answer.status, answer.complete) == (200, True)
            assert answer.json() == {"request": 2 * number + 1}
        line = await last_access_line(running)
        assert (line["attempts"], line["retry_reasons"]) == (2, [])
        posted = await client.call("POST", "/api/up/v1/x", {"content-length": "0"})
        assert posted.status == 502
        no_traceback(running)
    assert upstream.connections == 3  # the POST's was the last one
    assert len(upstream.seen) == 6


# -- answers that break off ---------------------------------------------------------------


async def test_a_retried_status_whose_body_breaks_off_is_a_bad_gateway(tmp_path: Path) -> None:
    """A 503 whose body is cut short: nothing of it reached the client, so the attempt failed
    like a reset (retried once for a GET) and the client gets 502 bad-gateway, not the
    gateway's own 500."""
    cut = b'HTTP/1.1 503 Busy\r\ncontent-length: 40\r\n\r\n{"message": '
    async with (
        raw_upstream(lambda _: Reply([cut], close=True)) as upstream,
        proxied(tmp_path, upstream) as running,
        strict_client(running) as client,
    ):
        answer = await client.call("GET", "/api/up/v1/x", {})
        assert (answer.status, answer.complete) == (502, True)
        assert answer.json()["type"].endswith("bad-gateway")
        no_traceback(running)
        assert (await last_access_line(running))["outcome"] == "reset"
    assert len(upstream.seen) == 2


async def test_a_relayed_answer_that_breaks_off_is_logged_as_such(tmp_path: Path) -> None:
    """The head is relayed, then the upstream closes mid-body: the client's connection is
    closed (the only way left to say the answer is incomplete), the access log says
    `upstream_reset`, and no traceback is written: an upstream's failure is not the gateway's."""
    cut = b'HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{"partial'
    async with (
        raw_upstream(lambda _: Reply([cut], close=True)) as upstream,
        proxied(tmp_path, upstream) as running,
        strict_client(running) as client,
    ):
        answer = await client.call("GET", "/api/up/v1/x", {})
        assert (answer.status, answer.complete) == (200, False)
        assert "h11" in answer.error  # the connection closed short of the announced length
        assert (await last_access_line(running))["outcome"] == "upstream_reset"
        no_traceback(running)
    assert len(upstream.seen) == 1


# -- pipelining ----------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order_when_the_first_is_slowest(
    tmp_path: Path,
) -> None:
    """Three requests in one write, the first answered last by the upstream: the answers still
    come in the order asked, and a malformed request after them is refused only after them."""

    def reply(request: dict[str, Any]) -> Reply:
        name = request["target"].removeprefix("/v1/")
        return Reply([json_answer({"name": name})], delay=0.3 if name == "slow" else 0.0)

    async with (
        raw_upstream(reply) as upstream,
        proxied(tmp_path, upstream) as running,
    ):
        head = "".join(f"{k}: {v}\r\n" for k, v in GOOD.items()).encode()
        wire = b"".join(
            b"GET /api/up/v1/" + name + b" HTTP/1.1\r\nhost: x\r\n" + head + b"\r\n"
            for name in (b"slow", b"quick", b"quicker")
        )
        host, port = running.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(wire + b"GARBAGE / HTTP/1.1\r\n\r\n")
        received = b""
        async with asyncio.timeout(3):
            while chunk := await reader.read(65536):
                received += chunk
        writer.close()
        no_traceback(running)
    names = [json.loads(body)["name"] for body in _bodies(received)[:3]]
    assert names == ["slow", "quick", "quicker"], received
    assert received.count(b"HTTP/1.1 ") == 4
    assert received.rfind(b"HTTP/1.1 400") > received.rfind(b"quicker")


def _bodies(received: bytes) -> list[bytes]:
    """The bodies of a run of answers with Content-Length (enough for the pipelining test)."""
    bodies = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        bodies.append(rest[:length])
        received = rest[length:]
    return bodies


# -- randomly broken answers ---------------------------------------------------------------

# Pieces that break HTTP answers: line ends, NULs, separators, number edges, framing words.
_PIECES = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b":",
    b" ",
    b"\t",
    b"\xff",
    b"0",
    b"-1",
    b"99999999999999999999",
    b"0x1f",
    b"chunked",
    b"content-length: 3\r\n",
    b"content-length: 999\r\n",
    b"transfer-encoding: chunked\r\n",
    b"connection: close\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"\r\n\r\n",
]
_INTERIM = [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n",
]


@dataclass
class Case:
    """One randomly made upstream answer, and what a client of the gateway may get for it."""

    name: str
    method: str
    reply: Reply
    status: int  # the final answer's status, before any change
    body: bytes  # the final answer's body as a client should get it, when `exact`
    exact: bool  # only harmless changes (split writes, interim answers, bytes after it)
    changes: list[str] = field(default_factory=list)


def _random_case(rng: random.Random, number: int) -> Case:
    name = f"case-{number}"
    payload = json.dumps({"case": name}).encode()
    half = len(payload) // 2
    bases: list[tuple[int, bytes, bytes, bool]] = [  # status, answer, body, ends with a close
        (200, json_answer({"case": name}), payload, False),
        (
            200,
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked"
            b"\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (half, payload[:half], len(payload) - half, payload[half:]),
            payload,
            False,
        ),
        (404, json_answer({"message": "no such item"}, "404 Not Found"), b"", False),
        (
            503,
            b"HTTP/1.1 503 Busy\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nbusy",
            b"",
            False,
        ),
        (204, b"HTTP/1.1 204 No Content\r\n\r\n", b"", False),
        (304, b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\n\r\n', b"", False),
        (
            200,
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
            + payload,
            payload,
            True,
        ),
    ]
    status, answer, body, ends_with_close = rng.choice(bases)
    method = "HEAD" if rng.random() < 0.2 else "GET"
    if method == "HEAD":
        answer, body = head_of(answer), b""
    changes: list[str] = []
    exact = True
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        kind = rng.choice(["interim", "stray", "replace", "insert", "cut", "cut", "repeat"])
        if not answer and kind not in ("interim", "stray"):
            continue  # cut to nothing already: the upstream closes without a byte
        if kind == "interim":
            answer = rng.choice(_INTERIM) + answer
        elif kind == "stray":
            if ends_with_close:
                continue  # more bytes would be more body
            answer += rng.choice([json_answer({"case": "stray"}), b"garbage\r\n", b"\r\n"])
        else:
            exact = False
            at = rng.randrange(len(answer))
            if kind == "replace":
                answer = answer[:at] + bytes([rng.randrange(256)]) + answer[at + 1 :]
            elif kind == "insert":
                answer = answer[:at] + rng.choice(_PIECES) + answer[at:]
            elif kind == "cut":
                answer = answer[:at]
            else:  # repeat a header line
                lines = answer.split(b"\r\n")
                if len(lines) > 2:
                    line = rng.randrange(1, len(lines) - 1)
                    lines.insert(line, lines[line])
                    answer = b"\r\n".join(lines)
        changes.append(kind)
    splits = min(rng.choice([0, 0, 1, 2]), max(len(answer) - 1, 0))
    cuts = sorted(rng.sample(range(1, len(answer)), splits))
    parts = [answer[i:j] for i, j in zip([0, *cuts], [*cuts, len(answer)], strict=True)]
    reply = Reply(
        parts, pause=rng.choice([0.0, 0.01, 0.03]), close=ends_with_close or rng.random() < 0.3
    )
    return Case(name, method, reply, status, body, exact, changes)


async def test_randomly_broken_answers_reach_clients_whole_or_as_clean_failures(
    tmp_path: Path,
) -> None:
    """300 upstream answers made at random (seeded) from seven kinds of good ones, GET and
    HEAD, with random changes (bytes replaced, inserted or cut, header lines repeated, interim
    answers before, stray bytes after, writes split and delayed), 20 clients at a time, each
    read by a strict client. For each: an answer or a close within the budget and a second;
    never the gateway's own 500; never another request's answer; an answer whose changes were
    harmless arrives whole and unchanged; a client connection left open is still in step (a
    second request on it gets its own answer). Afterwards: no traceback, and the gateway still
    proxies."""
    seed = fuzz_seed()
    rng = random.Random(seed)
    cases = {case.name: case for case in (_random_case(rng, n) for n in range(300))}

    def reply(request: dict[str, Any]) -> Reply:
        case = cases.get(request["headers"].get("x-case", ""))
        if case is not None:
            return case.reply
        return Reply([json_answer({"case": request["headers"].get("x-case", "?")})])

    slots = asyncio.Semaphore(20)
    wait = BUDGET_MS / 1000 + 1.0
    timeout = {"x-request-timeout": str(BUDGET_MS)}

    async def run(case: Case, running: Running) -> tuple[Case, Answer, Answer | None]:
        async with slots, strict_client(running) as client:
            answer = await client.call(
                case.method, "/api/up/v1/items", {"x-case": case.name, **timeout}, wait
            )
            after = None
            if client.reusable:
                after = await client.call(
                    "GET", "/api/up/v1/items", {"x-case": "after-" + case.name, **timeout}, wait
                )
            return case, answer, after

    async with (
        raw_upstream(reply) as upstream,
        proxied(tmp_path, upstream) as running,
    ):
        outcomes = await asyncio.gather(*(run(case, running) for case in cases.values()))
        statuses: dict[int | None, int] = {}
        for case, answer, after in outcomes:
            where = f"seed {seed}, {case}: got {answer}"
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            assert answer.took < wait, where
            assert answer.status is not None, where  # the gateway always answers something
            assert answer.status != 500, where
            named = set(_NAMED.findall(answer.body))  # cases named whole in the body
            assert named <= {case.name.encode()}, where
            problem_type = answer.headers.get(b"content-type") == MEDIA_TYPE.encode()
            if answer.complete and answer.body and problem_type:
                problem = answer.json()
                if problem.get("type") in _GATEWAY_PROBLEM_TYPES:
                    assert problem["status"] == answer.status, where
            if case.exact:
                assert (answer.complete, answer.error) == (True, ""), where
                expected = case.status if case.status < 500 else 503
                assert answer.status == expected, where
                if case.status < 400:
                    assert answer.body == case.body, where
            if after is not None:
                assert (after.status, after.error) == (200, ""), f"{where}; then {after}"
                assert after.json() == {"case": "after-" + case.name}, f"{where}; then {after}"
        assert running.process.returncode is None
        no_traceback(running)
        async with strict_client(running) as client:
            for n in range(20):
                last = await client.call("GET", "/api/up/v1/items", {"x-case": f"last-{n}"})
                assert last.json() == {"case": f"last-{n}"}, last
    assert {200, 204, 304, 404, 502}.issubset(statuses), statuses  # the changes reach them all


# A case's name, whole, as the upstream writes it in a body ("case-7", "after-case-7", ...).
# (A stray answer's bytes may be body: after a change that leaves an answer without framing,
# its body runs to the connection's end, RFC 9112 6.3.)
_NAMED = re.compile(rb'"((?:after-|last-)?case-[0-9]+)"')
# The problems the gateway makes itself (upstream problems pass through as they are).
_GATEWAY_PROBLEM_TYPES = frozenset(kind.uri for kind in CATALOGUE)
