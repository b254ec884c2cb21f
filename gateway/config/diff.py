"""What changes between two validated site configs, and how a running gateway can take the change.

Pure: compares two `SiteConfig`s and classifies every difference, so the reload (gateway/app/reload.py) only
carries out what this module decided and the rules are unit-tested without a process.

- *metadata*: site name and address, tenants, zones, and the point fields only the normaliser reads (name,
  tenant, zone, location, type, category, priority, value mappings, debounce, commissioning, actions) and a
  device's name: applied without touching any device.
- *devices*: a device added, removed, or changed in how it is read (its own settings, or which points it
  reads from which source): its adapter starts and stops that device alone.
- *credentials*: which files (or environment variable) the MQTT TLS certificate, key, CA and password come
  from (`mqtt.tls.*`, `mqtt.password_file`, `mqtt.password_env`): applied by reconnecting (every reload ends
  the MQTT sessions cleanly and reconnects with the credentials read again, changed paths or not).
- *restart*: what the running process holds for its whole life (site id and time zone, MQTT identity and
  broker (url, client id, username, protocol, keepalive, window), journal, delivery, supervision, metrics
  port, BACnet local endpoint, commands settings; the first device of a protocol or the last one): refused
  with the reason, nothing applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.config.models import BacnetDevice, ModbusDevice, PointConfig, SiteConfig

# Sections the running process holds for its whole life, with what an installer must do instead.
RESTART_SECTIONS: dict[str, str] = {
    "version": "the site-config format version",
    "journal": "the journal (data_dir, retention, max_bytes)",
    "delivery": "delivery (confirm, receivers, confirm_timeout)",
    "supervision": "supervision (heartbeat_interval, device_offline_after)",
    "metrics": "the operator endpoint (metrics.listen, metrics.port)",
    "bacnet": "the gateway's own BACnet/IP endpoint (bacnet.address, port, device_instance)",
    "commands": "the commands settings",
    "dc09": "the SIA DC-09 receivers, accounts, keys and routing",
}
# The fields of `mqtt:` a reload applies by reconnecting (where the credentials are read from); every other one
# is the MQTT broker and identity, held for the process's life.
MQTT_CREDENTIAL_FIELDS = ("tls", "password_file", "password_env")
# What a reload applies live (`mqtt` in part: its credential fields); every other section of SiteConfig needs a
# restart, also one added later: a new section is never silently ignored by a reload.
LIVE_SECTIONS = frozenset({"site", "tenants", "zones", "points", "devices"})
DeviceModel = BacnetDevice | ModbusDevice

Kind = Literal["none", "credentials", "metadata", "devices", "restart"]


@dataclass(frozen=True)
class SiteDiff:
    """The classified differences between the running config (`old`) and a new one."""

    restart: tuple[str, ...] = ()  # why the new config cannot be applied without a restart; empty = it can
    metadata: tuple[str, ...] = ()  # one line per metadata change, in an installer's words
    credentials: tuple[str, ...] = ()  # the mqtt credential settings that changed (applied by reconnecting)
    points_added: tuple[str, ...] = ()
    points_removed: tuple[str, ...] = ()  # gone from the config: a final event if in alarm
    points_replaced: tuple[str, ...] = ()  # same id, another kind (state <-> momentary): removed, then added
    points_changed: tuple[str, ...] = ()  # same id and kind, other settings: state carried over
    devices_added: tuple[str, ...] = ()
    devices_removed: tuple[str, ...] = ()
    devices_changed: tuple[str, ...] = ()  # restarted one by one: settings or the points they read changed

    @property
    def kind(self) -> Kind:
        if self.restart:
            return "restart"
        if self.devices_added or self.devices_removed or self.devices_changed:
            return "devices"
        if self.metadata or self.points_added or self.points_removed or self.points_replaced or self.points_changed:
            return "metadata"
        if self.credentials:
            return "credentials"
        return "none"

    def summary(self) -> str:
        """One line for the config_changed event and the log: counts and the first ids of each change."""
        if self.restart:
            return "needs a restart: " + "; ".join(self.restart)
        parts = [
            _count("point(s) added", self.points_added),
            _count("point(s) removed", self.points_removed),
            _count("point(s) replaced", self.points_replaced),
            _count("point(s) changed", self.points_changed),
            _count("device(s) added", self.devices_added),
            _count("device(s) removed", self.devices_removed),
            _count("device(s) restarted", self.devices_changed),
        ]
        text = [p for p in parts if p]
        if self.metadata:
            shown = "; ".join(self.metadata[:5]) + ("; ..." if len(self.metadata) > 5 else "")
            text.append(f"{len(self.metadata)} metadata change(s): {shown}")
        if self.credentials:
            text.append(f"MQTT credentials from other files ({', '.join(self.credentials)}): reconnected")
        return ", ".join(text) or "no change"


def diff_sites(old: SiteConfig, new: SiteConfig) -> SiteDiff:
    """Classify every difference between `old` (running) and `new` (validated); see the module docstring."""
    restart = _restart_reasons(old, new)
    metadata: list[str] = []
    if old.site.name != new.site.name:
        metadata.append(f"site name '{old.site.name}' -> '{new.site.name}'")
    if old.site.address != new.site.address:
        metadata.append("site address changed")
    metadata.extend(_keyed_changes("tenant", {t.id: t for t in old.tenants}, {t.id: t for t in new.tenants}))
    metadata.extend(_keyed_changes("zone", {z.id: z for z in old.zones}, {z.id: z for z in new.zones}))

    old_points = {p.id: p for p in old.points}
    new_points = {p.id: p for p in new.points}
    added = [pid for pid in new_points if pid not in old_points]
    removed = [pid for pid in old_points if pid not in new_points]
    replaced: list[str] = []
    changed: list[str] = []
    for pid in (pid for pid in new_points if pid in old_points):
        before, after = old_points[pid], new_points[pid]
        if before == after:
            continue
        if before.kind != after.kind:
            replaced.append(pid)
            continue
        changed.append(pid)
        fields = _changed_fields(before, after)
        metadata.append(f"point '{pid}': {', '.join(fields)}")

    old_devices = {d.id: d for d in old.devices}
    new_devices = {d.id: d for d in new.devices}
    dev_added = [did for did in new_devices if did not in old_devices]
    dev_removed = [did for did in old_devices if did not in new_devices]
    dev_changed: list[str] = []
    for did in (did for did in new_devices if did in old_devices):
        before_dev, after_dev = old_devices[did], new_devices[did]
        if _read_settings(before_dev) != _read_settings(after_dev) or _reads(old, did) != _reads(new, did):
            dev_changed.append(did)
        elif before_dev.name != after_dev.name:
            metadata.append(f"device '{did}': name")
    for protocol in ("modbus", "bacnet"):
        had = any(d.protocol == protocol for d in old.devices)
        has = any(d.protocol == protocol for d in new.devices)
        if had != has:
            what = "adds the first" if has else "removes the last"
            restart.append(f"the new config {what} {protocol} device: its adapter starts or ends with the process")
    return SiteDiff(
        restart=tuple(restart),
        metadata=tuple(metadata),
        credentials=tuple(_credential_changes(old, new)),
        points_added=tuple(added),
        points_removed=tuple(removed),
        points_replaced=tuple(replaced),
        points_changed=tuple(changed),
        devices_added=tuple(dev_added),
        devices_removed=tuple(dev_removed),
        devices_changed=tuple(dev_changed),
    )


def _restart_reasons(old: SiteConfig, new: SiteConfig) -> list[str]:
    reasons: list[str] = []
    if old.site.id != new.site.id:
        reasons.append(f"site.id '{old.site.id}' -> '{new.site.id}' (another building: another gateway)")
    if old.site.timezone != new.site.timezone:
        reasons.append("site.timezone changed (the BACnet sessions convert device clocks with it)")
    identity = [name for name in type(old.mqtt).model_fields if name not in MQTT_CREDENTIAL_FIELDS]
    changed = [name for name in identity if getattr(old.mqtt, name) != getattr(new.mqtt, name)]
    if changed:
        fields = ", ".join(f"mqtt.{name}" for name in changed)
        reasons.append(f"mqtt: the MQTT broker and identity changed ({fields})")
    for section in type(old).model_fields:
        if section in LIVE_SECTIONS or section == "mqtt" or getattr(old, section) == getattr(new, section):
            continue
        reasons.append(f"{section}: {RESTART_SECTIONS.get(section, f'the {section} section')} changed")
    return [f"{reason}: restart the gateway to apply it" for reason in reasons]


def _credential_changes(old: SiteConfig, new: SiteConfig) -> list[str]:
    """`mqtt.tls.ca_file`, `mqtt.password_file`, ...: where a credential is read from, changed."""
    changes: list[str] = []
    for name in type(old.mqtt.tls).model_fields:
        if getattr(old.mqtt.tls, name) != getattr(new.mqtt.tls, name):
            changes.append(f"mqtt.tls.{name}")
    for name in ("password_file", "password_env"):
        if getattr(old.mqtt, name) != getattr(new.mqtt, name):
            changes.append(f"mqtt.{name}")
    return changes


def _keyed_changes(what: str, old: dict[str, object], new: dict[str, object]) -> Iterable[str]:
    for key, value in new.items():
        if key not in old:
            yield f"{what} '{key}' added"
        elif old[key] != value:
            yield f"{what} '{key}' changed"
    for key in old:
        if key not in new:
            yield f"{what} '{key}' removed"


def _changed_fields(before: PointConfig, after: PointConfig) -> list[str]:
    b, a = before.model_dump(), after.model_dump()
    return [name for name in type(before).model_fields if b.get(name) != a.get(name)]


def _read_settings(device: DeviceModel) -> DeviceModel:
    """A device's settings apart from its name (the name only labels events: metadata)."""
    return device.model_copy(update={"name": ""})


def _reads(site: SiteConfig, device_id: str) -> frozenset[tuple[str, str]]:
    """What a device's adapter reads: (point id, source) of its points."""
    return frozenset((p.id, p.source.model_dump_json()) for p in site.points if p.device == device_id)


def _count(what: str, ids: tuple[str, ...]) -> str:
    if not ids:
        return ""
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    return f"{len(ids)} {what} ({shown})"
