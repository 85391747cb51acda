"""Routing: `/api/{service}/{version}/{rest}` to a service and the path its upstream receives.

Pure: takes the raw request target (path and query, as bytes) and the configured services,
returns a `Route` or the `Problem` to answer with.

Rules:
1. The version is in the path, `v` plus digits, and listed for the service. A version sent in a
   header or a query parameter instead is refused with a detail saying where it belongs.
2. The upstream receives `/{version}/{rest}` plus the unchanged query string, or the whole
   path when the service has `strip_prefix: false`.
3. A path whose `..` segments, or percent-encoded dots or slashes, would climb out of
   `/api/{service}/{version}/` is refused with 400: it could reach another service's routes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from tether.gateway.config import Service
from tether.problems import BAD_REQUEST, ROUTE_NOT_FOUND, Problem

_VERSION = re.compile(rb"v[0-9]{1,6}")
_ENCODED_DOT = re.compile(rb"%2e", re.IGNORECASE)
_ENCODED_SLASH = re.compile(rb"%2f|%5c", re.IGNORECASE)


class Route(NamedTuple):  # a tuple: built once per request, and cheaply
    service: Service
    version: str
    upstream_target: bytes  # what goes on the upstream request line


def route(
    target: bytes, services: Mapping[str, Service], *, version_header: bool = False
) -> Route | Problem:
    """The route for `target`, or the problem to answer with. `version_header`: the request
    carried an API-version header (it belongs in the path)."""
    path, _, query = target.partition(b"?")
    if not path.startswith(b"/api/"):
        return _not_found("paths start with /api/{service}/{version}/")
    parts = path[5:].split(b"/", 2)
    name = parts[0].decode("latin-1")
    service = services.get(name)
    if service is None:
        known = ", ".join(sorted(services))
        return _not_found(f"no service named {name!r}; services: {known}")
    version = parts[1] if len(parts) > 1 else b""
    if not _VERSION.fullmatch(version):
        return _not_found(_version_hint(service, version, query, version_header))
    version_text = version.decode("ascii")
    if version_text not in service.versions:
        listed = ", ".join(service.versions)
        return _not_found(f"{name} has versions {listed}; not {version_text}")
    rest = parts[2] if len(parts) > 2 else b""
    if _escapes(rest):
        return BAD_REQUEST.problem(
            "the path climbs out of its service's prefix with '..' or encoded dots or slashes"
        )
    suffix = b"?" + query if query or target.endswith(b"?") else b""
    upstream_path = b"/" + version + b"/" + rest if service.strip_prefix else path
    return Route(service, version_text, upstream_path + suffix)


def _not_found(detail: str) -> Problem:
    return ROUTE_NOT_FOUND.problem(detail)


def _version_hint(service: Service, version: bytes, query: bytes, version_header: bool) -> str:
    example = f"/api/{service.name}/{service.versions[0]}/..."
    if version_header or re.search(rb"(^|&)(api-)?version=", query):
        return f"the version goes in the path ({example}), not in a header or query parameter"
    if not version:
        return f"the path must name a version: {example}"
    shown = version.decode("latin-1")
    return f"{shown!r} is not a version; versions are v1, v2, ... ({example})"


def _escapes(rest: bytes) -> bool:
    """True when dot segments (plain or percent-encoded) climb above the start of `rest`.

    Encoded slashes count as separators here, since some servers decode them.
    """
    if b"." not in rest and b"%" not in rest and b"\\" not in rest:
        return False
    normalized = _ENCODED_SLASH.sub(b"/", _ENCODED_DOT.sub(b".", rest)).replace(b"\\", b"/")
    depth = 0
    for segment in normalized.split(b"/"):
        if segment == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif segment not in (b"", b"."):
            depth += 1
    return False
