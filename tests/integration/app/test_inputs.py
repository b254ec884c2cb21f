"""Heartbeats must not say "fine" while inputs are down: an adapter in its restart loop makes its devices
unknown and `inputs_ok` false, until it runs again."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime

from gateway.app.service import Gateway, Inputs, RestartPolicy, Supervisor
from gateway.core.ports import DeviceSnapshot, DeviceStatus, ReadingSink
from gateway.testing import CollectingSink, wait_until
from tests.support.sites import minimal_site

SLOW = RestartPolicy(max_restarts=50, window=60, backoff_initial=0.3, backoff_max=0.3)


class FlakyModbus:
    """Reports its device online, then crashes whenever `crash` is set; runs normally otherwise."""

    name = "modbus"
    protocol = "modbus"

    def __init__(self) -> None:
        self.crash = asyncio.Event()
        self.runs = 0

    def device_metrics(self) -> Mapping[str, DeviceSnapshot]:
        return {}

    async def run(self, sink: ReadingSink) -> None:
        self.runs += 1
        await sink.device_status(DeviceStatus("panel-1", online=True, at=datetime.now(UTC)))
        await self.crash.wait()
        raise ConnectionResetError("simulated adapter crash")


async def test_a_restarting_adapter_makes_its_devices_unknown_and_inputs_not_ok() -> None:
    site = minimal_site()  # panel-1 (Modbus) and fire-1 (BACnet; no adapter here)
    adapter = FlakyModbus()
    supervisor = Supervisor(SLOW)
    gateway = Gateway(site, CollectingSink(), [adapter], supervisor=supervisor)
    inputs = Inputs(gateway.normaliser, supervisor, gateway.adapters)
    assert not inputs.ok() and inputs.devices_online() == (0, 2)  # not started yet
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(gateway.run())
        await wait_until(lambda: inputs.devices_online() == (1, 2), 10)
        assert inputs.ok()
        adapter.crash.set()  # from now on every run crashes at once: a restart loop
        await wait_until(lambda: not inputs.ok(), 10)
        assert inputs.devices_online() == (0, 2), "a device of a crashed adapter still counted online"
        assert gateway.normaliser.device_online("panel-1"), "the normaliser's last word was online"
        adapter.crash.clear()  # the next run stays up
        await wait_until(lambda: inputs.ok() and inputs.devices_online() == (1, 2), 10)
        assert adapter.runs >= 2
        gateway.stop()
        await run
