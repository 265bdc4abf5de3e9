"""Logging: one JSON object per line (or a console line), with a request id.

The rule this module guards: nothing secret is ever logged. Callers pass named,
non-secret fields (`app`, `method`, `reason`, `request_id`); there is no field for a
credential, and no header map is ever logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["configure_logging", "event", "logger"]

logger = logging.getLogger("ext_authz")

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and message only: a traceback's locals could hold secrets.
            data["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(data, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        line = f"{record.levelname.lower():7s} {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            extras += f" error={record.exc_info[0].__name__}: {record.exc_info[1]}"
        return f"{line} {extras}".rstrip()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logger.setLevel(level.upper())
    logger.propagate = True


def event(level: int, msg: str, *, exc_info: bool = False, **fields: Any) -> None:
    """Log `msg` with structured, non-secret fields (`exc_info` adds the exception's
    type and message, never its traceback)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra=fields, exc_info=exc_info)
