"""The process's logging as `gateway.ops.logs.configure_logging` sets it up, into a buffer, for a test.

`configure_logging` changes process-wide state (structlog's configuration, the stdlib root logger's handlers and
level, the pymodbus logger's level); `configured_logging` puts all of it back afterwards, so the tests after
it log as before. Loggers bound before it (structlog binds with the configuration of the moment) keep
the old configuration: build the components inside the block.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from gateway.ops.logs import configure_logging


@contextmanager
def configured_logging(level: str = "info", *, as_json: bool = True) -> Iterator[io.StringIO]:
    root, pymodbus = logging.getLogger(), logging.getLogger("pymodbus")
    saved = (root.handlers[:], root.level, pymodbus.level, structlog.get_config())
    stream = io.StringIO()
    configure_logging(level, json=as_json, stream=stream)
    try:
        yield stream
    finally:
        handlers, root_level, pymodbus_level, config = saved
        root.handlers[:] = handlers
        root.setLevel(root_level)
        pymodbus.setLevel(pymodbus_level)
        structlog.configure(**config)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line of the output as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
