"""The filter chain: order, the safety net, and visible short-circuits."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest

from tether import (
    ChainError,
    SafetyNet,
    UpstreamTimeout,
    UpstreamUnavailable,
    chain,
    request_id_scope,
    server_chain,
)
from tether.chain import Handler


@dataclass
class Response:
    status: int
    body: str
    answered_by: str | None = None


async def ok(request: str) -> Response:
    return Response(200, f"handled {request}")


def tag(name: str, trail: list[str]):  # type: ignore[no-untyped-def]
    async def filter_(request: str, next: Handler[str, Response]) -> Response:
        trail.append(f"{name} in")
        response = await next(request)
        trail.append(f"{name} out")
        return response

    filter_.__qualname__ = name
    return filter_


async def refuse(request: str, next: Handler[str, Response]) -> Response:
    return Response(401, "no token")


def internal_error(request: object, exc: Exception) -> Response:
    return Response(500, "internal error")


def test_first_filter_is_outermost() -> None:
    """chain(a, b, handler) runs a around b around the handler."""
    trail: list[str] = []
    handler = chain(tag("a", trail), tag("b", trail), ok)
    assert asyncio.run(handler("x")).body == "handled x"
    assert trail == ["a in", "b in", "b out", "a out"]


def test_a_handler_alone_is_a_chain() -> None:
    """chain(handler) is the handler."""
    assert asyncio.run(chain(ok)("y")).status == 200


@pytest.mark.parametrize("links", [(), (1,), (ok, "not callable", ok)])
def test_bad_links_are_refused_at_build_time(links: tuple[object, ...]) -> None:
    """No links, or a link that is not callable, is a ChainError when building."""
    with pytest.raises(ChainError):
        chain(*links)  # type: ignore[arg-type]


def test_a_misplaced_safety_net_is_refused_with_directions() -> None:
    """A SafetyNet anywhere but first fails at build time and says what to move where."""
    trail: list[str] = []
    with pytest.raises(ChainError) as caught:
        chain(tag("auth", trail), SafetyNet(internal_error), ok)
    message = str(caught.value)
    assert "filter 2" in message
    assert "auth" in message
    assert "first position" in message


def test_server_chain_requires_a_safety_net() -> None:
    """server_chain() without a leading SafetyNet is a ChainError."""
    with pytest.raises(ChainError, match="must start with a SafetyNet"):
        server_chain(refuse, ok)
    with pytest.raises(ChainError):
        server_chain()


def test_safety_net_answers_for_any_exception_without_leaking_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception below the net becomes the internal-error answer; the log has the rest."""

    async def crash(request: str) -> Response:
        raise RuntimeError("secret connection string")

    handler = server_chain(SafetyNet(internal_error), crash)
    with caplog.at_level(logging.ERROR), request_id_scope("req-42"):
        response = asyncio.run(handler("x"))
    assert response == Response(500, "internal error")
    record = caplog.records[-1]
    assert record.request_id == "req-42"
    assert "req-42" in record.getMessage()
    assert record.exc_info is not None
    assert "secret" in str(record.exc_info[1])


def test_the_safety_net_and_short_circuits_log_under_an_apps_record_factory(
    caplog: pytest.LogCaptureFixture, apps_record_factory: str
) -> None:
    """A record factory that sets `request_id` (as services install) does not turn the safety
    net's or a short-circuit's log line into a KeyError: the answers are the same."""

    async def crash(request: str) -> Response:
        raise RuntimeError("secret")

    async def refuse(request: str, next: Handler[str, Response]) -> Response:
        return Response(401, "no")

    with caplog.at_level(logging.INFO), request_id_scope("req-42"):
        assert asyncio.run(server_chain(SafetyNet(internal_error), crash)("x")).status == 500
        assert asyncio.run(chain(refuse, ok)("x")).answered_by is not None
    assert [r.request_id for r in caplog.records] == [apps_record_factory] * 2  # type: ignore[attr-defined]


def test_safety_net_logs_a_fan_outs_outcomes_as_outcomes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler whose fan-out failed with tether's errors only: a warning naming the first
    (and the others), no traceback, as for the one error alone; a group holding a bug is
    logged as the bug it is."""

    async def fan_out(request: str) -> Response:
        errors: list[Exception] = [UpstreamUnavailable("db down"), UpstreamTimeout("slow")]
        if request == "bug":
            errors.append(KeyError("k"))
        raise ExceptionGroup("unhandled errors in a TaskGroup", errors)

    answered: list[Exception] = []

    def answer(request: object, exc: Exception) -> Response:
        answered.append(exc)
        return Response(503, "unavailable")

    handler = server_chain(SafetyNet(answer), fan_out)
    with caplog.at_level(logging.INFO), request_id_scope("req-7"):
        asyncio.run(handler("outcomes"))
        asyncio.run(handler("bug"))
    outcomes, bug = caplog.records
    assert outcomes.levelno == logging.WARNING
    assert outcomes.exc_info is None
    assert outcomes.getMessage() == (
        "request req-7 ended with UpstreamUnavailable: "
        "db down (the first of an exception group; also UpstreamTimeout)"
    )
    assert bug.levelno == logging.ERROR
    assert bug.exc_info is not None
    assert all(isinstance(exc, ExceptionGroup) for exc in answered)  # the answer sees it all


def test_safety_net_keeps_serving_after_many_failures() -> None:
    """1,000 failing requests in a row, then a good one succeeds."""
    calls = 0

    async def sometimes(request: str) -> Response:
        nonlocal calls
        calls += 1
        if request == "bad":
            raise ValueError("bad token")
        return Response(200, "ok")

    handler = server_chain(SafetyNet(internal_error, logger=logging.getLogger("quiet")), sometimes)

    async def main() -> list[int]:
        statuses = [(await handler("bad")).status for _ in range(1000)]
        return [*statuses, (await handler("good")).status]

    logging.getLogger("quiet").disabled = True
    try:
        statuses = asyncio.run(main())
    finally:
        logging.getLogger("quiet").disabled = False
    assert statuses == [500] * 1000 + [200]
    assert calls == 1001


def test_safety_net_lets_cancellation_through() -> None:
    """A cancellation of the request's task is never turned into an answer."""
    started = asyncio.Event()

    async def slow(request: str) -> Response:
        started.set()
        await asyncio.sleep(10)
        return Response(200, "late")

    async def main() -> None:
        handling = asyncio.create_task(server_chain(SafetyNet(internal_error), slow)("x"))
        await started.wait()
        handling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handling

    asyncio.run(main())


def test_safety_net_answers_a_stray_cancelled_error_as_a_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that awaits a task something else cancelled gets a CancelledError while its
    own task is not being cancelled: nobody is stopping the request, so it is answered, as a
    failure (it escaped the safety net, unanswered), and logged with its traceback."""

    async def shared_work() -> None:
        await asyncio.sleep(10)

    async def handler(request: str) -> Response:
        work = asyncio.create_task(shared_work())
        await asyncio.sleep(0)
        work.cancel()  # elsewhere: the work's owner shuts it down
        await work
        return Response(200, "never")

    with caplog.at_level(logging.ERROR, logger="tether.safety_net"), request_id_scope("req-9"):
        response = asyncio.run(server_chain(SafetyNet(internal_error), handler)("x"))
    assert response.status == 500
    (record,) = caplog.records
    assert "req-9" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert isinstance(record.exc_info[1].__cause__, asyncio.CancelledError)


def test_short_circuit_is_visible_on_the_response_in_logs_and_to_a_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A filter answering without next is named on the response, in the log and to the hook."""
    trail: list[str] = []
    seen: list[tuple[str, object]] = []
    handler = chain(
        tag("outer", trail),
        refuse,
        ok,
        on_short_circuit=lambda name, request, response: seen.append((name, request)),
    )
    with caplog.at_level(logging.INFO, logger="tether.chain"), request_id_scope("req-7"):
        response = asyncio.run(handler("x"))
    assert response.status == 401
    assert response.answered_by == "refuse"
    assert seen == [("refuse", "x")]
    assert trail == ["outer in", "outer out"]
    record = caplog.records[-1]
    assert record.answered_by == "refuse"
    assert "req-7" in record.getMessage()


def test_no_short_circuit_is_reported_when_every_filter_calls_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A chain that runs through to the handler reports nothing."""
    trail: list[str] = []
    with caplog.at_level(logging.INFO, logger="tether.chain"):
        response = asyncio.run(chain(tag("a", trail), tag("b", trail), ok)("x"))
    assert response.answered_by is None
    assert caplog.records == []


def test_short_circuit_with_plain_responses_still_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Responses without an answered_by attribute are left alone; the log still names it."""

    async def refuse_plain(request: str, next: Handler[str, dict[str, int]]) -> dict[str, int]:
        return {"status": 403}

    async def handler(request: str) -> dict[str, int]:
        return {"status": 200}

    with caplog.at_level(logging.INFO, logger="tether.chain"):
        assert asyncio.run(chain(refuse_plain, handler)("x")) == {"status": 403}
    assert caplog.records[-1].answered_by.endswith("<locals>.refuse_plain")  # type: ignore[attr-defined]
