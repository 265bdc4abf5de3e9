"""Log lines: one JSON object each, extra fields kept, exceptions without tracebacks;
in either format, no value can make a second line or pass for another field."""

from __future__ import annotations

import io
import json
import logging
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_authz.logs import _STANDARD, ConsoleFormatter, JsonFormatter, event, logger


def capture() -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return stream, handler


def test_event_with_exception_is_one_json_line_without_traceback() -> None:
    stream, handler = capture()
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            event(logging.ERROR, "internal error", request_id="rid-7", app="app", exc_info=True)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["msg"] == "internal error"
    assert record["request_id"] == "rid-7" and record["app"] == "app"
    assert record["error"] == "RuntimeError: boom"
    assert "Traceback" not in lines[0]


# --- one event, one line: no client value can forge a line (SPEC §9) -----------------

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any code point, plus text drawn mostly from what could break a line or a field.
AWKWARD = st.text(
    st.one_of(
        st.characters(categories=["Cc", "Cf", "Cs", "Zl", "Zp", "Zs"]),
        st.sampled_from(list(' ="\\\n\r\x85\u2028\u2029\x1b\x7fa=é')),
    ),
    max_size=40,
)
VALUES = st.one_of(st.text(st.characters(codec=None, categories=None), max_size=80), AWKWARD)
KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(lambda k: k not in _STANDARD)
FIELDS = st.dictionaries(KEYS, st.one_of(VALUES, st.integers(), st.none()), max_size=5)


def joined(value: object) -> str:
    """`value` as the formatter writes it, read back: JSON escapes a high and a low lone
    surrogate that follow each other as a pair, which reads back as one character."""
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def record_of(msg: str, fields: dict[str, Any], level: str = "INFO") -> logging.LogRecord:
    return logging.makeLogRecord({"msg": msg, "levelname": level, **fields})


def parse_console(line: str) -> tuple[str, str, dict[str, str]]:
    """(level, message, fields) of a console line: the reading the format promises."""
    decoder = json.JSONDecoder()
    level = line.split(" ", 1)[0]
    rest = line[max(7, len(level)) + 1 :]
    if rest.startswith('"'):
        message, i = decoder.raw_decode(rest)
    else:
        # A bare message has no `=` and no `"`: the first field starts after the last
        # space before the first of them.
        stops = [j for j in (rest.find("="), rest.find('"')) if j >= 0]
        i = rest.rfind(" ", 0, min(stops)) if stops else len(rest)
        message = rest[:i]
    fields: dict[str, str] = {}
    while i < len(rest):
        assert rest[i] == " ", (rest, i)
        i += 1

        def token(i: int, stop: str) -> tuple[str, int]:
            if rest[i] == '"':
                value, end = decoder.raw_decode(rest, i)
                return value, end
            end = i
            while end < len(rest) and rest[end] not in stop:
                end += 1
            return rest[i:end], end

        key, i = token(i, "=")
        assert rest[i] == "=", (rest, i)
        value, i = token(i + 1, " ")
        fields[key] = value
    return level, message, fields


@FAST
@given(message=VALUES, fields=FIELDS)
def test_console_any_message_and_fields_make_exactly_one_line(
    message: str, fields: dict[str, Any]
) -> None:
    line = ConsoleFormatter().format(record_of(message, fields))
    assert len(line.splitlines()) == 1 and "\n" not in line and "\r" not in line
    assert line.isprintable(), "every control, format or separator character is escaped"
    level, parsed_message, parsed = parse_console(line)
    assert level == "info"
    assert parsed_message == joined(message)
    assert parsed == {k: joined(v) for k, v in fields.items()}


@FAST
@given(message=VALUES, fields=FIELDS)
def test_json_any_message_and_fields_make_exactly_one_line(
    message: str, fields: dict[str, Any]
) -> None:
    line = JsonFormatter().format(record_of(message, fields))
    assert len(line.splitlines()) == 1
    line.encode("utf-8")  # no lone surrogate left raw
    data = json.loads(line)
    assert data["msg"] == joined(message)
    assert {k: data[k] for k in fields} == {
        k: joined(v) if isinstance(v, str) else v for k, v in fields.items()
    }


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("access_denied", "error=access_denied"),
        ("x\nerror signed in user=admin", 'error="x\\nerror signed in user=admin"'),
        ("x\r\n", 'error="x\\r\\n"'),
        ("a b", 'error="a b"'),
        ("user=admin", 'error="user=admin"'),
        ('say "hi"', 'error="say \\"hi\\""'),
        ("back\\slash", 'error="back\\\\slash"'),
        ("", 'error=""'),
        ("\x1b[2K", 'error="\\u001b[2K"'),
        ("nel\x85ls\u2028ps\u2029", 'error="nel\\u0085ls\\u2028ps\\u2029"'),
        ("del\x7f", 'error="del\\u007f"'),
        ("rtl\u202eoverride", 'error="rtl\\u202eoverride"'),
        ("café", "error=café"),
    ],
)
def test_console_escapes_and_quotes_field_values(value: str, written: str) -> None:
    line = ConsoleFormatter().format(record_of("sign-in refused", {"error": value, "app": "a"}))
    assert line == f"info    sign-in refused {written} app=a"


def test_console_message_keeps_its_spaces_but_not_line_breaks() -> None:
    formatter = ConsoleFormatter()
    assert formatter.format(record_of("signed in", {})) == "info    signed in"
    assert formatter.format(record_of("a\nwarning forged", {})) == 'info    "a\\nwarning forged"'
    assert formatter.format(record_of("x=1 looks like a field", {})).startswith('info    "x=1')


def test_console_exception_is_a_quoted_field() -> None:
    try:
        raise RuntimeError("boom\nforged line")
    except RuntimeError:
        record = logging.makeLogRecord(
            {"msg": "internal error", "levelname": "ERROR", "exc_info": sys.exc_info()}
        )
    line = ConsoleFormatter().format(record)
    assert line == 'error   internal error error="RuntimeError: boom\\nforged line"'
