"""Logging: one JSON object per line (or a console line), with a request id.

The rule this module guards: nothing secret is ever logged. Callers pass named,
non-secret fields (`app`, `method`, `reason`, `request_id`); there is no field for a
credential, and no header map is ever logged.

The second rule: one event is one line, whatever a client put in a field (SPEC §9).
Field values often come from requests (the callback's `error`, a host, a path), so
neither format may let them start a new line or pass for another field:

- json: the encoder escapes C0 controls, `"` and `\\`; DEL, C1 controls (NEL),
  U+2028/U+2029 (which some readers also take as line ends) and lone surrogates are
  escaped as well.
- console (`level message key=value ...`): the message and every key and value are
  written bare only when they are printable, without spaces (message: spaces
  allowed), `=`, `"` or `\\`; anything else is a JSON string literal with every
  non-printable character escaped, so a reader can always split a line back into
  its fields and no value can end it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

__all__ = ["configure_logging", "event", "logger"]

logger = logging.getLogger("ext_authz")

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


# Characters json.dumps(ensure_ascii=False) leaves raw that some readers split on (and
# lone surrogates, which would not even encode as UTF-8).
_JSON_LINE_BREAKERS = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escape_json_line_breakers(text: str) -> str:
    return _JSON_LINE_BREAKERS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


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
        return _escape_json_line_breakers(json.dumps(data, default=str, ensure_ascii=False))


def _quoted(text: str) -> str:
    """A JSON string literal of `text` with every non-printable character escaped
    (json.loads reads it back)."""
    out = []
    for char in text:
        if char == " " or (char.isprintable() and char not in '"\\'):
            out.append(char)
        else:
            out.append(json.dumps(char)[1:-1])  # \n, \", \\, \u0085, surrogate pairs
    return '"' + "".join(out) + '"'


def _console_token(value: object, *, spaces: bool = False) -> str:
    """`value` bare when that is unambiguous, else quoted (see the module docstring)."""
    text = value if isinstance(value, str) else str(value)
    if (
        text
        and text.isprintable()
        and (spaces or " " not in text)
        and not any(c in text for c in '="\\')
        and text[0] != " "
        and text[-1] != " "
    ):
        return text
    return _quoted(text)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = [
            (k, v)
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        ]
        if record.exc_info and record.exc_info[0] is not None:
            fields.append(("error", f"{record.exc_info[0].__name__}: {record.exc_info[1]}"))
        parts = [
            f"{record.levelname.lower():7s}",
            _console_token(record.getMessage(), spaces=True),
            *(f"{_console_token(k)}={_console_token(v)}" for k, v in fields),
        ]
        return " ".join(parts)


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
