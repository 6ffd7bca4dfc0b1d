"""structlog setup: key-value events, JSON off a TTY, secrets masked before rendering.

Events are `stage.what` with key-values: `log.info("exec.sent", tx=..., profit_usd=...)`.
Masking is a processor, so it covers every event and stdlib records (aiohttp, web3)
routed through the same chain; nothing reaches a renderer unmasked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog

MASK = "***"

# Keys whose values are secret whatever they look like (matched per `_`-separated word).
_SECRET_KEY = re.compile(
    r"(^|_)(private_?key|key|secret|password|passwd|passphrase|signature|mnemonic|seed)(_|$)",
    re.IGNORECASE,
)
# A bare 32-byte hex value (optionally 0x) not embedded in a longer hex run: a private key
# looks exactly like this. Tx/block hashes do too, so keys named like hashes are exempt.
_HEX64 = re.compile(r"(?<![0-9a-fA-Fx])(0x)?[0-9a-fA-F]{64}(?![0-9a-fA-F])")
_HASH_KEY = re.compile(r"(hash|^tx$|^tx_|_tx$|topic|root|^block)", re.IGNORECASE)
# URLs inside free text: drop everything after the host (paths carry API keys).
_URL = re.compile(r"\b(?:https?|wss?)://[^\s'\"<>]+", re.IGNORECASE)

_known_secrets: set[str] = set()


def redact_url(url: str | None) -> str:
    """Keep scheme and host[:port] only; paths, queries and userinfo often hold API keys."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<redacted-url>"
    if not parts.scheme or not host:
        return "<redacted-url>"
    return f"{parts.scheme}://{host}{port}"


def register_secret(value: str | None) -> None:
    """Mask this exact string (and its 0x-less form) wherever it appears in a log event."""
    if value and len(value) >= 8:
        _known_secrets.add(value)
        if value.startswith("0x"):
            _known_secrets.add(value[2:])


def _mask_str(text: str, *, hash_ok: bool) -> str:
    for s in _known_secrets:
        if s in text:
            text = text.replace(s, MASK)
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    if not hash_ok:
        text = _HEX64.sub(MASK, text)
    return text


def _mask(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key) and value is not None:
        return MASK
    if isinstance(value, str):
        return _mask_str(value, hash_ok=bool(_HASH_KEY.search(key)))
    if isinstance(value, dict):
        return {k: _mask(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_mask(key, v) for v in value)
    if isinstance(value, bytes | bytearray) and len(value) == 32 and not _HASH_KEY.search(key):
        return MASK
    if isinstance(value, Exception):
        return _mask_str(f"{type(value).__name__}: {value}", hash_ok=False)
    return value


def mask_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask secret-named keys, key-shaped hex, URL paths, known secrets."""
    return {k: _mask(k, v) for k, v in event.items()}


def _use_json(fmt: str) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    return not sys.stderr.isatty()  # logs go to stderr


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    secrets: Iterable[str | None] = (),
) -> None:
    """Configure structlog and route stdlib logging through the same processors.

    `secrets` are exact values to mask everywhere (pass the private key here).
    """
    for s in secrets:
        register_secret(s)
    level_no = logging.getLevelNamesMapping().get(level.upper())
    if level_no is None:
        raise ValueError(f"unknown log level {level!r}")

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        mask_secrets,  # last before rendering: sees formatted tracebacks too
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if _use_json(fmt)
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),  # stdout is for command output
        cache_logger_on_first_use=False,
    )

    # Third-party libraries log through stdlib; give them the same masking and format.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_no)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # /metrics scrapes
    logging.getLogger("web3").setLevel(logging.WARNING)  # connect/disconnect chatter


class _ModuleLogger:
    """A logger that binds at call time, so module-level loggers obey `configure_logging`.

    structlog freezes a logger's processors and level when it is first bound; a logger
    bound at import (before the CLI configures logging) would keep the defaults forever.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        return getattr(structlog.get_logger().bind(logger=self._name), method)


def get_logger(name: str) -> Any:
    """A structlog logger carrying `logger=name`; safe to call at import time."""
    return _ModuleLogger(name)
