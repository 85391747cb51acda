"""The calling conventions every request through the gateway must follow. Pure: headers in,
`Caller` or the `Problem` to answer with out.

- X-Request-ID: a UUID (any case). Missing: 400, or a new UUID4 with `request_id: generate`.
  Malformed: 400 validation-failed.
- X-App-ID: 1-64 of `A-Z a-z 0-9 . _ -` (else 400); in `app_ids` when that list is set (else
  403 forbidden-app).
- X-User-ID: without `auth`, required, 1-128 visible ASCII (else 400); with `auth`, always
  replaced by the token's `sub`.
- Content-Type: a request with a body says `application/json; charset=utf-8` (names and values
  in any case, spaces tolerated); else 415 unsupported-media-type.

A convention header given twice with different values is refused (400): which one would the
upstream believe?
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tether.gateway.config import Conventions
from tether.problems import (
    FORBIDDEN_APP,
    UNSUPPORTED_MEDIA_TYPE,
    VALIDATION_FAILED,
    Problem,
)
from tether.request_id import REPEATED_WITH_DIFFERENT_VALUES, new_request_id

# The one form of X-Request-ID the gateway accepts (and echoes, even on early refusals).
REQUEST_ID_FORM = re.compile(
    rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_APP_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_USER_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_JSON_UTF8 = re.compile(rb"\s*application/json\s*;\s*charset\s*=\s*\"?utf-8\"?\s*", re.IGNORECASE)

Headers = Mapping[bytes, Sequence[bytes]]  # lowercased name -> every value, in order


@dataclass(slots=True)
class Caller:
    request_id: str
    request_id_generated: bool
    app_id: str
    user_id: str | None  # set from the token's subject when auth is on


def check(
    headers: Headers, *, has_body: bool, rules: Conventions, authenticated: bool
) -> Caller | Problem:
    """The caller's identity, or the problem that refuses the request."""
    request_id = _single(headers, b"x-request-id")
    generated = False
    if isinstance(request_id, Problem):
        return request_id
    if request_id is None:
        if rules.request_id != "generate":
            return _invalid("X-Request-ID is required (a UUID)", "X-Request-ID")
        request_id, generated = new_request_id().encode(), True
    elif not REQUEST_ID_FORM.fullmatch(request_id):
        return _invalid(
            "X-Request-ID must be a UUID, like 5b0c6a52-3d2e-4c4e-9a53-8d8f3cd1a1f0", "X-Request-ID"
        )
    app_id = _single(headers, b"x-app-id")
    if isinstance(app_id, Problem):
        return app_id
    if app_id is None or not _APP_ID.fullmatch(app_id):
        return _invalid("X-App-ID is required: 1-64 letters, digits, '.', '_' or '-'", "X-App-ID")
    app = app_id.decode("ascii")
    if rules.app_ids and app not in rules.app_ids:
        return FORBIDDEN_APP.problem(f"application {app!r} may not call this gateway")
    user: str | None = None
    if not authenticated:
        user_id = _single(headers, b"x-user-id")
        if isinstance(user_id, Problem):
            return user_id
        if user_id is None or not _USER_ID.fullmatch(user_id):
            return _invalid("X-User-ID is required: 1-128 visible ASCII characters", "X-User-ID")
        user = user_id.decode("ascii")
    if has_body:
        content_type = _single(headers, b"content-type")
        if isinstance(content_type, Problem):
            return content_type
        if content_type is None or not _JSON_UTF8.fullmatch(content_type):
            shown = "none" if content_type is None else repr(content_type.decode("latin-1"))
            return UNSUPPORTED_MEDIA_TYPE.problem(
                f"a request body must be sent as 'application/json; charset=utf-8', not {shown}"
            )
    return Caller(request_id.decode("ascii"), generated, app, user)


def _single(headers: Headers, name: bytes) -> bytes | Problem | None:
    values = headers.get(name)
    if not values:
        return None
    if len(values) > 1 and values.count(values[0]) != len(values):
        shown = name.decode().title()
        return _invalid(f"{shown} is {REPEATED_WITH_DIFFERENT_VALUES}", shown)
    return values[0]


def _invalid(detail: str, header: str) -> Problem:
    return VALIDATION_FAILED.problem(detail, header=header)
