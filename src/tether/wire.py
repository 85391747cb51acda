"""How a budget is written on the wire, and read back. Pure functions, no I/O.

Headers tether reads (names case-insensitive):

    X-Request-Timeout: 250             remaining milliseconds, 1-8 ASCII digits. Relative, so
                                       immune to clock skew: the form tether sends.
    X-Request-Deadline: 1767225600000  absolute Unix time in milliseconds, 1-15 digits.
                                       Accepted for compatibility; it is only as right as the
                                       two hosts' wall clocks agree (skew shifts the budget).
    grpc-timeout: 250m                 gRPC over HTTP/2: 1-8 digits and one unit of
                                       H (hours) M (minutes) S m (milli) u (micro) n (nano).

Rule: parsing is strict and total. Any value that is not exactly one of these forms (empty,
signs, spaces, decimals, exponents, nan/inf, unknown units, too many digits, non-ASCII, one
header repeated with different values) raises `InvalidDeadlineHeader` naming the header and
the value. When several headers are present, the earliest resulting deadline wins.

Rule: tether sends `remaining - margin` and never sends a budget of zero. Fewer than 1 ms left
after the margin means nothing is sent: `DeadlineExceeded` is raised locally (fail fast).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from tether import _clock
from tether.deadline import Deadline, current_deadline, time_remaining
from tether.errors import DeadlineExceeded, InvalidDeadlineHeader, format_seconds

__all__ = [
    "DEFAULT_MARGIN",
    "GRPC_TIMEOUT",
    "REQUEST_DEADLINE",
    "REQUEST_TIMEOUT",
    "InvalidDeadlineHeader",
    "budget_milliseconds",
    "call_timeout",
    "deadline_from_headers",
    "decode_grpc_timeout",
    "encode_grpc_timeout",
    "outgoing_headers",
    "parse_request_deadline",
    "parse_request_timeout",
]

REQUEST_TIMEOUT = "x-request-timeout"
REQUEST_DEADLINE = "x-request-deadline"
GRPC_TIMEOUT = "grpc-timeout"

# Kept back at each hop so the callee's own deadline fires first and its clean error still has
# time to travel back: one loopback or same-zone round trip plus serialising a small answer
# fits well inside 5 ms. Raise it for hops that cross zones or regions.
DEFAULT_MARGIN = 0.005

_GRPC_UNITS: dict[str, int] = {  # nanoseconds per unit
    "n": 1,
    "u": 1_000,
    "m": 1_000_000,
    "S": 1_000_000_000,
    "M": 60_000_000_000,
    "H": 3_600_000_000_000,
}
_GRPC_UNIT_SIZES: dict[str | bytes, int] = {
    spelling: size for unit, size in _GRPC_UNITS.items() for spelling in (unit, unit.encode())
}
_GRPC_ENCODE_ORDER = ("n", "u", "m", "S", "M", "H")  # finest first
_GRPC_MAX_VALUE = 99_999_999
_GRPC_MAX = f"{_GRPC_MAX_VALUE}H"
_DIGITS = re.compile(r"[0-9]+")


def encode_grpc_timeout(seconds: float) -> str:
    """`seconds` as a grpc-timeout value, in the finest unit whose value fits in 8 digits.

    Rounds up, so a positive budget never becomes zero; budgets beyond 99999999 hours are sent
    as that maximum. Zero, negative and NaN budgets raise ValueError: there is nothing to send.
    """
    if not seconds > 0:
        raise ValueError(f"a grpc-timeout must be positive, got {seconds!r}")
    if seconds >= _GRPC_MAX_VALUE * 3600:
        return _GRPC_MAX
    scaled = seconds * 1e9
    # Round up, but not for float noise: 61e-9 * 1e9 is 61.00000000000001, not 62 ns.
    nanos = max(1, math.ceil(scaled - scaled * 1e-12))
    for unit in _GRPC_ENCODE_ORDER:
        size = _GRPC_UNITS[unit]
        value = -(-nanos // size)  # ceiling division
        if value <= _GRPC_MAX_VALUE:
            return f"{value}{unit}"
    return _GRPC_MAX  # unreachable: the hours unit always fits below the cap


def decode_grpc_timeout(value: str | bytes) -> float:
    """A grpc-timeout value in seconds."""
    size = _GRPC_UNIT_SIZES.get(value[-1:])
    digits = value[:-1]
    if size is not None and 0 < len(digits) <= 8 and digits.isascii() and digits.isdigit():
        amount = int(digits)
        if amount > 0:
            return amount * size / 1e9
    raise _grpc_timeout_error(_ascii(GRPC_TIMEOUT, value))


def _grpc_timeout_error(text: str) -> InvalidDeadlineHeader:
    """Why `text` (known to be malformed) is not a grpc-timeout."""
    if not text:
        return InvalidDeadlineHeader(GRPC_TIMEOUT, text, "empty value")
    if text[-1] not in _GRPC_UNITS:
        return InvalidDeadlineHeader(
            GRPC_TIMEOUT, text, "must end in one unit of H, M, S, m, u or n"
        )
    try:
        _digits(GRPC_TIMEOUT, text, text[:-1], max_digits=8)
    except InvalidDeadlineHeader as exc:
        return exc
    return InvalidDeadlineHeader(GRPC_TIMEOUT, text, "must be a positive amount")


def parse_request_timeout(value: str | bytes) -> float:
    """An X-Request-Timeout value (milliseconds) in seconds; 0 means no budget at all."""
    return _whole_number(REQUEST_TIMEOUT, value, 8) / 1000


def parse_request_deadline(value: str | bytes) -> float:
    """An X-Request-Deadline value (Unix milliseconds) in seconds since the epoch."""
    return _whole_number(REQUEST_DEADLINE, value, 15) / 1000


def deadline_from_headers(
    headers: Iterable[tuple[str | bytes, str | bytes]], *, received_at: float | None = None
) -> Deadline | None:
    """The deadline that request headers ask for, or None when they carry none.

    `headers` is any sequence of (name, value) pairs, str or bytes (ASGI scope headers, gRPC
    metadata, `dict.items()`). A header given twice must carry the same value both times.
    Relative budgets count from `received_at` (a monotonic instant; default now), so a server
    can start the clock at the request's first byte.
    """
    seen: dict[str, str | bytes] | None = None
    for raw_name, value in headers:
        # Only names as long as one of ours are lowered and looked up: the hot path for the
        # many other headers of a request is one len() and one set lookup.
        if len(raw_name) not in _NAME_LENGTHS:
            continue
        name = _HEADER_NAMES.get(raw_name) or _HEADER_NAMES.get(raw_name.lower())
        if name is None:
            continue
        if seen is None:
            seen = {}
        earlier = seen.setdefault(name, value)
        if earlier != value:
            raise InvalidDeadlineHeader(
                name,
                f"{_ascii(name, earlier)}, {_ascii(name, value)}",
                "repeated with different values",
            )
    if seen is None:
        return None
    now = _clock.monotonic()
    start = now if received_at is None else received_at
    return Deadline(min(_instant(name, value, start, now) for name, value in seen.items()))


def _instant(name: str, value: str | bytes, start: float, now: float) -> float:
    """The monotonic instant one header's deadline falls on."""
    if name == REQUEST_TIMEOUT:
        return start + parse_request_timeout(value)
    if name == GRPC_TIMEOUT:
        return start + decode_grpc_timeout(value)
    return now + parse_request_deadline(value) - _clock.wall()  # absolute: no start needed


_HEADER_NAMES: dict[str | bytes, str] = {
    spelling: name
    for name in (REQUEST_TIMEOUT, REQUEST_DEADLINE, GRPC_TIMEOUT)
    for spelling in (name, name.encode())
}
_NAME_LENGTHS = frozenset(len(name) for name in _HEADER_NAMES)


def call_timeout(explicit: float | None = None, *, margin: float = DEFAULT_MARGIN) -> float | None:
    """The timeout for one outgoing call: `min(explicit, ambient remaining - margin)`.

    None when there is neither an ambient deadline nor an explicit timeout. Raises
    `DeadlineExceeded` when the ambient budget leaves less than 1 ms after the margin: the call
    must not start.
    """
    remaining = time_remaining()  # per outgoing call: no Deadline object unless it fails
    if remaining is None:
        return explicit
    left = remaining - margin
    if left < 0.001:
        raise DeadlineExceeded(
            f"deadline exceeded: {format_seconds(remaining)} left, "
            f"less than the {format_seconds(margin)} margin plus 1 ms; the call was not sent",
            deadline=current_deadline(),
        )
    return left if explicit is None or explicit > left else explicit


def budget_milliseconds(seconds: float) -> int:
    """A budget as `X-Request-Timeout` carries it: whole milliseconds, rounded down (a hop
    never passes on more than it has), but not for float noise (0.19499999... s is 195 ms),
    and at least 1."""
    return max(1, int(seconds * 1000 + 1e-6))


def outgoing_headers(*, margin: float = DEFAULT_MARGIN) -> list[tuple[str, str]]:
    """Headers that pass the ambient budget on: `[("x-request-timeout", "<ms>")]`, or [].

    Raises `DeadlineExceeded` when nothing is left after the margin (see `call_timeout`).
    """
    left = call_timeout(margin=margin)
    if left is None:
        return []
    return [(REQUEST_TIMEOUT, str(budget_milliseconds(left)))]


def _whole_number(header: str, value: str | bytes, max_digits: int) -> int:
    if 0 < len(value) <= max_digits and value.isascii() and value.isdigit():
        return int(value)
    text = _ascii(header, value)
    _digits(header, text, text, max_digits=max_digits)  # raises, saying why
    raise InvalidDeadlineHeader(header, text, "not a whole number")  # pragma: no cover


def _ascii(header: str, value: str | bytes) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidDeadlineHeader(header, value.decode("latin-1"), "not ASCII") from None
    if not value.isascii():
        raise InvalidDeadlineHeader(header, value, "not ASCII")
    return value


def _digits(header: str, text: str, digits: str, *, max_digits: int) -> int:
    if not digits:
        raise InvalidDeadlineHeader(header, text, "empty value" if not text else "no digits")
    if not _DIGITS.fullmatch(digits):
        raise InvalidDeadlineHeader(
            header, text, "must be ASCII digits only (no sign, space, decimal point or exponent)"
        )
    if len(digits) > max_digits:
        raise InvalidDeadlineHeader(header, text, f"more than {max_digits} digits")
    return int(digits)
