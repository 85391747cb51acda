"""tether's log lines with fields (the request id, a gRPC call's method and status), safe under
any logging set-up.

Rule: a log call must never fail the request it reports on. Passing fields through logging's
`extra=` raises `KeyError` when the record already has one of them, and services commonly
install a log record factory that sets `request_id` on every record
(`logging.setLogRecordFactory`): every tether log line then raised, from inside the middleware's
and the gRPC server's safety nets. So fields are added to the record here, and one that the
record already carries keeps the application's value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping


def log_fields(
    logger: logging.Logger,
    level: int,
    msg: str,
    *args: object,
    fields: Mapping[str, object],
    exc_info: BaseException | None = None,
) -> None:
    """`logger.log(level, msg, *args, exc_info=exc_info)` with `fields` as attributes of the
    record, except those it already has; attributed to the caller's line, as `logger.log`
    would be."""
    if not logger.isEnabledFor(level):
        return
    try:
        path, line, function, stack = logger.findCaller(False, 2)
    except ValueError:  # no Python frame to name (called from C)
        path, line, function, stack = "(unknown file)", 0, "(unknown function)", None
    error = None if exc_info is None else (type(exc_info), exc_info, exc_info.__traceback__)
    record = logger.makeRecord(
        logger.name, level, path, line, msg, args, error, function, None, stack
    )
    attributes = record.__dict__
    for name, value in fields.items():
        attributes.setdefault(name, value)
    logger.handle(record)
