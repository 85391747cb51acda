"""RFC 9457 problems and the catalogue of problem types tether emits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether import DeadlineExceeded, InvalidDeadlineHeader, UpstreamTimeout, UpstreamUnavailable
from tether.errors import failure_summary, one_line, reported_failure
from tether.problems import (
    CATALOGUE,
    DEADLINE_EXCEEDED,
    INTERNAL_ERROR,
    MEDIA_TYPE,
    Problem,
    problem_for_exception,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def test_catalogue_types_are_unique_and_well_formed() -> None:
    """Every problem type has its own URI, a 4xx/5xx status and a title."""
    uris = [kind.uri for kind in CATALOGUE]
    assert len(set(uris)) == len(uris)
    for kind in CATALOGUE:
        assert kind.uri.startswith("tag:tether.dev,2026:problem:")
        assert 400 <= kind.status <= 599
        assert kind.title


def test_catalogue_covers_what_the_issue_lists() -> None:
    """The catalogue holds at least the problem kinds tether promises."""
    expected = {
        "deadline-exceeded": 504,
        "deadline-expired-on-arrival": 504,
        "invalid-deadline-header": 400,
        "upstream-timeout": 504,
        "upstream-unavailable": 503,
        "validation-failed": 400,
        "unauthorized": 401,
        "forbidden-app": 403,
        "route-not-found": 404,
        "unsupported-media-type": 415,
        "payload-too-large": 413,
        "headers-too-large": 431,
        "internal-error": 500,
    }
    assert expected.items() <= {kind.slug: kind.status for kind in CATALOGUE}.items()


def test_every_problem_type_is_documented() -> None:
    """docs/errors.md names every type URI in the catalogue."""
    text = DOCS.read_text()
    missing = [kind.uri for kind in CATALOGUE if f"`{kind.uri}`" not in text]
    assert missing == []


def test_problem_serialises_to_rfc9457_json() -> None:
    """Standard members first, absent optional members left out, extensions kept."""
    problem = DEADLINE_EXCEEDED.problem(
        "budget of 300 ms ran out", instance="/api/user/v1/x", request_id="r-1", budget_ms=300
    )
    body = json.loads(problem.to_json())
    assert body == {
        "type": "tag:tether.dev,2026:problem:deadline-exceeded",
        "title": "Deadline exceeded",
        "status": 504,
        "detail": "budget of 300 ms ran out",
        "instance": "/api/user/v1/x",
        "request_id": "r-1",
        "budget_ms": 300,
    }
    assert MEDIA_TYPE == "application/problem+json"
    assert "instance" not in json.loads(INTERNAL_ERROR.problem("x").to_json())


def test_problem_round_trips_through_json() -> None:
    """from_json(to_json(p)) == p."""
    problem = DEADLINE_EXCEEDED.problem("d", instance="/i", request_id="r", extra=[1, 2])
    assert Problem.from_json(problem.to_json()) == problem


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"title": "x"}', b'{"status": "500"}', b"\xff"]
)
def test_from_json_refuses_non_problems(body: bytes) -> None:
    """A body that is not a problem object gives ValueError, never a crash."""
    with pytest.raises(ValueError, match="problem"):
        Problem.from_json(body)


def test_problem_refuses_non_error_status_and_member_clashes() -> None:
    """A problem's status is 4xx/5xx, and extensions cannot shadow standard members."""
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Problem(type="about:blank", title="t", status=200, detail="d")
    with pytest.raises(ValueError, match="reuse"):
        DEADLINE_EXCEEDED.problem("d", status=1)


def test_problem_for_exception_maps_tethers_errors() -> None:
    """Each of tether's errors maps to its own problem type."""
    cases = [
        (DeadlineExceeded("deadline exceeded: x"), "deadline-exceeded", 504),
        (
            InvalidDeadlineHeader("x-request-timeout", "abc", "digits only"),
            "invalid-deadline-header",
            400,
        ),
        (UpstreamTimeout("db said 57014"), "upstream-timeout", 504),
        (UpstreamUnavailable("refused"), "upstream-unavailable", 503),
    ]
    for exc, slug, status in cases:
        problem = problem_for_exception(exc, request_id="r")
        assert problem.type.endswith(slug)
        assert problem.status == status
        assert problem.request_id == "r"


def test_problem_for_exception_never_leaks_exception_text() -> None:
    """An unexpected exception becomes a generic 500 whose body says nothing of it."""
    secret = "password=hunter2 at /srv/app/db.py line 3"
    problem = problem_for_exception(KeyError(secret))
    assert problem.status == 500
    assert problem.type.endswith("internal-error")
    assert "hunter2" not in problem.to_json().decode()
    assert "KeyError" not in problem.detail
    upstream = problem_for_exception(UpstreamTimeout(secret))
    assert "hunter2" not in upstream.to_json().decode()


def test_a_group_of_tethers_errors_is_answered_as_its_first() -> None:
    """A handler that fans out (asyncio.TaskGroup, anyio) and whose children fail with tether's
    errors is answered as the first child's call made alone; nested groups count too."""
    down, late = UpstreamUnavailable("refused"), UpstreamTimeout("504")
    spent = DeadlineExceeded("deadline exceeded: x")
    cases: list[tuple[BaseExceptionGroup[BaseException], BaseException, str]] = [
        (ExceptionGroup("unhandled errors in a TaskGroup", [down]), down, "upstream-unavailable"),
        (ExceptionGroup("g", [down, late]), down, "upstream-unavailable"),
        (ExceptionGroup("g", [late, down]), late, "upstream-timeout"),
        (
            ExceptionGroup("outer", [ExceptionGroup("inner", [late]), down]),
            late,
            "upstream-timeout",
        ),
        (ExceptionGroup("g", [spent]), spent, "deadline-exceeded"),
    ]
    for group, first, slug in cases:
        assert reported_failure(group) is first
        problem = problem_for_exception(group)
        assert problem.type.endswith(slug), (group, problem)


def test_a_group_holding_anything_else_is_an_internal_error() -> None:
    """One error that is not tether's makes the whole group a bug: 500, no text."""
    secret = "token=abc123"
    groups: list[BaseExceptionGroup[BaseException]] = [
        ExceptionGroup("g", [UpstreamUnavailable("refused"), KeyError(secret)]),
        ExceptionGroup("g", [KeyError(secret), UpstreamUnavailable("refused")]),
        ExceptionGroup("g", [ExceptionGroup("inner", [ValueError(secret)]), UpstreamTimeout()]),
        BaseExceptionGroup("g", [UpstreamUnavailable("refused"), KeyboardInterrupt()]),
    ]
    for group in groups:
        problem = problem_for_exception(group)
        assert problem.status == 500, group
        assert secret not in problem.to_json().decode()
        assert reported_failure(group) is group


def test_the_log_names_the_rest_of_a_group() -> None:
    """The first error of a group answers; the log line still names the others."""
    group = ExceptionGroup("g", [UpstreamUnavailable("a refused"), UpstreamTimeout("b late")])
    failure = reported_failure(group)
    assert failure_summary(failure, group) == (
        "a refused (the first of an exception group; also UpstreamTimeout)"
    )
    alone = ExceptionGroup("g", [UpstreamUnavailable("a refused")])
    assert failure_summary(reported_failure(alone), alone) == "a refused"
    plain = KeyError("k")
    assert reported_failure(plain) is plain
    assert failure_summary(plain, plain) == "'k'"


def test_one_line_makes_a_parsers_message_fit_a_detail() -> None:
    """A multi-line message quoting raw input becomes one line, cut at the limit."""
    message = "Bad status line:\n  Expected HTTP/:\n\n  b'NOT HTTP'\n    ^\n"
    assert one_line(message) == "Bad status line: Expected HTTP/: b'NOT HTTP' ^"
    assert one_line("a\tb " * 100, limit=7) == "a b a b"
    assert one_line("") == ""
