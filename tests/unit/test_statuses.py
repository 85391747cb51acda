"""The one gRPC <-> HTTP status table."""

from __future__ import annotations

import pytest

from tether.statuses import (
    GRPC_TO_HTTP,
    GrpcStatus,
    grpc_status_for_http,
    http_status_for_grpc,
)


def test_every_grpc_code_has_an_http_status() -> None:
    """All 17 gRPC codes are mapped."""
    assert set(GRPC_TO_HTTP) == set(GrpcStatus)
    assert len(GrpcStatus) == 17


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (GrpcStatus.OK, 200),
        (GrpcStatus.DEADLINE_EXCEEDED, 504),
        (GrpcStatus.UNAVAILABLE, 503),
        (GrpcStatus.UNAUTHENTICATED, 401),
        (GrpcStatus.PERMISSION_DENIED, 403),
        (GrpcStatus.NOT_FOUND, 404),
        (GrpcStatus.INTERNAL, 500),
        (GrpcStatus.CANCELLED, 499),
        (GrpcStatus.RESOURCE_EXHAUSTED, 429),
        (GrpcStatus.UNIMPLEMENTED, 501),
    ],
)
def test_grpc_to_http(code: GrpcStatus, status: int) -> None:
    """gRPC codes map to the HTTP statuses of google.rpc.Code."""
    assert http_status_for_grpc(code) == status


def test_unknown_grpc_codes_are_internal_errors() -> None:
    """A code outside the protocol counts as UNKNOWN (500)."""
    assert http_status_for_grpc(99) == 500
    assert http_status_for_grpc(-1) == 500


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (200, GrpcStatus.OK),
        (204, GrpcStatus.OK),
        (400, GrpcStatus.INVALID_ARGUMENT),
        (401, GrpcStatus.UNAUTHENTICATED),
        (403, GrpcStatus.PERMISSION_DENIED),
        (404, GrpcStatus.NOT_FOUND),
        (409, GrpcStatus.ABORTED),
        (429, GrpcStatus.RESOURCE_EXHAUSTED),
        (418, GrpcStatus.FAILED_PRECONDITION),
        (502, GrpcStatus.UNAVAILABLE),
        (503, GrpcStatus.UNAVAILABLE),
        (504, GrpcStatus.DEADLINE_EXCEEDED),
        (500, GrpcStatus.INTERNAL),
        (507, GrpcStatus.INTERNAL),
        (302, GrpcStatus.UNKNOWN),
        (100, GrpcStatus.UNKNOWN),
    ],
)
def test_http_to_grpc(status: int, code: GrpcStatus) -> None:
    """HTTP statuses map back by exact entry, then by class."""
    assert grpc_status_for_http(status) == code


def test_round_trip_where_the_mapping_is_one_to_one() -> None:
    """Codes with their own HTTP status survive grpc -> http -> grpc."""
    one_to_one = [
        GrpcStatus.OK,
        GrpcStatus.INVALID_ARGUMENT,
        GrpcStatus.DEADLINE_EXCEEDED,
        GrpcStatus.NOT_FOUND,
        GrpcStatus.PERMISSION_DENIED,
        GrpcStatus.UNAUTHENTICATED,
        GrpcStatus.RESOURCE_EXHAUSTED,
        GrpcStatus.UNIMPLEMENTED,
        GrpcStatus.UNAVAILABLE,
        GrpcStatus.CANCELLED,
        GrpcStatus.INTERNAL,
    ]
    for code in one_to_one:
        assert grpc_status_for_http(http_status_for_grpc(code)) == code


def test_matches_grpcio_numbering() -> None:
    """GrpcStatus numbers are grpc.StatusCode's."""
    grpc = pytest.importorskip("grpc")
    for code in grpc.StatusCode:
        assert GrpcStatus[code.name] == code.value[0]
