"""A serial line inside one machine: two pseudo-terminals joined by socat, for the Modbus RTU serial tests.

`socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B` creates two ptys and copies every byte written to one
to the other, like a null-modem cable: a device (pymodbus' serial server) opens one end by its path, the
gateway's `AsyncModbusSerialClient` (pyserial) the other. socat is the Debian package `socat`, installed by
.ci/run; when it is missing the test is skipped, or fails under CI=true (tests/support/ci.py).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.testing import wait_until
from tests.support.ci import tool_missing


def _both_exist(*paths: Path) -> bool:
    return all(path.exists() for path in paths)


@asynccontextmanager
async def serial_line(directory: Path) -> AsyncIterator[tuple[Path, Path]]:
    """The paths of the two ends (device end, gateway end), in `directory`, while the line exists."""
    socat = shutil.which("socat")
    if socat is None:
        tool_missing("socat", "apt-get install -y socat")
    device_end, gateway_end = directory / "ttyDEVICE", directory / "ttyGATEWAY"
    proc = await asyncio.create_subprocess_exec(
        socat,
        f"pty,raw,echo=0,link={device_end}",
        f"pty,raw,echo=0,link={gateway_end}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until(
            lambda: _both_exist(device_end, gateway_end) or proc.returncode is not None,
            timeout=10,
            what="socat's two pty links",
        )
        if proc.returncode is not None:
            error = await proc.stderr.read() if proc.stderr else b""
            raise RuntimeError(f"socat exited with {proc.returncode}: {error!r}")
        yield device_end, gateway_end
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
