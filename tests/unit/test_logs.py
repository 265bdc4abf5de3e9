"""Log lines: one JSON object each, extra fields kept, exceptions without tracebacks."""

from __future__ import annotations

import io
import json
import logging

from ext_authz.logs import JsonFormatter, event, logger


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
