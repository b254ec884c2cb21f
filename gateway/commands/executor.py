"""Carries out one accepted command on the device, through the adapters' verified write primitives.

What each action writes is the site config's business (`PointConfig.actions`); this module only turns a
`PointAction` into adapter calls and the adapters' typed errors into a failure reason the meldkamer can act
on: device_offline (no answer, not connected), verification_mismatch (the read-back differs), device_error
(the device refused the request, or the request does not fit it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gateway.config.models import BacnetSource, ModbusSource, PointAction, PointConfig
from gateway.core.lifecycle import wait_event
from gateway.domain.errors import DeviceError, DeviceTimeout, DeviceUnreachable, VerificationFailed

RESTORE_TIMEOUT = 10.0  # a pulse's restore (relock) is attempted even when the command is cancelled


@runtime_checkable
class BacnetCommands(Protocol):
    async def acknowledge(self, point_id: str, source: str) -> None: ...

    async def write(
        self, point_id: str, value: object, priority: int | None = None, property: str | None = None
    ) -> None: ...


@runtime_checkable
class ModbusCommands(Protocol):
    async def write(self, point_id: str, value: int) -> None: ...

    async def write_coil(self, device_id: str, address: int, value: bool) -> None: ...

    async def write_register(self, device_id: str, address: int, value: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    reason: str | None
    detail: str


class CommandFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def classify(exc: BaseException) -> tuple[str, str]:
    """An adapter's error -> (failure reason, detail)."""
    if isinstance(exc, CommandFailed):
        return exc.reason, exc.detail
    if isinstance(exc, DeviceTimeout | DeviceUnreachable):
        return "device_offline", str(exc)
    if isinstance(exc, VerificationFailed):
        return "verification_mismatch", str(exc)
    if isinstance(exc, DeviceError):
        return "device_error", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return "timeout", "no result within the command timeout"
    return "device_error", f"{type(exc).__name__}: {exc}"  # KeyError/ValueError: the request does not fit


class Executor:
    """Finds the adapter of a point's protocol among the gateway's adapters (by `name`)."""

    def __init__(self, adapters: Sequence[object]) -> None:
        self.bacnet: BacnetCommands | None = None
        self.modbus: ModbusCommands | None = None
        for adapter in adapters:
            name = getattr(adapter, "name", None)
            if name == "bacnet" and isinstance(adapter, BacnetCommands):
                self.bacnet = adapter
            elif name == "modbus" and isinstance(adapter, ModbusCommands):
                self.modbus = adapter

    async def execute(
        self,
        point: PointConfig,
        action: PointAction,
        *,
        operator: str,
        duration: float | None,
        limit: float,
        release: asyncio.Event | None = None,
    ) -> Outcome:
        """Runs the action within `limit` seconds (+ the pulse); never raises except on cancellation.
        `release` set ends a pulse's hold early (the gateway is stopping): it restores at once."""
        pulse = (duration or action.pulse_default) if action.action == "pulse" else 0.0
        try:
            async with asyncio.timeout(limit + pulse):
                detail = await self._run(point, action, operator, pulse, release or asyncio.Event())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure becomes a result; nothing escapes to the processor
            reason, text = classify(exc)
            return Outcome(False, reason, text[:500])
        return Outcome(True, None, detail)

    async def _run(
        self, point: PointConfig, action: PointAction, operator: str, pulse: float, release: asyncio.Event
    ) -> str:
        if isinstance(point.source, BacnetSource):
            return await self._bacnet(point, action, operator, pulse, release)
        assert isinstance(point.source, ModbusSource)
        return await self._modbus(point, action, pulse, release)

    async def _bacnet(
        self, point: PointConfig, action: PointAction, operator: str, pulse: float, release: asyncio.Event
    ) -> str:
        if self.bacnet is None:
            raise CommandFailed("device_offline", "the gateway runs no BACnet adapter")
        bacnet = self.bacnet
        if action.value is None:  # acknowledge without a value: AcknowledgeAlarm of the last notification
            await bacnet.acknowledge(point.id, operator[:64])
            return f"AcknowledgeAlarm sent for {point.source.ref}; the device confirmed it"
        prop = action.property or "present-value"

        async def write(value: object) -> None:
            await bacnet.write(point.id, value, priority=action.priority, property=prop)

        if action.action == "pulse" and action.restore is not None:
            held = await _pulse(write, action.value, action.restore, pulse, release)
            return f"{prop} = {action.value} for {_held(held, pulse)}, then {action.restore}; both verified"
        await write(action.value)
        return f"{prop} = {action.value} (priority {action.priority}); read back verified"

    async def _modbus(self, point: PointConfig, action: PointAction, pulse: float, release: asyncio.Event) -> str:
        if self.modbus is None:
            raise CommandFailed("device_offline", "the gateway runs no Modbus adapter")
        modbus = self.modbus
        assert isinstance(action.value, int)
        assert isinstance(point.source, ModbusSource)
        table, address = action.table, action.address
        ref = f"{table}:{address}" if table is not None else point.source.ref

        async def write(value: object) -> None:
            assert isinstance(value, int)
            if table is None:
                await modbus.write(point.id, value)
            elif table == "coil":
                assert address is not None
                await modbus.write_coil(point.device, address, bool(value))
            else:
                assert address is not None
                await modbus.write_register(point.device, address, value)

        if action.action == "pulse":
            assert isinstance(action.restore, int)
            held = await _pulse(write, action.value, action.restore, pulse, release)
            return f"{ref} = {action.value} for {_held(held, pulse)}, then {action.restore}; both verified"
        await write(action.value)
        return f"{ref} = {action.value}; read back verified"


class _Write(Protocol):
    async def __call__(self, value: object) -> None: ...


async def _pulse(write: _Write, value: object, restore: object, seconds: float, release: asyncio.Event) -> float:
    """Write, hold, restore; returns how long it held. The hold ends early when `release` is set (the
    gateway is stopping: the door relocks now, while the adapter is still there to do it). The restore runs
    even if the command is cancelled while holding, and after a write whose read-back differed."""
    try:
        await write(value)
    except VerificationFailed:
        await _restore(write, value, restore)
        raise
    started = asyncio.get_running_loop().time()
    try:
        await wait_event(release, seconds)  # a cancel ends the hold: the door relocks now
    finally:
        await _restore(write, value, restore)
    return asyncio.get_running_loop().time() - started


def _held(held: float, pulse: float) -> str:
    if held < pulse - 0.05:
        return f"{held:.1f}s of {pulse:g}s (ended early: the gateway is stopping)"
    return f"{pulse:g}s"


async def _restore(write: _Write, value: object, restore: object) -> None:
    restoring = asyncio.ensure_future(asyncio.wait_for(write(restore), RESTORE_TIMEOUT))
    try:
        await asyncio.shield(restoring)
    except asyncio.CancelledError:
        await asyncio.wait([restoring], timeout=RESTORE_TIMEOUT)
        if restoring.done() and not restoring.cancelled():
            restoring.exception()  # retrieved: the cancellation below is what the caller sees
        raise
    except Exception as exc:
        reason, text = classify(exc)
        raise CommandFailed(reason, f"set {value} but the restore to {restore} failed: {text}") from exc
