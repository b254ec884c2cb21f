"""structlog, configured once per process: JSON lines for journald/log shippers, a readable console on a TTY.

Secrets never reach a log line: configs hold only file paths or variable names for passwords, and the
`_redact` processor blanks any key that looks like a secret should one be passed by mistake. Tracebacks are
plain text (exception, file, line) in both renderers, never with the frames' local variables: structlog's
console default (rich, when installed) prints every local, and a local such as the MQTT `ClientFactory`
holds the password read from `password_file` / `password_env`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_WORDS = ("password", "secret", "token", "private_key")


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "***"
    return event


def configure_logging(level: str = "info", *, json: bool | None = None, stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger (libraries log through it) the same way."""
    stream = stream or sys.stderr
    as_json = not stream.isatty() if json is None else json
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer] if as_json else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer], foreign_pre_chain=shared
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))  # libraries (pymodbus, bacpypes3) are chatty at INFO
    # pymodbus logs every timeout at ERROR with frame dumps; the adapter logs the translated error itself.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
