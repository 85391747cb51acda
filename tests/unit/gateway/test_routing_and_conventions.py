"""Routing and the calling conventions: pure functions, every refusal named."""

from __future__ import annotations

import pytest

from tether.gateway.config import Address, Conventions, Endpoint, Service
from tether.gateway.conventions import Caller, check
from tether.gateway.routing import Route, route
from tether.problems import Problem

ENDPOINT = (Endpoint(Address("127.0.0.1", 9001), "a"),)
SERVICES = {
    "user": Service("user", ("v1", "v2"), ENDPOINT),
    "raw": Service("raw", ("v1",), ENDPOINT, strip_prefix=False),
}


@pytest.mark.parametrize(
    ("target", "upstream"),
    [
        (b"/api/user/v1/profile", b"/v1/profile"),
        (b"/api/user/v2/a/b?x=1&y=%20", b"/v2/a/b?x=1&y=%20"),
        (b"/api/user/v1/", b"/v1/"),
        (b"/api/user/v1", b"/v1/"),
        (b"/api/user/v1/a/../b", b"/v1/a/../b"),
        (b"/api/raw/v1/items?q", b"/api/raw/v1/items?q"),
    ],
)
def test_routes(target: bytes, upstream: bytes) -> None:
    """Service and version from the path; the upstream gets /{version}/{rest}?query."""
    found = route(target, SERVICES)
    assert isinstance(found, Route)
    assert found.upstream_target == upstream


@pytest.mark.parametrize(
    ("target", "status", "detail"),
    [
        (b"/other/user/v1/x", 404, "/api/"),
        (b"/api/nobody/v1/x", 404, "no service named"),
        (b"/api/user", 404, "must name a version"),
        (b"/api/user/", 404, "must name a version"),
        (b"/api/user/v3/x", 404, "versions v1, v2; not v3"),
        (b"/api/user/profile", 404, "not a version"),
        (b"/api/user/profile?version=v2", 404, "not in a header or query"),
        (b"/api/user/V1/x", 404, "not a version"),
        (b"/api/user/v1/../../raw/v1/x", 400, "climbs out"),
        (b"/api/user/v1/..", 400, "climbs out"),
        (b"/api/user/v1/%2e%2e/x", 400, "climbs out"),
        (b"/api/user/v1/%2E%2e%2F..%2fadmin", 400, "climbs out"),
        (b"/api/user/v1/a%5c..%5c..", 400, "climbs out"),
    ],
)
def test_refusals(target: bytes, status: int, detail: str) -> None:
    """Unknown services, missing or unlisted versions, escaping paths: a problem each."""
    found = route(target, SERVICES)
    assert isinstance(found, Problem)
    assert found.status == status
    assert detail in found.detail


def test_version_in_a_header_is_pointed_at_the_path() -> None:
    """A client that sent its version as a header is told it belongs in the path."""
    found = route(b"/api/user/profile", SERVICES, version_header=True)
    assert isinstance(found, Problem)
    assert "goes in the path" in found.detail


UUID = b"5b0c6a52-3d2e-4c4e-9a53-8d8f3cd1a1f0"
GOOD = {b"x-request-id": [UUID], b"x-app-id": [b"checkout-web"], b"x-user-id": [b"42"]}
RULES = Conventions(app_ids=("checkout-web",))


def test_a_conforming_request_passes() -> None:
    """All conventions met: the caller's ids come back."""
    caller = check(GOOD, has_body=False, rules=RULES, authenticated=False)
    assert caller == Caller(UUID.decode(), False, "checkout-web", "42")


@pytest.mark.parametrize(
    ("change", "status", "detail"),
    [
        ({b"x-request-id": []}, 400, "X-Request-ID is required"),
        ({b"x-request-id": [b"not-a-uuid"]}, 400, "must be a UUID"),
        ({b"x-request-id": [UUID, b"5b0c6a52-3d2e-4c4e-9a53-000000000000"]}, 400, "more than once"),
        ({b"x-app-id": []}, 400, "X-App-ID is required"),
        ({b"x-app-id": [b"has space"]}, 400, "X-App-ID"),
        ({b"x-app-id": [b"other-app"]}, 403, "may not call"),
        ({b"x-user-id": []}, 400, "X-User-ID is required"),
        ({b"x-user-id": [b"a b"]}, 400, "X-User-ID"),
    ],
)
def test_convention_refusals(change: dict[bytes, list[bytes]], status: int, detail: str) -> None:
    """Each broken convention gives its problem and status."""
    found = check({**GOOD, **change}, has_body=False, rules=RULES, authenticated=False)
    assert isinstance(found, Problem)
    assert found.status == status
    assert detail in found.detail


def test_request_id_is_generated_when_configured() -> None:
    """With request_id: generate, a missing id becomes a new UUID4."""
    caller = check(
        {**GOOD, b"x-request-id": []},
        has_body=False,
        rules=Conventions(request_id="generate"),
        authenticated=False,
    )
    assert isinstance(caller, Caller)
    assert caller.request_id_generated
    assert len(caller.request_id) == 36


def test_with_auth_the_client_user_id_is_not_required() -> None:
    """With auth configured, X-User-ID comes from the token, not from the client."""
    caller = check({**GOOD, b"x-user-id": []}, has_body=False, rules=RULES, authenticated=True)
    assert isinstance(caller, Caller)
    assert caller.user_id is None


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/json; charset=utf-8",
        b"Application/JSON;charset=UTF-8",
        b'application/json ;  charset = "utf-8" ',
    ],
)
def test_json_bodies_pass(content_type: bytes) -> None:
    """The media type's names and values are case-insensitive; spaces are tolerated."""
    caller = check(
        {**GOOD, b"content-type": [content_type]}, has_body=True, rules=RULES, authenticated=False
    )
    assert isinstance(caller, Caller)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        b"application/json",
        b"text/plain; charset=utf-8",
        b"application/json; charset=latin-1",
        b"application/jsonx; charset=utf-8",
    ],
)
def test_other_bodies_are_415(content_type: bytes | None) -> None:
    """A body without exactly JSON in UTF-8 is refused with 415."""
    headers = dict(GOOD)
    if content_type is not None:
        headers[b"content-type"] = [content_type]
    found = check(headers, has_body=True, rules=RULES, authenticated=False)
    assert isinstance(found, Problem)
    assert found.status == 415
