"""The gateway as PID 1, as in a container: SIGTERM from outside ends it cleanly (exit 0, `offline` published).

PID 1 gets no default signal handling from the kernel (a signal without a handler is ignored, and one from
the parent namespace is not even delivered), so this holds only because the gateway installs its own SIGTERM
handler. `unshare --pid --fork --mount-proc` makes the gateway PID 1 of a new PID namespace (root needed);
the test signals it by its PID outside, as `podman stop` / `docker stop` do.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import aiomqtt

from gateway.delivery.contract import status_topic
from gateway.testing import wait_until
from tests.support.ci import tool_missing
from tests.support.gateway_process import SITE_ID, gateway_process, log_of
from tests.support.mosquitto import Mosquitto, mosquitto
from tests.support.notify import NotifySocket, status_of

__all__ = ["mosquitto"]  # the fixture

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _unshare_works() -> None:
    if shutil.which("unshare") is None:
        tool_missing("unshare (util-linux)", "apt-get install -y util-linux")
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        tool_missing(f"a PID namespace (unshare: {probe.stderr.strip()})", "run the tests as root")


def _child_of(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _pid_in_namespace(pid: int) -> int:
    """The innermost PID of `pid` (the NSpid line of /proc/PID/status lists it from outside in)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid line for process {pid}")


async def test_sigterm_to_the_gateway_as_pid_1_exits_0_and_publishes_offline(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    _unshare_works()
    statuses: list[dict[str, object]] = []
    with NotifySocket() as notify:
        async with gateway_process(tmp_path, mosquitto.url, notify, prefix=UNSHARE) as (unshare, _simulator):
            await notify.until(lambda m: (status_of(m) or "").startswith("MQTT connected"))
            pid = await wait_until(lambda: _child_of(unshare.pid), 5, what="the gateway under unshare")
            assert _pid_in_namespace(pid) == 1
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="pid1-watcher") as client:
                await client.subscribe(status_topic(SITE_ID), qos=1)

                async def collect() -> None:
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        statuses.append(json.loads(message.payload))

                collector = asyncio.create_task(collect())
                await wait_until(lambda: any(s["status"] == "online" for s in statuses), 10)
                os.kill(pid, signal.SIGTERM)
                async with asyncio.timeout(20):
                    await unshare.wait()
                assert unshare.returncode == 0, log_of(tmp_path)[-2000:]
                final = await wait_until(lambda: statuses[-1] if statuses[-1]["status"] == "offline" else None, 10)
                collector.cancel()
            assert final["reason"] == "shutdown", final
        await notify.until(lambda m: "STOPPING=1" in m, 5)  # sent before the exit: queued on the socket
