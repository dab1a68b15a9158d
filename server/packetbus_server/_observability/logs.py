"""The server's logging, configured in one place: `packetbus serve` calls `configure`
in its process and `_workers` in each worker it starts, with the same `LogSettings`.

Two formats (``--log-format``, env PACKETBUS_LOG_FORMAT):

- ``text`` (default): ``<time> <LEVEL> <logger>: <message>`` and the record's
  structured fields after it as ``key=value`` (values JSON-encoded, so a newline in
  one cannot forge a line).
- ``json``: one JSON object per line (python-json-logger): ``time`` (RFC 3339, UTC,
  milliseconds, e.g. "2026-11-30T10:25:56.123Z"), ``level`` (INFO, WARNING...),
  ``logger``, ``message``, then the structured fields (a record's ``extra``), and
  ``worker`` (the process id) in a worker of ``--workers N``.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

TEXT = "text"
JSON = "json"
FORMATS = (TEXT, JSON)
FORMAT_ENV = "PACKETBUS_LOG_FORMAT"

# A record's attributes that are not structured fields: the LogRecord's own, and
# what Formatter.format adds to it.
_NOT_FIELDS = frozenset((*RESERVED_ATTRS, "message", "asctime", "taskName"))


@dataclass(frozen=True, slots=True)
class LogSettings:
    """How the server logs: `level` a logging level (e.g. logging.INFO), `format`
    one of FORMATS."""

    level: int = logging.INFO
    format: str = TEXT


_current = LogSettings()


def settings() -> LogSettings:
    """The settings `configure` last applied in this process (the defaults before)."""
    return _current


def configure(chosen: LogSettings, *, worker: int | None = None) -> None:
    """Send every log record at `chosen.level` or above to stderr in `chosen.format`,
    replacing the root logger's handlers; `worker`: this process is that worker
    (its pid), named on each line. Raises ValueError for a format not in FORMATS."""
    global _current
    if chosen.format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {chosen.format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(chosen.format, worker=worker))
    handler.addFilter(WithoutServicerErrorText())
    logging.basicConfig(level=chosen.level, handlers=[handler], force=True)
    _current = chosen


class WithoutServicerErrorText(logging.Filter):
    """Keeps the traceback grpc logs for an exception a servicer did not handle (a
    bug), but not the exception's text: it can quote a request, and packet contents
    and credentials stay out of the logs (the request log names the type alone)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("grpc") or not record.exc_info:
            return True
        kind, _, frames = record.exc_info
        if kind is None:
            return True
        stack = "".join(traceback.format_tb(frames))
        record.exc_info = None
        record.exc_text = (
            f"Traceback (most recent call last):\n{stack}{kind.__module__}.{kind.__qualname__}"
            " (its text is not logged: it may quote the request)"
        )
        return True


def formatter(name: str, *, worker: int | None = None) -> logging.Formatter:
    """The formatter of format `name` (one of FORMATS)."""
    if name == JSON:
        return JsonLines(worker=worker)
    return TextLines(worker=worker)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of `record`: what its ``extra`` added."""
    return {k: v for k, v in record.__dict__.items() if k not in _NOT_FIELDS}


def rfc3339(created: float) -> str:
    """`created` (seconds since 1970) as RFC 3339 in UTC with milliseconds."""
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLines(JsonFormatter):
    """One JSON object per record: time, level, logger, message, the structured
    fields, and `worker` in a worker process."""

    def __init__(self, *, worker: int | None = None) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={} if worker is None else {"worker": worker},
            reserved_attrs=sorted(_NOT_FIELDS),
        )

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        # Time first, so a line reads in the order a person scans it.
        log_data["time"] = rfc3339(record.created)
        super().add_fields(log_data, record, message_dict)


class TextLines(logging.Formatter):
    """``<time> <LEVEL> [worker-<pid> ]<logger>: <message>`` then ``key=value``
    for each structured field (value JSON-encoded)."""

    def __init__(self, *, worker: int | None = None) -> None:
        where = "" if worker is None else f"worker-{worker} "
        super().__init__(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = fields(record)
        if not extra:
            return line
        pairs = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extra.items())
        head, newline, rest = line.partition("\n")  # a traceback stays below the fields
        return f"{head} {pairs}{newline}{rest}"
