"""RFC 9457 problem details (`application/problem+json`) and the catalogue tether emits.

Every error answer tether makes (the gateway, the ASGI middleware) is a `Problem`. Its `type`
is a stable identifier from `CATALOGUE`: clients branch on `type`, never on `title` or
`detail`. The identifiers are tag URIs (RFC 4151): names, not links; docs/errors.md explains
each one.

Rule: `detail` is written for the client and never carries exception text or a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tether.errors import (
    DeadlineExceeded,
    InvalidDeadlineHeader,
    UpstreamTimeout,
    UpstreamUnavailable,
    reported_failure,
)

MEDIA_TYPE: Final = "application/problem+json"
_TYPE_PREFIX: Final = "tag:tether.dev,2026:problem:"
_MEMBERS: Final = frozenset({"type", "title", "status", "detail", "instance", "request_id"})


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One kind of problem: its stable `type` URI, short title and HTTP status."""

    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return _TYPE_PREFIX + self.slug

    def problem(
        self,
        detail: str,
        *,
        instance: str | None = None,
        request_id: str | None = None,
        **extensions: Any,
    ) -> Problem:
        """A `Problem` of this type."""
        return Problem(
            type=self.uri,
            title=self.title,
            status=self.status,
            detail=detail,
            instance=instance,
            request_id=request_id,
            extensions=extensions,
        )


def _kind(slug: str, status: int, title: str) -> ProblemType:
    return ProblemType(slug, status, title)


DEADLINE_EXCEEDED = _kind("deadline-exceeded", 504, "Deadline exceeded")
EXPIRED_ON_ARRIVAL = _kind("deadline-expired-on-arrival", 504, "Deadline expired on arrival")
INVALID_DEADLINE_HEADER = _kind("invalid-deadline-header", 400, "Invalid deadline header")
UPSTREAM_TIMEOUT = _kind("upstream-timeout", 504, "Upstream timed out")
UPSTREAM_UNAVAILABLE = _kind("upstream-unavailable", 503, "Upstream unavailable")
BAD_GATEWAY = _kind("bad-gateway", 502, "Bad gateway")
VALIDATION_FAILED = _kind("validation-failed", 400, "Request validation failed")
BAD_REQUEST = _kind("bad-request", 400, "Malformed request")
UNAUTHORIZED = _kind("unauthorized", 401, "Unauthorized")
FORBIDDEN_APP = _kind("forbidden-app", 403, "Application not allowed")
ROUTE_NOT_FOUND = _kind("route-not-found", 404, "Route not found")
UNSUPPORTED_MEDIA_TYPE = _kind("unsupported-media-type", 415, "Unsupported media type")
PAYLOAD_TOO_LARGE = _kind("payload-too-large", 413, "Payload too large")
HEADERS_TOO_LARGE = _kind("headers-too-large", 431, "Request header fields too large")
INTERNAL_ERROR = _kind("internal-error", 500, "Internal error")

CATALOGUE: Final[tuple[ProblemType, ...]] = (
    DEADLINE_EXCEEDED,
    EXPIRED_ON_ARRIVAL,
    INVALID_DEADLINE_HEADER,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    BAD_GATEWAY,
    VALIDATION_FAILED,
    BAD_REQUEST,
    UNAUTHORIZED,
    FORBIDDEN_APP,
    ROUTE_NOT_FOUND,
    UNSUPPORTED_MEDIA_TYPE,
    PAYLOAD_TOO_LARGE,
    HEADERS_TOO_LARGE,
    INTERNAL_ERROR,
)


@dataclass(frozen=True, slots=True)
class Problem:
    """An RFC 9457 problem details object.

    `extensions` holds extension members; they must not reuse a standard member's name.
    """

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"a problem's status must be 4xx or 5xx, got {self.status}")
        clash = _MEMBERS.intersection(self.extensions)
        if clash:
            raise ValueError(f"extension members may not reuse {sorted(clash)}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, standard members first, absent optional members left out."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.instance is not None:
            body["instance"] = self.instance
        if self.request_id is not None:
            body["request_id"] = self.request_id
        body.update(self.extensions)
        return body

    def to_json(self) -> bytes:
        """The UTF-8 JSON body of an `application/problem+json` response."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, body: bytes | str) -> Problem:
        """Read a problem body; ValueError when it is not one."""
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a JSON problem body: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("a problem body must be a JSON object")
        status = data.get("status")
        if type(status) is not int:
            raise ValueError("a problem body needs an integer status")
        extras = {key: value for key, value in data.items() if key not in _MEMBERS}
        return cls(
            type=str(data.get("type", "about:blank")),
            title=str(data.get("title", "")),
            status=status,
            detail=str(data.get("detail", "")),
            instance=_optional_str(data.get("instance")),
            request_id=_optional_str(data.get("request_id")),
            extensions=extras,
        )


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def problem_for_exception(
    exc: BaseException, *, instance: str | None = None, request_id: str | None = None
) -> Problem:
    """The problem a server answers with when `exc` ended a request.

    Only tether's own errors get a specific type and a detail, also when an exception group
    holds only them (`tether.errors.reported_failure`: the first one answers); anything else
    is an internal error whose detail says nothing about the exception (its text may hold
    secrets).
    """
    kind, detail = INTERNAL_ERROR, "the server failed to handle this request"
    exc = reported_failure(exc)  # a fan-out's upstream failure: as the call made alone
    if isinstance(exc, DeadlineExceeded):
        kind, detail = DEADLINE_EXCEEDED, exc.detail
    elif isinstance(exc, InvalidDeadlineHeader):
        kind, detail = INVALID_DEADLINE_HEADER, str(exc)
    elif isinstance(exc, UpstreamTimeout):
        kind, detail = UPSTREAM_TIMEOUT, "an upstream service ran out of time"
    elif isinstance(exc, UpstreamUnavailable):
        kind, detail = UPSTREAM_UNAVAILABLE, "an upstream service could not be reached"
    return kind.problem(detail, instance=instance, request_id=request_id)
