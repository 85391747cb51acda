"""tether's log lines with fields: safe under an application's record factory."""

from __future__ import annotations

import logging
import sys

import pytest

from tether._logging import log_fields

log = logging.getLogger("tether.test")


def emit_here() -> int:
    """Log one line with fields; returns the line number of the call."""
    try:
        raise RuntimeError("the cause")
    except RuntimeError as exc:
        line = sys._getframe().f_lineno + 1
        log_fields(log, logging.ERROR, "line %s", "one", exc_info=exc, fields={"a": 1, "b": 2})
        return line


def test_fields_become_record_attributes_of_the_callers_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The record carries the fields, the message's arguments, the exception, and the caller's
    function and line, as `logger.error(..., extra=...)` would."""
    with caplog.at_level(logging.ERROR, logger="tether.test"):
        line = emit_here()
    (record,) = caplog.records
    assert (record.a, record.b) == (1, 2)  # type: ignore[attr-defined]
    assert record.getMessage() == "line one"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "the cause"
    assert (record.funcName, record.lineno) == ("emit_here", line)
    assert record.pathname == __file__


def test_a_field_the_record_factory_sets_keeps_its_value(
    caplog: pytest.LogCaptureFixture, apps_record_factory: str
) -> None:
    """Where logging's extra= would raise KeyError (the factory set request_id already), the
    line is logged and the application's value stays."""
    with caplog.at_level(logging.INFO, logger="tether.test"):
        log_fields(log, logging.INFO, "x", fields={"request_id": "tethers", "other": 3})
        with pytest.raises(KeyError, match="request_id"):  # what extra= does
            log.info("x", extra={"request_id": "tethers"})
    (record,) = caplog.records
    assert record.request_id == apps_record_factory  # type: ignore[attr-defined]
    assert record.other == 3  # type: ignore[attr-defined]


def test_nothing_is_made_below_the_loggers_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tether.test"):
        log_fields(log, logging.INFO, "quiet", fields={"a": 1})
    assert caplog.records == []
