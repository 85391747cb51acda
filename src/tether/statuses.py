"""The one table between gRPC status codes and HTTP statuses. Every integration uses it.

gRPC -> HTTP follows google.rpc.Code's documented HTTP mapping (the one grpc-gateway uses).
HTTP -> gRPC is its inverse where that is unambiguous, then a rule per status class:

    400 INVALID_ARGUMENT   401 UNAUTHENTICATED   403 PERMISSION_DENIED   404 NOT_FOUND
    409 ABORTED            429 RESOURCE_EXHAUSTED 499 CANCELLED          501 UNIMPLEMENTED
    503 UNAVAILABLE        504 DEADLINE_EXCEEDED  other 4xx FAILED_PRECONDITION
    502 UNAVAILABLE        other 5xx INTERNAL      2xx OK                 anything else UNKNOWN

`GrpcStatus` mirrors `grpc.StatusCode` by number, so `tether` needs no grpcio to use it:
`GrpcStatus(code.value[0])` and `grpc.StatusCode` lookups by value convert between them.
"""

from __future__ import annotations

from enum import IntEnum


class GrpcStatus(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


GRPC_TO_HTTP: dict[GrpcStatus, int] = {
    GrpcStatus.OK: 200,
    GrpcStatus.CANCELLED: 499,
    GrpcStatus.UNKNOWN: 500,
    GrpcStatus.INVALID_ARGUMENT: 400,
    GrpcStatus.DEADLINE_EXCEEDED: 504,
    GrpcStatus.NOT_FOUND: 404,
    GrpcStatus.ALREADY_EXISTS: 409,
    GrpcStatus.PERMISSION_DENIED: 403,
    GrpcStatus.RESOURCE_EXHAUSTED: 429,
    GrpcStatus.FAILED_PRECONDITION: 400,
    GrpcStatus.ABORTED: 409,
    GrpcStatus.OUT_OF_RANGE: 400,
    GrpcStatus.UNIMPLEMENTED: 501,
    GrpcStatus.INTERNAL: 500,
    GrpcStatus.UNAVAILABLE: 503,
    GrpcStatus.DATA_LOSS: 500,
    GrpcStatus.UNAUTHENTICATED: 401,
}

_HTTP_TO_GRPC: dict[int, GrpcStatus] = {
    400: GrpcStatus.INVALID_ARGUMENT,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.NOT_FOUND,
    409: GrpcStatus.ABORTED,
    429: GrpcStatus.RESOURCE_EXHAUSTED,
    499: GrpcStatus.CANCELLED,
    501: GrpcStatus.UNIMPLEMENTED,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.DEADLINE_EXCEEDED,
}


def http_status_for_grpc(code: int) -> int:
    """The HTTP status for a gRPC status code (an unknown code counts as UNKNOWN: 500)."""
    try:
        return GRPC_TO_HTTP[GrpcStatus(code)]
    except ValueError:
        return 500


def grpc_status_for_http(status: int) -> GrpcStatus:
    """The gRPC status code for an HTTP status."""
    exact = _HTTP_TO_GRPC.get(status)
    if exact is not None:
        return exact
    if 200 <= status < 300:
        return GrpcStatus.OK
    if 400 <= status < 500:
        return GrpcStatus.FAILED_PRECONDITION
    if 500 <= status < 600:
        return GrpcStatus.INTERNAL
    return GrpcStatus.UNKNOWN
