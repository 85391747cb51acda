"""The data plane: client connections (asyncio.Protocol + httptools) and each request's trip.

A request, in order:
1. Parsed by httptools. Headers over `max_header_bytes`: 431. Headers not complete within
   `header_timeout` (slowloris, or nothing at all): the connection is closed. Malformed or
   ambiguous framing (both Content-Length and Transfer-Encoding, differing Content-Lengths, bad
   chunk sizes, obsolete line folding): 400 and the connection is closed.
2. The budget starts at the request's first byte: `X-Request-Timeout`/`grpc-timeout` count from
   then, clamped to `deadline.max`, or `deadline.default` (a service's own `deadline` settings,
   once the request is routed to it). Invalid: 400. Already spent: 504.
3. Calling conventions, then routing (see conventions.py and routing.py): problems if broken.
4. One upstream attempt (retries come with the upstream policy): connect within
   min(zone connect, remaining), first response byte within min(zone read, remaining - margin);
   `X-Request-Timeout` = remaining - margin. Refused: 503; reset or broken: 502; per-attempt
   timeout: 504 upstream-timeout; the deadline: 504 deadline-exceeded. In every failure the
   upstream connection is closed, never pooled.
5. The answer streams back. Upstream errors (>= 400) that are not problem+json become problems
   with the same status (`detail` from a JSON `message` or `error` field); problem+json passes.
6. One JSON access log line on stdout.

A client that disconnects cancels its request's task: the upstream connection is closed at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import sys
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import httptools

from tether.deadline import Deadline
from tether.errors import DeadlineExceeded, InvalidDeadlineHeader, one_line
from tether.gateway.balancing import connected, pick, refused
from tether.gateway.config import Config, DeadlineSettings, Policy
from tether.gateway.conventions import REQUEST_ID_FORM, Caller, check
from tether.gateway.metrics import Metrics
from tether.gateway.retries import RETRIED_STATUSES, RetryBudget, backoff, fits, method_may_retry
from tether.gateway.routing import Route, route
from tether.gateway.upstream import (
    EndpointPool,
    Feed,
    FlowControl,
    UpstreamConnection,
    UpstreamError,
    no_delay,
)
from tether.problems import (
    BAD_GATEWAY,
    BAD_REQUEST,
    DEADLINE_EXCEEDED,
    EXPIRED_ON_ARRIVAL,
    HEADERS_TOO_LARGE,
    INTERNAL_ERROR,
    INVALID_DEADLINE_HEADER,
    MEDIA_TYPE,
    PAYLOAD_TOO_LARGE,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    Problem,
)
from tether.wire import budget_milliseconds, deadline_from_headers

if TYPE_CHECKING:
    from tether.gateway.auth import TokenVerifier

log = logging.getLogger("tether.gateway")

# Headers that belong to one connection, never forwarded (RFC 9110 7.6.1), plus the deadline
# headers and identity headers the gateway sets itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)
_REPLACED = frozenset(
    {
        b"x-request-timeout",
        b"x-request-deadline",
        b"grpc-timeout",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"content-length",
    }
)
_ERROR_BODY_LIMIT = 64 * 1024
# Answers that never have a body, whatever their headers say (RFC 9110 6.4.1); the gateway
# skips 1xx answers (upstream.py, rule 3).
_BODILESS_STATUSES = frozenset({204, 304})
LOG_FLUSH_SECONDS = 0.1  # access log lines are written in batches at most this old


class Gateway:
    """What every connection of one gateway process shares."""

    def __init__(
        self,
        config: Config,
        *,
        access_log: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        # Looked up once: on CPython 3.11 each asyncio.get_running_loop() is a getpid() call.
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        self.in_flight = 0
        self.idle = asyncio.Event()  # set when draining and no request is in flight
        self.draining = False
        self.listening = False
        self.rng = random.Random()
        self.verifier: TokenVerifier | None = None
        if config.auth is not None:  # PyJWT and cryptography load only when auth is on
            from tether.gateway.auth import TokenVerifier

            self.verifier = TokenVerifier(config.auth)
        self.metrics = (
            Metrics(
                gauges={
                    "in_flight_requests": lambda: float(self.in_flight),
                    "open_connections": lambda: float(len(self.connections)),
                }
            )
            if config.metrics
            else None
        )
        pools: dict[tuple[str, int, str], EndpointPool] = {}
        self.endpoints: dict[str, list[EndpointPool]] = {}
        self.retry_budgets: dict[str, RetryBudget] = {}
        retry = config.retry
        for name, service in config.services.items():
            for endpoint in service.endpoints:
                key = (endpoint.address.host, endpoint.address.port, endpoint.zone)
                if key not in pools:
                    pools[key] = EndpointPool(self.loop, *key)
                self.endpoints.setdefault(name, []).append(pools[key])
            self.retry_budgets[name] = RetryBudget(
                retry.budget_ratio, retry.budget_per_second, retry.budget_window
            )
        self.pools = list(pools.values())
        self._access_log = access_log if access_log is not None else sys.stdout
        self._log_lines: list[str] = []
        self._log_timer: asyncio.TimerHandle | None = None

    def write_access_log(self, line: str) -> None:
        """Queue one access log line; lines go out together every `LOG_FLUSH_SECONDS`."""
        self._log_lines.append(line)
        if self._log_timer is None:
            self._log_timer = self.loop.call_later(LOG_FLUSH_SECONDS, self.flush_access_log)

    def flush_access_log(self) -> None:
        self._log_timer = None
        if self._log_lines:
            self._access_log.write("\n".join(self._log_lines) + "\n")
            self._access_log.flush()
            self._log_lines.clear()


class _TooLarge(Exception):
    pass


class Request:
    """One request as parsed: method, target, headers, body feed, and its timeline."""

    __slots__ = (
        "body",
        "first_byte",
        "has_body",
        "headers",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(self, first_byte: float) -> None:
        self.first_byte = first_byte
        self.method = b""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: Feed | None = None
        self.has_body = False
        self.keep_alive = False  # the client's wish, read when its headers were complete


class ClientConnection(FlowControl, asyncio.Protocol):
    """One client's keep-alive connection; requests are handled one after another.

    Rule (HTTP/1.1 pipelining): answers go out in the order the requests came. One task serves
    one request at a time; requests parsed meanwhile (several can arrive in one read) wait in
    `_queued`, and so does the refusal of a malformed one behind them, which is answered, and
    the connection closed, only after every earlier answer. Bytes arriving while a request is
    served and none is being parsed wait unparsed, with reading paused: what waits is bounded
    by one read.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.loop = gateway.loop
        self.limits = gateway.config.limits
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self.peer_bytes = b"-"
        self._parser = httptools.HttpRequestParser(self)
        self._request: Request | None = None
        self._header_bytes = 0
        self.task: asyncio.Task[None] | None = None
        # One lazy timer per connection (header, body and idle limits): `_due` moves without
        # touching the timer, which re-arms itself when it fires early. A request whose headers
        # arrive in one read costs no timer call at all.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._due: float | None = None
        self._headers_pending = False
        self._backlog: list[bytes] = []
        self._serving: Request | None = None  # the request `task` serves
        self._queued: collections.deque[Request | Problem] = collections.deque()
        self._answering = False  # bytes of the current request's answer have been written
        FlowControl.__init__(self)
        self.closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        no_delay(self.transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "-"
        self.peer_bytes = self.peer.encode()
        self.gateway.connections.add(self)
        self._arm(self.limits.header_timeout)  # a connection that sends nothing is closed too

    def data_received(self, data: bytes) -> None:
        if self.task is not None and self._request is None:
            self._backlog.append(data)  # a pipelined request: parsed once this one is done
            assert self.transport is not None
            self.transport.pause_reading()
            return
        if self._queued and isinstance(self._queued[-1], Problem):
            return  # a refusal waits its turn: nothing after it is read
        try:
            self._parser.feed_data(data)
            if self._headers_pending:  # headers split over reads: their limit starts now
                self._headers_pending = False
                self._arm(self.limits.header_timeout)
        except _TooLarge:
            self._malformed(HEADERS_TOO_LARGE.problem(self._too_large))
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _TooLarge):
                self._malformed(HEADERS_TOO_LARGE.problem(self._too_large))
            else:
                raise
        except httptools.HttpParserError as exc:
            reason = one_line(str(exc) or type(exc).__name__)
            self._malformed(BAD_REQUEST.problem(f"malformed HTTP request: {reason}"))

    @property
    def _too_large(self) -> str:
        return f"the request's headers are larger than {self.limits.max_header_bytes} bytes"

    def _malformed(self, problem: Problem) -> None:
        """A request that cannot be parsed: refused now if it is the one being served (its
        body broke) or nothing is served, else after the answers to those before it."""
        served = self.task is not None and not self.task.done()
        if served and self._request is not self._serving:
            self._queued.append(problem)
            self._disarm()
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self._refuse(problem)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._release_writers()
        self._stop_timer()
        self.gateway.connections.discard(self)
        if self._request is not None and self._request.body is not None:
            self._request.body.end(ConnectionResetError("the client went away"))
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client left: abandon the upstream call now

    def _closed_error(self) -> Exception:
        return ConnectionResetError("the client went away")

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = Request(time.monotonic())
        self._header_bytes = 0
        self._disarm()
        self._headers_pending = True  # armed after this read unless the headers are complete

    def on_url(self, url: bytes) -> None:
        assert self._request is not None
        self._request.target += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._request is not None
        self._request.headers.append((name.lower(), value))
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        assert self.transport is not None
        self._headers_pending = False
        self._disarm()
        request.method = self._parser.get_method()
        request.keep_alive = bool(self._parser.should_keep_alive())  # forgotten after the body
        request.version = self._parser.get_http_version()
        request.has_body = any(
            (n == b"content-length" and v.strip() != b"0") or n == b"transfer-encoding"
            for n, v in request.headers
        )
        if request.has_body:
            request.body = Feed(
                self.loop, self.transport.pause_reading, self.transport.resume_reading
            )
            self._arm(self.limits.body_timeout)
        if self.task is None:
            self._start(request)
        else:
            self._queued.append(request)  # pipelined behind the one being served

    def _start(self, request: Request) -> None:
        self._serving = request
        self._answering = False
        self.task = self.loop.create_task(self._serve(request))

    def on_body(self, body: bytes) -> None:
        if self._request is not None and self._request.body is not None:
            self._request.body.put(body)
            self._arm(self.limits.body_timeout)  # a stall is measured between chunks

    def on_message_complete(self) -> None:
        if self._request is not None and self._request.body is not None:
            self._request.body.end()
        if self._request is not None and self._request.has_body:
            self._disarm()
        self._request = None

    # -- limits -------------------------------------------------------------------------

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise _TooLarge

    def _arm(self, seconds: float) -> None:
        """Close the connection unless `_disarm` or another `_arm` comes within `seconds`."""
        due = self._due = self.loop.time() + seconds
        if self._timer is not None and self._timer_when <= due:
            return  # fires first and re-arms for the rest
        if self._timer is not None:
            self._timer.cancel()
        self._schedule(due)

    def _schedule(self, due: float) -> None:
        self._timer_when = due
        self._timer = self.loop.call_at(due, self._on_timer)

    def _disarm(self) -> None:
        self._due = None

    def _stop_timer(self) -> None:
        self._due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        due = self._due
        if due is None:
            return
        if due > self.loop.time():
            self._schedule(due)  # moved later since the timer was set
            return
        self._too_slow()

    def _too_slow(self) -> None:
        """Headers or a body that did not arrive in time, or an idle keep-alive: close."""
        self._due = None
        if self.transport is not None:
            self.transport.close()

    # -- answering ----------------------------------------------------------------------

    def _refuse(self, problem: Problem) -> None:
        """Answer a request that cannot be parsed or allowed, then close the connection."""
        self._disarm()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if not self._answering and self.transport is not None and not self.closed:
            self.transport.write(_problem_bytes(problem, None, close=True))
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> bool:
        busy = FlowControl.send(self, data)
        self._answering = True
        return busy

    def finished(self, keep_alive: bool) -> None:
        """The current exchange is over: wait for the next request, or close."""
        self.task = None
        self._serving = None
        if self.closed or self.transport is None:
            return
        if not keep_alive or self.gateway.draining:
            self.transport.close()
            return
        if self._queued:
            waiting = self._queued.popleft()
            if isinstance(waiting, Problem):
                self._answering = False  # the answers before it are complete
                self._refuse(waiting)
            else:
                self._start(waiting)
            return
        self._arm(self.limits.idle_timeout)
        if self._backlog:
            data, self._backlog = b"".join(self._backlog), []
            self.transport.resume_reading()
            self.data_received(data)

    async def _serve(self, request: Request) -> None:
        gateway = self.gateway
        gateway.in_flight += 1
        exchange = Exchange(self, request)
        try:
            keep_alive = await exchange.run()
        except asyncio.CancelledError:
            keep_alive = False
            exchange.outcome = exchange.outcome or "client_gone"
            if self.closed:
                return  # the client left; nothing to answer (the log line is written below)
            raise
        except Exception:
            log.exception("request %s: unexpected failure", exchange.request_id)
            keep_alive = False
            if not exchange.response_started and not self.closed:
                await exchange.answer_problem(
                    INTERNAL_ERROR.problem("the gateway failed"), keep_alive=False
                )
        finally:
            gateway.in_flight -= 1
            if gateway.draining and not gateway.in_flight:
                gateway.idle.set()
            exchange.finish()
        self.finished(keep_alive and request.keep_alive)


class Exchange:
    """One request's trip through the gateway and back."""

    __slots__ = (
        "_body_kept",
        "_expired",
        "_held_body",
        "attempts",
        "budget",
        "caller",
        "config",
        "connection",
        "deadline",
        "gateway",
        "headers",
        "outcome",
        "request",
        "request_id",
        "response_started",
        "retry_reasons",
        "route",
        "status",
    )

    def __init__(self, connection: ClientConnection, request: Request) -> None:
        self.connection = connection
        self.gateway = connection.gateway
        self.request = request
        self.headers = _multi(request.headers)  # indexed once: every step reads it
        self.config = connection.gateway.config
        self.request_id: str | None = None
        self.caller: Caller | None = None
        self.route: Route | None = None
        self.status = 0
        self.outcome = ""
        self.budget: float | None = None
        self.deadline: Deadline | None = None
        self.attempts: list[tuple[str, float, str]] = []  # (upstream, seconds, outcome) each
        self.retry_reasons: list[str] = []
        self.response_started = False
        self._held_body: list[bytes] | None = None  # the request body, kept for a retry
        self._body_kept = False  # True once `_held_body` holds the whole body
        self._expired = False  # the deadline's timer fired

    async def run(self) -> bool:
        """Serve the request; True when the client connection may be kept alive."""
        request = self.request
        headers = self.headers
        given = _first(headers, b"x-request-id")
        if given is not None and REQUEST_ID_FORM.fullmatch(given):  # echoed even on early refusals
            self.request_id = given.decode("ascii")
        try:
            asked = deadline_from_headers(request.headers, received_at=request.first_byte)
        except InvalidDeadlineHeader as exc:
            problem = INVALID_DEADLINE_HEADER.problem(str(exc), header=exc.header)
            return await self.answer_problem(problem)
        deadline = self._deadline(asked, self.config.deadline)
        gateway = self.gateway
        caller = check(
            headers,
            has_body=request.has_body,
            rules=self.config.conventions,
            authenticated=gateway.verifier is not None,
        )
        if isinstance(caller, Problem):
            return await self.answer_problem(caller)
        self.caller, self.request_id = caller, caller.request_id
        if gateway.verifier is not None:
            user = gateway.verifier.verify(_first(headers, b"authorization"))
            if isinstance(user, Problem):
                return await self.answer_problem(user, extra=[b"www-authenticate: Bearer\r\n"])
            caller.user_id = user
        found = route(
            request.target, self.config.services, version_header=b"api-version" in headers
        )
        if isinstance(found, Problem):
            return await self.answer_problem(found)
        self.route = found
        if found.service.deadline is not None:  # the service's own default and maximum
            deadline = self._deadline(asked, found.service.deadline)
        length = _first(headers, b"content-length")
        if (
            length is not None
            and length.isdigit()
            and int(length) > self.config.limits.max_body_bytes
        ):
            return await self.answer_problem(
                PAYLOAD_TOO_LARGE.problem(
                    f"the body is larger than {self.config.limits.max_body_bytes} bytes"
                ),
                keep_alive=False,
            )
        if deadline.expired:
            self.outcome = "expired_on_arrival"
            return await self.answer_problem(
                EXPIRED_ON_ARRIVAL.problem(
                    "the request's deadline had passed when it arrived; nothing was done"
                )
            )
        self.deadline = deadline
        self._continue_if_expected()
        # The budget is enforced like a deadline block (the task is cancelled at the deadline
        # and only that cancellation is turned into a 504) but with one timer and no ambient
        # context: nothing in the gateway reads the ambient deadline, and a block's
        # bookkeeping cost 4 us of a request's ~70.
        task = self.connection.task
        assert task is not None
        loop = self.gateway.loop
        cancelling = task.cancelling()
        timer = loop.call_at(loop.time() + deadline.remaining(), self._expire)
        try:
            return await self.forward(found, caller)
        except DeadlineExceeded:  # raised by forward: no budget left for an attempt
            pass
        except asyncio.CancelledError:
            if not self._expired or task.uncancel() > cancelling:
                raise  # not the deadline's doing (the client left, the gateway stops)
        finally:
            timer.cancel()
        self.outcome = "deadline_exceeded"
        if self.response_started:
            return False
        return await self.answer_problem(self._budget_ran_out())

    def _continue_if_expected(self) -> None:
        """Tell a client that waits for `100 Continue` before sending its body (curl waits up to
        1 s) to send it: the request has passed the checks and the gateway reads bodies before
        forwarding them (RFC 9110, 10.1.1). Written straight to the client, as an interim
        answer: the final one is still to come. Not forwarded: the upstream gets the body."""
        request = self.request
        if (
            request.has_body
            and request.version != "1.0"
            and (expect := _first(self.headers, b"expect")) is not None
            and expect.strip().lower() == b"100-continue"
            and self.connection.transport is not None
        ):
            self.connection.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _expire(self) -> None:
        self._expired = True
        task = self.connection.task
        if task is not None:
            task.cancel()

    def _budget_ran_out(self) -> Problem:
        return DEADLINE_EXCEEDED.problem(
            f"the request's budget of {(self.budget or 0) * 1000:.0f} ms ran out before the "
            "upstream answered"
        )

    def _deadline(self, asked: Deadline | None, settings: DeadlineSettings) -> Deadline:
        """The budget from the first byte: the deadline the headers `asked` for, clamped to
        `settings.max`, or `settings.default`."""
        first_byte = self.request.first_byte
        when = (
            first_byte + settings.default
            if asked is None
            else min(asked.when, first_byte + settings.max)
        )
        self.budget = max(when - first_byte, 0.0)
        return Deadline(when)

    # -- upstream attempts (rules in retries.py and balancing.py) ---------------------------

    async def forward(self, found: Route, caller: Caller) -> bool:
        """Attempts until one answers, retrying only what retries.py allows."""
        gateway = self.gateway
        config = self.config
        service = found.service
        settings = config.retry
        margin = config.deadline.margin
        deadline = self.deadline
        assert deadline is not None
        budget = gateway.retry_budgets[service.name]
        budget.record_request()
        pools = gateway.endpoints[service.name]
        pool = pick(pools, zone=config.zone, now=gateway.loop.time(), rng=gateway.rng)
        retries = self._policy(pool).retries  # the first endpoint's zone decides how many
        may_send_again = method_may_retry(
            self.request.method,
            idempotency_key=b"idempotency-key" in self.headers,
            service_allows_key=service.retry_with_idempotency_key,
        )
        if not may_send_again:
            retries = 0
        fresh = False  # rule 6: the next attempt opens a new connection
        if retries and self.request.body is not None:
            self._held_body = []  # kept while it streams, so a retry can send it again
        attempt = 1
        while True:
            if deadline.remaining() < margin + settings.min_attempt:
                raise DeadlineExceeded("no budget left for an upstream attempt")
            result = await self._attempt(
                pool, attempt, self._policy(pool), found, caller, retries >= attempt, fresh
            )
            if not isinstance(result, _Failure):
                return result
            if result.stale and may_send_again and not fresh and self._replayable():
                fresh = True  # once per request
                continue
            if attempt > retries or (self.request.body is not None and self._held_body is None):
                return await self._answer_failure(result)
            pause = backoff(attempt, settings, gateway.rng)
            if not fits(pause, deadline.remaining(), margin, settings):
                return await self._answer_failure(result)
            if not budget.try_withdraw():
                if gateway.metrics is not None:
                    gateway.metrics.count("retry_budget_refusals", (service.name,))
                return await self._answer_failure(result)
            self.retry_reasons.append(result.reason)
            if gateway.metrics is not None:
                gateway.metrics.count("retries", (service.name, result.reason))
            if pause > 0:
                await asyncio.sleep(pause)
            pool = pick(
                pools, zone=config.zone, now=gateway.loop.time(), rng=gateway.rng, avoid=pool
            )
            attempt += 1

    def _replayable(self) -> bool:
        """Whether the request can be sent again: it has no body, or all of it is kept."""
        return self.request.body is None or (self._held_body is not None and self._body_kept)

    def _policy(self, pool: EndpointPool) -> Policy:
        """The timeouts and retries of `pool`'s zone: same zone as the gateway, or another."""
        config = self.config
        return config.same_zone if pool.zone == config.zone else config.cross_zone

    async def _attempt(
        self,
        pool: EndpointPool,
        attempt: int,
        policy: Policy,
        found: Route,
        caller: Caller,
        may_retry: bool,
        fresh: bool = False,
    ) -> bool | _Failure:
        """One attempt: the keep-alive verdict once answered, or a `_Failure` to retry.
        `fresh`: on a new connection, not a pooled one."""
        deadline = self.deadline
        assert deadline is not None
        metrics = self.gateway.metrics
        if metrics is not None:
            attempts = metrics.attempts
            key = (found.service.name, str(attempt))
            attempts[key] = attempts.get(key, 0) + 1
        started = time.monotonic()
        outcome = "abandoned"  # unless the attempt ends in one of the ways below
        try:
            try:
                upstream = (None if fresh else pool.take()) or await pool.connect(
                    min(policy.connect, deadline.remaining())
                )
            except TimeoutError:
                outcome = "connect_timeout"
                return _Failure(
                    "connect_timeout",
                    UPSTREAM_TIMEOUT.problem(
                        f"could not connect to the upstream within {policy.connect * 1000:.0f} ms"
                    ),
                )
            except UpstreamError as exc:
                outcome = exc.kind
                refused(pool, self.gateway.loop.time())
                return _Failure(exc.kind, UPSTREAM_UNAVAILABLE.problem(str(exc)))
            if pool.refusals:
                connected(pool)
            pool.in_flight += 1
            try:
                result = await self._exchange(
                    upstream, found, caller, policy.read, started, attempt, may_retry
                )
            finally:
                pool.in_flight -= 1
                pool.release(upstream)
            outcome = result.reason if isinstance(result, _Failure) else self.outcome or "ok"
            return result
        finally:
            self.attempts.append((pool.label, time.monotonic() - started, outcome))

    async def _exchange(
        self,
        upstream: UpstreamConnection,
        found: Route,
        caller: Caller,
        read: float,
        started: float,
        attempt: int,
        may_retry: bool,
    ) -> bool | _Failure:
        deadline = self.deadline
        assert deadline is not None
        margin = self.config.deadline.margin
        head_future = upstream.start(head_only=self.request.method == b"HEAD")
        left = deadline.remaining() - margin
        if left < 0.001:
            raise DeadlineExceeded("no budget left for an upstream attempt")
        head_wait = read
        try:
            if upstream.send(self._upstream_head(found, caller, left, upstream, attempt)):
                await upstream.drained()
            if self.request.body is not None:
                await self._send_body(upstream)
            # The read timeout is counted from the end of the request, capped by the budget.
            head_wait = min(read, deadline.remaining() - margin)
            upstream.expect_head_within(head_wait)
            status, headers = await head_future
        except TimeoutError:
            upstream.close()
            if head_wait < read:  # the budget, not the zone's read timeout, is what ran out
                self.outcome = "deadline_exceeded"
                return await self.answer_problem(self._budget_ran_out())
            self.outcome = "upstream_timeout"
            return await self.answer_problem(
                UPSTREAM_TIMEOUT.problem(
                    f"the upstream did not answer within its {read * 1000:.0f} ms read timeout"
                )
            )
        except UpstreamError as exc:
            upstream.close()  # nothing of an answer came: safe to try elsewhere
            kind = UPSTREAM_UNAVAILABLE if exc.kind == "refused" else BAD_GATEWAY
            stale = upstream.reused and exc.kind == "reset" and not upstream.received
            return _Failure(exc.kind, kind.problem(str(exc)), stale=stale)
        except _BodyTooLarge:
            upstream.close()
            self.outcome = "body_too_large"
            return await self.answer_problem(
                PAYLOAD_TOO_LARGE.problem(
                    f"the body is larger than {self.config.limits.max_body_bytes} bytes"
                ),
                keep_alive=False,
            )
        except BaseException:
            upstream.close()  # the deadline, or the client left: the upstream must stop too
            raise
        try:
            if may_retry and status in RETRIED_STATUSES:
                body = await _read_bounded(upstream.body)
                return _Failure(f"status_{status}", response=(status, headers, body))
            self.outcome = "ok"
            return await self._relay(upstream, status, headers, started)
        except UpstreamError as exc:  # the answer broke off (cut short, or not HTTP)
            upstream.close()
            if not self.response_started:
                return _Failure(exc.kind, BAD_GATEWAY.problem(str(exc)))
            # The head is relayed: closing the client's connection is the only way left to
            # tell it the answer is incomplete.
            self.outcome = f"upstream_{exc.kind}"
            log.info("request %s: %s; the client's connection is closed", self.request_id, exc)
            return False
        except BaseException:
            upstream.close()
            raise

    async def _answer_failure(self, failure: _Failure) -> bool:
        """The last attempt's failure, as the client's answer."""
        self.outcome = failure.reason
        if failure.response is None:
            assert failure.problem is not None
            return await self.answer_problem(failure.problem)
        status, headers, body = failure.response
        content_type, _ = _content(headers)
        if not content_type.lower().startswith(MEDIA_TYPE.encode()):
            return await self.answer_problem(_rewritten(status, body))
        self.status = status
        self.response_started = True
        keep_alive = self.request.keep_alive
        head = self._response_head(status, headers, None)
        head.append(b"content-length: %d\r\n" % len(body))
        if not keep_alive:
            head.append(b"connection: close\r\n")
        if self.request.method == b"HEAD":
            body = b""
        await self.connection.write(b"".join(head) + b"\r\n" + body)
        return keep_alive

    def _upstream_head(
        self,
        found: Route,
        caller: Caller,
        left: float,
        upstream: UpstreamConnection,
        attempt: int,
    ) -> bytes:
        request = self.request
        headers = self.headers
        authenticated = self.gateway.verifier is not None
        dropped: set[bytes] = set()
        if b"connection" in headers:  # names listed in Connection are hop-by-hop too
            for value in headers[b"connection"]:
                dropped.update(t.strip().lower() for t in value.split(b","))
        out = [
            request.method + b" " + found.upstream_target + b" HTTP/1.1\r\n",
            upstream.pool.host_header,
        ]
        for name, value in request.headers:
            if (
                name in _NOT_FORWARDED
                or (dropped and name in dropped)
                or (authenticated and name == b"x-user-id")
            ):
                continue
            out.append(name + b": " + value + b"\r\n")
        out.append(b"x-request-timeout: %d\r\n" % budget_milliseconds(left))
        out.append(b"x-tether-attempt: %d\r\n" % attempt)
        if caller.request_id_generated:
            out.append(b"x-request-id: " + caller.request_id.encode() + b"\r\n")
        if authenticated and caller.user_id is not None:
            out.append(b"x-user-id: " + caller.user_id.encode() + b"\r\n")
        chain = b", ".join([*headers.get(b"x-forwarded-for", ()), self.connection.peer_bytes])
        out.append(b"x-forwarded-for: " + chain + b"\r\n")
        out.append(b"x-forwarded-proto: http\r\n")
        host = _first(headers, b"host")
        if host is not None:
            out.append(b"x-forwarded-host: " + host + b"\r\n")
        if request.has_body:
            length = _first(headers, b"content-length")
            out.append(
                b"content-length: " + length + b"\r\n"
                if length is not None
                else b"transfer-encoding: chunked\r\n"
            )
        out.append(b"\r\n")
        return b"".join(out)

    async def _send_body(self, upstream: UpstreamConnection) -> None:
        """Stream the request body upstream (or replay the copy kept from the first attempt)."""
        held = self._held_body
        body = self.request.body
        if body is None:
            return
        chunked = _first(self.headers, b"content-length") is None
        if held is not None and self._body_kept:  # a retry: replay the copy
            for kept in held:
                await upstream.write(b"%x\r\n%s\r\n" % (len(kept), kept) if chunked else kept)
        else:
            sent = 0
            limit = self.config.limits.max_body_bytes
            keep = self.config.retry.body_buffer
            while (chunk := await body.next()) is not None:
                sent += len(chunk)
                if sent > limit:
                    raise _BodyTooLarge
                if held is not None:
                    if sent <= keep:
                        held.append(chunk)
                    else:  # too big to keep: this request cannot be retried
                        held = self._held_body = None
                await upstream.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            self._body_kept = self._held_body is not None
        if chunked:
            await upstream.write(b"0\r\n\r\n")

    # -- answers ------------------------------------------------------------------------

    async def _relay(
        self,
        upstream: UpstreamConnection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        started: float,
    ) -> bool:
        """Stream the upstream's answer to the client (rewriting errors into problems)."""
        content_type, length = _content(headers)
        if status >= 400 and not content_type.lower().startswith(MEDIA_TYPE.encode()):
            body = await _read_bounded(upstream.body)
            return await self.answer_problem(_rewritten(status, body))
        self.status = status
        keep_alive = self.request.keep_alive
        head = self._response_head(status, headers, started)
        if status in _BODILESS_STATUSES or self.request.method == b"HEAD":
            # No body, so no framing of one: 204 has no length (RFC 9110 8.6); 304 and an
            # answer to HEAD may announce the length a GET would get, which is passed on.
            if length is not None and status != 204:
                head.append(b"content-length: " + length + b"\r\n")
            if not keep_alive:
                head.append(b"connection: close\r\n")
            self.response_started = True
            await self.connection.write(b"".join(head) + b"\r\n")
            return keep_alive
        head.append(
            b"content-length: " + length + b"\r\n"
            if length is not None
            else b"transfer-encoding: chunked\r\n"
        )
        if not keep_alive:
            head.append(b"connection: close\r\n")
        self.response_started = True
        assert upstream.body is not None
        ready, whole = upstream.body.ready()  # usually all of a small answer: one write
        if ready and length is None:
            ready = b"%x\r\n%s\r\n" % (len(ready), ready)
        if whole:
            ending = b"0\r\n\r\n" if length is None else b""
            if self.connection.send(b"".join(head) + b"\r\n" + ready + ending):
                await self.connection.drained()
            return keep_alive
        await self.connection.write(b"".join(head) + b"\r\n" + ready)
        while (chunk := await upstream.body.next()) is not None:
            await self.connection.write(
                chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk)
            )
        if length is None:
            await self.connection.write(b"0\r\n\r\n")
        return keep_alive

    def _response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], started: float | None
    ) -> list[bytes]:
        """Status line, the upstream's end-to-end headers, and the gateway's own (no framing)."""
        head = [_status_line(status)]
        for name, value in headers:
            if name not in _NOT_RETURNED:
                head.append(name + b": " + value + b"\r\n")
        head += self._tether_headers(started)
        return head

    def _tether_headers(self, started: float | None = None) -> list[bytes]:
        now = time.monotonic()
        total = (now - self.request.first_byte) * 1000
        upstream = (now - started) * 1000 if started is not None else 0.0
        timing = b"gateway;dur=%.1f, upstream;dur=%.1f" % (total - upstream, upstream)
        if self.budget is not None:
            timing += b", budget;dur=%.1f" % (self.budget * 1000)
        out = [b"server-timing: " + timing + b"\r\n"]
        if self.request_id is not None:
            out.append(b"x-request-id: " + self.request_id.encode() + b"\r\n")
        return out

    async def answer_problem(
        self, problem: Problem, *, keep_alive: bool = True, extra: list[bytes] | None = None
    ) -> bool:
        """Answer with `problem` (request id and instance filled in); the keep-alive verdict."""
        problem = Problem(
            type=problem.type,
            title=problem.title,
            status=problem.status,
            detail=problem.detail,
            instance=self.request.target.decode("latin-1"),
            request_id=self.request_id,
            extensions=problem.extensions,
        )
        self.status = problem.status
        self.outcome = self.outcome or "refused"
        if problem.status < 500 and self.outcome == "refused":
            self._refused(problem)
        body = self.request.body
        unread_body = body is not None and not body.finished
        keep = keep_alive and not unread_body and self.request.keep_alive
        self.response_started = True
        head = self._tether_headers() + (extra or [])
        answer = _problem_bytes(problem, head, close=not keep)
        if self.request.method == b"HEAD":  # the head a GET would get, without its body
            answer = answer[: answer.index(b"\r\n\r\n") + 4]
        if self.connection.send(answer):
            await self.connection.drained()
        return keep

    def _refused(self, problem: Problem) -> None:
        """The audit line and the refusal counter for a request the conventions turned away."""
        reason = problem.type.rpartition(":")[2]
        header = problem.extensions.get("header")
        if isinstance(header, str):
            reason += ":" + header.lower()
        if self.gateway.metrics is not None:
            self.gateway.metrics.count("convention_refusals", (reason,))
        log.info(
            json.dumps(
                {
                    "audit": "refused",
                    "request_id": self.request_id,
                    "app_id": self.caller.app_id if self.caller else None,
                    "path": self.request.target.decode("latin-1"),
                    "reason": problem.detail,
                }
            )
        )

    # -- after the answer ---------------------------------------------------------------

    def finish(self) -> None:
        """Count the request in the metrics and write its access log line."""
        now = time.monotonic()
        duration = now - self.request.first_byte
        route = self.route
        service = route.service.name if route is not None else "-"
        method = self.request.method.decode("latin-1")
        metrics = self.gateway.metrics
        if metrics is not None:
            key = (
                service,
                route.version if route is not None else "-",
                method if route is not None else "-",
                _STATUS_CLASS.get(self.status // 100, "none"),
            )
            requests = metrics.requests
            requests[key] = requests.get(key, 0) + 1
            metrics.latency.observe(_labels(service), duration)
            if self.budget is not None:
                metrics.budgets.observe((), self.budget)
            if self.outcome == "deadline_exceeded":
                metrics.count("deadline_exceeded", (service,))
            elif self.outcome == "expired_on_arrival":
                metrics.count("expired_on_arrival")
        if self.config.access_log:
            self.gateway.write_access_log(self._access_line(now, duration, service, method))

    def _access_line(self, now: float, duration: float, service: str, method: str) -> str:
        """One JSON object, built by hand: this runs for every request (json.dumps of a dict
        cost a tenth of the gateway's time). Only values the gateway has validated or chosen
        itself are written unescaped: request and app ids match their patterns, service,
        version and upstream come from the configuration, method is an HTTP token, outcomes
        and reasons are the gateway's own words."""
        deadline = self.deadline
        route = self.route
        attempts = self.attempts
        app = f'"{self.caller.app_id}"' if self.caller is not None else "null"
        request_id = f'"{self.request_id}"' if self.request_id is not None else "null"
        if route is not None:
            where = f'"service":"{service}","version":"{route.version}"'
        else:
            where = '"service":null,"version":null'
        if len(attempts) == 1:
            upstream, spent, outcome = attempts[0]
            detail = f'{{"upstream":"{upstream}","ms":{spent * 1000:.1f},"outcome":"{outcome}"}}'
            last = f'"{upstream}"'
        else:
            detail = ",".join(
                f'{{"upstream":"{a}","ms":{t * 1000:.1f},"outcome":"{o}"}}' for a, t, o in attempts
            )
            spent = sum(t for _, t, _ in attempts)
            last = f'"{attempts[-1][0]}"' if attempts else '"-"'
        reasons = ",".join(f'"{r}"' for r in self.retry_reasons)
        budget = f"{self.budget * 1000:.1f}" if self.budget is not None else "null"
        left = f"{(deadline.when - now) * 1000:.1f}" if deadline is not None else "null"
        return (
            f'{{"request_id":{request_id},"app_id":{app},'
            f'{where},"method":"{method}","status":{self.status},'
            f'"duration_ms":{duration * 1000:.1f},"budget_ms":{budget},"budget_left_ms":{left},'
            f'"upstream":{last},"upstream_ms":{spent * 1000:.1f},'
            f'"outcome":"{self.outcome or "ok"}","attempts":{len(attempts)},'
            f'"retry_reasons":[{reasons}],"attempt_detail":[{detail}]}}'
        )


class _Failure:
    """An attempt that failed in a way that may be retried (rule 2 of retries.py), with what
    to answer if it is not: a problem, or the upstream's own error answer held whole."""

    __slots__ = ("problem", "reason", "response", "stale")

    def __init__(
        self,
        reason: str,
        problem: Problem | None = None,
        *,
        response: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None,
        stale: bool = False,
    ) -> None:
        self.reason = reason
        self.problem = problem
        self.response = response
        self.stale = stale  # a pooled connection closed as it was reused (retries.py, rule 6)


class _BodyTooLarge(Exception):
    pass


_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_LABELS: dict[str, tuple[str]] = {}


def _labels(service: str) -> tuple[str]:
    """The one-label tuple for `service`, built once (services come from the configuration)."""
    labels = _LABELS.get(service)
    if labels is None:
        labels = _LABELS[service] = (service,)
    return labels


# `expect`: the gateway answers `100 Continue` itself and forwards the whole body.
_NOT_FORWARDED = _HOP_BY_HOP | _REPLACED | {b"x-tether-attempt", b"expect"}
# Upstream answer headers the gateway does not pass back: framing is its own, and X-Request-ID
# is the gateway's one (a tether service echoes the id it was given: the client would get it
# twice). The upstream's Server-Timing is kept, beside the gateway's: each hop's own.
_NOT_RETURNED = _HOP_BY_HOP | {b"content-length", b"x-request-id"}


def _multi(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        out.setdefault(name, []).append(value)
    return out


def _first(headers: dict[bytes, list[bytes]], name: bytes) -> bytes | None:
    values = headers.get(name)
    return values[0] if values else None


def _content(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes | None]:
    """An answer's content type (b"" when absent) and content length (None when absent)."""
    content_type, length = b"", None
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            length = value
    return content_type, length


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {_phrase(status)}\r\n".encode()
    return line


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _problem_bytes(problem: Problem, extra: list[bytes] | None, *, close: bool) -> bytes:
    body = problem.to_json()
    head = [
        _status_line(problem.status),
        b"content-type: " + MEDIA_TYPE.encode() + b"\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
    ]
    head += extra or []
    if close:
        head.append(b"connection: close\r\n")
    return b"".join(head) + b"\r\n" + body


async def _read_bounded(body: Feed | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    if body is None:
        return b""
    while (chunk := await body.next()) is not None:
        if size < _ERROR_BODY_LIMIT:
            chunks.append(chunk[: _ERROR_BODY_LIMIT - size])
            size += len(chunk)
    return b"".join(chunks)


def _rewritten(status: int, body: bytes) -> Problem:
    """An upstream error answer as a problem: same status, its message as the detail."""
    detail = _phrase(status)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        message = data.get("message", data.get("error"))
        if isinstance(message, str) and message:
            detail = message[:1000]
    return Problem(type="about:blank", title=_phrase(status), status=status, detail=detail)
