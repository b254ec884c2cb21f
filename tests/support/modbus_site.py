"""Small Modbus site configs and a runner for the Modbus adapter tests."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.config.loader import load_site
from gateway.config.models import SiteConfig


def device(device_id: str, **fields: Any) -> dict[str, Any]:
    """A Modbus device entry; host/port are placeholders on loopback that the simulator's overlay replaces."""
    entry: dict[str, Any] = {
        "protocol": "modbus",
        "id": device_id,
        "name": f"Device {device_id}",
        "host": "127.0.0.1",
        "port": 1,
        "poll_interval": 0.2,
        "timeout": 0.15,
    }
    entry.update(fields)
    if entry.get("transport") == "serial":
        entry.pop("host")
    return entry


def point(point_id: str, device_id: str, table: str, address: int, **fields: Any) -> dict[str, Any]:
    source: dict[str, Any] = {"protocol": "modbus", "table": table, "address": address}
    for key in ("bit", "width"):
        if key in fields:
            source[key] = fields.pop(key)
    entry: dict[str, Any] = {
        "id": point_id,
        "name": f"Point {point_id}",
        "device": device_id,
        "tenant": "jv",
        "zone": "z1",
        "type": "burglary",
        "source": source,
        "alarm": [1],
        "normal": [0],
    }
    entry.update(fields)
    return entry


def site_doc(devices: list[dict[str, Any]], points: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": 1,
        "site": {"id": "modbus-test", "name": "Modbus test", "address": "Teststraat 1"},
        "tenants": [{"id": "jv", "name": "Justitie en Veiligheid"}],
        "zones": [{"id": "z1", "name": "Zone 1", "tenant": "jv"}],
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "insecure": True},
        "journal": {"data_dir": "var/modbus-test"},
        "devices": devices,
        "points": points,
    }


def site_of(doc: dict[str, Any]) -> SiteConfig:
    return SiteConfig.model_validate(doc)


def with_overlay(doc: dict[str, Any], overlay: dict[str, Any]) -> SiteConfig:
    """Load the document through the real loader with the simulator's overlay applied."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.yaml"
        path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
        return load_site(path, [overlay])


@asynccontextmanager
async def running(run: Callable[[], Any]) -> AsyncIterator[None]:
    """Run `run()` (e.g. `lambda: adapter.run(sink)`) in a TaskGroup for the duration of the block."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(run())
        try:
            yield
        finally:
            task.cancel()
