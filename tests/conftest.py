"""Shared fixtures: a virtual clock for deadline logic, a real PostgreSQL, an application's
log record factory."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tether.testing import VirtualClock


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    """A virtual clock that tether reads for the test's duration."""
    with VirtualClock() as virtual:
        yield virtual


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A real PostgreSQL: TETHER_PG_DSN if set, else an embedded one for the session."""
    from tether.postgres.embedded import postgres_dsn

    with postgres_dsn() as dsn:
        yield dsn


APPS_REQUEST_ID = "set-by-the-apps-record-factory"


@pytest.fixture
def apps_record_factory() -> Iterator[str]:
    """A log record factory of the kind services install to put a request id on every record
    (`logging.setLogRecordFactory`), for the test's duration; yields the id it sets."""
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = APPS_REQUEST_ID
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield APPS_REQUEST_ID
    finally:
        logging.setLogRecordFactory(previous)
