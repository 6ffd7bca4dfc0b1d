"""Loggers made at import time must follow the configuration the CLI sets up later."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from keeper.log import configure_logging, get_logger

EARLY = get_logger("keeper.early")  # like every module-level logger: made before configure_logging


def test_module_level_logger_obeys_level_and_format_configured_later(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr("sys.stderr", buf)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    try:
        configure_logging("info", "json")
        EARLY.debug("test.hidden")
        EARLY.info("test.shown", borrower="0xabc")
    finally:
        structlog.reset_defaults()
    (line,) = buf.getvalue().splitlines()
    event = json.loads(line)
    assert (
        event["event"] == "test.shown" and event["logger"] == "keeper.early" and event["borrower"] == "0xabc"
    )
