"""Wire codecs: grpc-timeout, X-Request-Timeout, X-Request-Deadline, outgoing budgets."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether import Deadline, DeadlineExceeded, deadline_after, earliest
from tether.testing import VirtualClock
from tether.wire import (
    DEFAULT_MARGIN,
    InvalidDeadlineHeader,
    budget_milliseconds,
    call_timeout,
    deadline_from_headers,
    decode_grpc_timeout,
    encode_grpc_timeout,
    outgoing_headers,
    parse_request_deadline,
    parse_request_timeout,
)

UNIT_SECONDS = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "S": 1.0, "M": 60.0, "H": 3600.0}


@pytest.mark.parametrize(
    ("seconds", "encoded"),
    [
        (0.25, "250000u"),
        (1e-9, "1n"),
        (1e-12, "1n"),
        (0.05, "50000000n"),
        (100, "100000m"),
        (12345.678, "12345678m"),
        (1e9, "16666667M"),
        (3600 * 99_999_999, "99999999H"),
        (1e30, "99999999H"),
    ],
)
def test_encode_grpc_timeout_examples(seconds: float, encoded: str) -> None:
    """The finest unit that fits 8 digits, rounded up; huge budgets cap at 99999999H."""
    assert encode_grpc_timeout(seconds) == encoded


@pytest.mark.parametrize("bad", [0, -1, float("nan"), -1e-9])
def test_encode_grpc_timeout_refuses_nothing_to_send(bad: float) -> None:
    """Zero, negative and NaN budgets have no grpc-timeout form."""
    with pytest.raises(ValueError, match="positive"):
        encode_grpc_timeout(bad)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1H", 3600),
        ("2M", 120),
        ("3S", 3),
        ("250m", 0.25),
        ("7u", 7e-6),
        ("9n", 9e-9),
        ("99999999S", 99_999_999),
        ("00000001S", 1),
        (b"100m", 0.1),
    ],
)
def test_decode_grpc_timeout_examples(value: str | bytes, seconds: float) -> None:
    """Every unit of the gRPC protocol decodes to seconds."""
    assert decode_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "S",
        "m",
        "100",
        "100x",
        "100s",
        "100ms",
        "+100m",
        "-100m",
        " 100m",
        "100m ",
        "10 0m",
        "1.5S",
        "1e3m",
        "nanS",
        "infS",
        "123456789S",
        "0S",
        "0000n",
        "100mm",
        "\u0661\u0660\u0660m",  # Arabic-Indic digits: digits, but not ASCII
        "100\x00m",
    ],
)
def test_decode_grpc_timeout_refuses_malformed_values(bad: str) -> None:
    """Anything but 1-8 ASCII digits and one known unit is InvalidDeadlineHeader."""
    with pytest.raises(InvalidDeadlineHeader) as caught:
        decode_grpc_timeout(bad)
    assert caught.value.header == "grpc-timeout"
    assert caught.value.value == bad
    assert "grpc-timeout" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0), ("1", 0.001), ("250", 0.25), ("99999999", 99_999.999), (b"42", 0.042)],
)
def test_parse_request_timeout_examples(value: str | bytes, seconds: float) -> None:
    """X-Request-Timeout is whole milliseconds; 0 means no budget at all."""
    assert parse_request_timeout(value) == pytest.approx(seconds)


BAD_NUMBERS = [
    "",
    " ",
    "+5",
    "-5",
    " 5",
    "5 ",
    "5 0",
    "1.5",
    "1e3",
    "0x10",
    "nan",
    "inf",
    "NaN",
    "five",
    "5ms",
    "\u0661\u0662",
    "5,5",
    "\t5",
]


@pytest.mark.parametrize("bad", [*BAD_NUMBERS, "123456789", "9" * 40])
def test_parse_request_timeout_refuses_malformed_values(bad: str) -> None:
    """Signs, spaces, decimals, exponents, words and over 8 digits are refused by name."""
    with pytest.raises(InvalidDeadlineHeader) as caught:
        parse_request_timeout(bad)
    assert caught.value.header == "x-request-timeout"
    assert caught.value.value == bad


@pytest.mark.parametrize("bad", [*BAD_NUMBERS, "1234567890123456"])
def test_parse_request_deadline_refuses_malformed_values(bad: str) -> None:
    """X-Request-Deadline follows the same rules with up to 15 digits."""
    with pytest.raises(InvalidDeadlineHeader) as caught:
        parse_request_deadline(bad)
    assert caught.value.header == "x-request-deadline"


def test_non_ascii_bytes_are_refused_not_crashed_on() -> None:
    """Raw header bytes that are not ASCII give InvalidDeadlineHeader, not a decode error."""
    with pytest.raises(InvalidDeadlineHeader, match="not ASCII"):
        deadline_from_headers([(b"x-request-timeout", b"\xff\xfe")])


def test_headers_to_deadline(clock: VirtualClock) -> None:
    """Each header form becomes a Deadline relative to now; names are case-insensitive."""
    now = clock.monotonic()
    assert deadline_from_headers([("X-Request-Timeout", "300")]) == Deadline.at(now + 0.3)
    assert deadline_from_headers([(b"GRPC-TIMEOUT", b"2S")]) == Deadline.at(now + 2)
    epoch_ms = str(int((clock.wall() + 1.5) * 1000))
    assert deadline_from_headers([("x-request-deadline", epoch_ms)]) == Deadline.at(now + 1.5)
    assert deadline_from_headers([("content-type", "x"), ("x-other", "1")]) is None
    assert deadline_from_headers({}.items()) is None


def test_earliest_header_wins(clock: VirtualClock) -> None:
    """When several deadline headers are present, the earliest deadline is used."""
    now = clock.monotonic()
    headers = [
        ("x-request-timeout", "900"),
        ("grpc-timeout", "200m"),
        ("x-request-deadline", str(int((clock.wall() + 5) * 1000))),
    ]
    assert deadline_from_headers(headers) == Deadline.at(now + 0.2)


def test_absolute_deadline_in_the_past_is_expired_on_arrival(clock: VirtualClock) -> None:
    """An X-Request-Deadline already past gives an expired Deadline (not an error)."""
    past = str(int((clock.wall() - 3) * 1000))
    deadline = deadline_from_headers([("x-request-deadline", past)])
    assert deadline is not None
    assert deadline.expired


def test_clock_skew_shifts_absolute_deadlines_only(clock: VirtualClock) -> None:
    """A sender whose wall clock is 2 s ahead gives 2 s more; relative headers are immune."""
    sender_wall = clock.wall() + 2  # the sender's clock runs ahead
    header = str(int((sender_wall + 1) * 1000))
    deadline = deadline_from_headers([("x-request-deadline", header)])
    assert deadline is not None
    assert deadline.remaining() == pytest.approx(3)
    relative = deadline_from_headers([("x-request-timeout", "1000")])
    assert relative is not None
    assert relative.remaining() == pytest.approx(1)


def test_repeated_header_with_same_value_is_accepted(clock: VirtualClock) -> None:
    """A header repeated verbatim is one value."""
    deadline = deadline_from_headers([("x-request-timeout", "100"), ("X-Request-Timeout", "100")])
    assert deadline == Deadline.after(0.1)


def test_repeated_header_with_different_values_is_refused() -> None:
    """A header repeated with different values is ambiguous: refused, both values named."""
    with pytest.raises(InvalidDeadlineHeader) as caught:
        deadline_from_headers([("x-request-timeout", "100"), ("x-request-timeout", "200")])
    assert caught.value.value == "100, 200"
    assert "repeated" in str(caught.value)


def test_comma_joined_values_are_refused() -> None:
    """A proxy that folded repeats into "100, 200" sends no single number: refused."""
    with pytest.raises(InvalidDeadlineHeader):
        deadline_from_headers([("x-request-timeout", "100, 200")])


def test_call_timeout_without_deadline_is_the_explicit_one(clock: VirtualClock) -> None:
    """With no ambient deadline the explicit timeout (or None) stands."""

    async def main() -> tuple[float | None, float | None]:
        return call_timeout(), call_timeout(7.0)

    assert clock.run(main()) == (None, 7.0)


def test_call_timeout_is_min_of_explicit_and_remaining_minus_margin(clock: VirtualClock) -> None:
    """Outgoing budget = min(explicit, remaining - margin)."""

    async def main() -> list[float | None]:
        async with deadline_after(1):
            return [call_timeout(), call_timeout(0.5), call_timeout(5), call_timeout(margin=0.1)]

    assert clock.run(main()) == pytest.approx([1 - DEFAULT_MARGIN, 0.5, 1 - DEFAULT_MARGIN, 0.9])


def test_nothing_is_sent_when_the_margin_eats_the_budget(clock: VirtualClock) -> None:
    """Fail fast: under 1 ms left after the margin raises DeadlineExceeded locally."""

    async def main() -> None:
        async with deadline_after(0.0055):
            with pytest.raises(DeadlineExceeded, match="not sent"):
                outgoing_headers()
            with pytest.raises(DeadlineExceeded):
                call_timeout(10)

    clock.run(main())


def test_outgoing_headers_carry_whole_milliseconds(clock: VirtualClock) -> None:
    """The header holds remaining minus margin, in whole milliseconds."""

    async def main() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        bare = outgoing_headers()
        async with deadline_after(0.3):
            await asyncio.sleep(0.1)
            return bare, outgoing_headers()

    bare, inside = clock.run(main())
    assert bare == []
    assert inside == [("x-request-timeout", "195")]


def test_budget_milliseconds_round_down_but_not_for_float_noise() -> None:
    """One rule for every writer of X-Request-Timeout (clients, httpx transport, gateway):
    never more than is left, float noise aside, and at least 1 ms."""
    assert budget_milliseconds(0.3 - 0.1 - 0.005) == 195  # 0.19499999999999998
    assert budget_milliseconds(0.1999) == 199
    assert budget_milliseconds(2.0) == 2000
    assert budget_milliseconds(0.0004) == 1
    assert budget_milliseconds(0.0) == 1


# -- properties --------------------------------------------------------------------------------

budgets = st.floats(min_value=1e-9, max_value=3600 * 99_999_999 * 0.99, allow_nan=False)


@given(budgets)
def test_grpc_timeout_round_trips_within_one_unit(seconds: float) -> None:
    """decode(encode(s)) is s rounded up to the chosen unit: never less, at most one unit more."""
    encoded = encode_grpc_timeout(seconds)
    decoded = decode_grpc_timeout(encoded)
    unit = UNIT_SECONDS[encoded[-1]]
    assert decoded >= seconds * (1 - 1e-12)
    assert decoded - seconds <= unit * (1 + 1e-9) + seconds * 1e-12


@given(st.floats(min_value=5e-324, max_value=1e-3))
def test_positive_budget_never_encodes_as_zero(seconds: float) -> None:
    """Even the tiniest positive budget is sent as at least 1n."""
    encoded = encode_grpc_timeout(seconds)
    assert int(encoded[:-1]) >= 1
    assert decode_grpc_timeout(encoded) > 0


@given(st.integers(min_value=1, max_value=99_999_999), st.sampled_from(list(UNIT_SECONDS)))
def test_every_valid_grpc_timeout_decodes_and_re_encodes_to_the_same_time(
    amount: int, unit: str
) -> None:
    """Decoding any valid value and encoding it again keeps the duration (to the nanosecond)."""
    seconds = decode_grpc_timeout(f"{amount}{unit}")
    assert decode_grpc_timeout(encode_grpc_timeout(seconds)) == pytest.approx(seconds, rel=1e-9)


instants = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


@given(instants, instants)
def test_earlier_of_is_commutative(a: float, b: float) -> None:
    """earlier(a, b) == earlier(b, a)."""
    assert Deadline.at(a).earlier(Deadline.at(b)) == Deadline.at(b).earlier(Deadline.at(a))


@given(instants, instants, instants)
def test_earlier_of_is_associative(a: float, b: float, c: float) -> None:
    """earlier(earlier(a, b), c) == earlier(a, earlier(b, c)), and equals earliest()."""
    da, db, dc = Deadline.at(a), Deadline.at(b), Deadline.at(c)
    left = da.earlier(db).earlier(dc)
    assert left == da.earlier(db.earlier(dc)) == earliest(da, db, dc)


@given(st.text(max_size=12))
def test_parsers_are_total(text: str) -> None:
    """Any text either parses or raises InvalidDeadlineHeader; nothing else escapes."""
    for parse in (decode_grpc_timeout, parse_request_timeout, parse_request_deadline):
        with contextlib.suppress(InvalidDeadlineHeader):
            assert parse(text) >= 0


def test_relative_budgets_count_from_when_the_request_was_received(clock: VirtualClock) -> None:
    """received_at starts the clock at the first byte; absolute deadlines stay absolute."""
    received = clock.monotonic()
    clock.advance(0.3)  # the rest of the request took 300 ms to arrive
    relative = deadline_from_headers([("x-request-timeout", "1000")], received_at=received)
    assert relative == Deadline.at(received + 1.0)
    epoch_ms = str(int((clock.wall() + 2) * 1000))
    absolute = deadline_from_headers([("x-request-deadline", epoch_ms)], received_at=received)
    assert absolute is not None
    assert absolute.when == pytest.approx(clock.monotonic() + 2, abs=0.001)
