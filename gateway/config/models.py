"""The site config (`config/sites/<site-id>.yaml`) as pydantic v2 models.

Unknown keys are forbidden everywhere (a typo is an error, never a silently ignored setting), protocols are
discriminated unions on `protocol`, and everything that relates one part of the document to another is
checked by `cross_check`, which returns every problem with its path so the loader can name its line.
"""

from __future__ import annotations

import builtins
import re
import zoneinfo
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from gateway.config import addresses
from gateway.config import bacnet_tables as bt
from gateway.config.suggest import closest, did_you_mean
from gateway.config.types import Duration, Identifier
from gateway.domain.taxonomy import GATEWAY_RAISED, TYPES, Category, EventState, EventType
from gateway.domain.values import RawValue

Loc = tuple[str | int, ...]

MODBUS_MAX_REGISTERS = 125  # per read request (FC 3/4)
MODBUS_MAX_BITS = 2000  # per read request (FC 1/2)
MODBUS_MAX_ADDRESS = 65535


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known_time_zone(name: str) -> str:
    """An IANA time zone name that zoneinfo knows ('Europe/Amsterdam'); the error names the unknown one."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        if not zoneinfo.available_timezones():
            raise ValueError(
                f"unknown time zone '{name}': this machine has no time zone database (install tzdata)"
            ) from None
        raise ValueError(f"unknown time zone '{name}': use an IANA name such as 'Europe/Amsterdam'") from None
    return name


TimeZoneName = Annotated[str, AfterValidator(_known_time_zone)]
DEVICE_CLOCK_RULES = (
    "BACnet devices stamp events in local time without a zone; the gateway converts to UTC with this zone. "
    "In the repeated autumn hour (e.g. 02:00-03:00 on 2026-10-25) a time stamp has two meanings: the one "
    "closer to the gateway's receive time is taken, right for live events (a resynced old alarm gets the later "
    "one). A time stamp in the skipped spring hour (02:00-03:00 on 2026-03-29) comes from a clock that has not "
    "switched yet and is read with the offset before the switch (02:30 -> 01:30 UTC)."
)


# --- site, tenants, zones ------------------------------------------------------------------------------


class SiteInfo(Strict):
    id: Identifier
    name: str = Field(min_length=1)
    address: str = Field(min_length=1, description="postal address of the building")
    timezone: TimeZoneName = Field(
        "Europe/Amsterdam",
        description="IANA time zone of the building's device clocks. A BACnet device that reports UTC_Offset "
        "(and Daylight_Savings_Status) is checked against it: if they disagree, the device's own offset is "
        "used. " + DEVICE_CLOCK_RULES,
        examples=["Europe/Amsterdam"],
    )


class Tenant(Strict):
    id: Identifier
    name: str = Field(min_length=1, description="ministry, e.g. 'Justitie en Veiligheid'")
    temporary: bool = Field(False, description="tenant housed here temporarily (in- en uithuizing)")
    dc09_area: int | None = Field(
        None,
        ge=1,
        le=99,
        description="SIA DC-09 area / partition number of this tenant (default: derived, see docs/dc09.md)",
    )


class Zone(Strict):
    id: Identifier
    name: str = Field(min_length=1)
    tenant: Identifier | None = Field(None, description="tenant the zone belongs to; none for shared areas")


# --- MQTT link -----------------------------------------------------------------------------------------


class MqttTls(Strict):
    ca_file: Path | None = Field(None, description="CA bundle to verify the broker; none = system CAs")
    cert_file: Path | None = Field(None, description="client certificate for mutual TLS")
    key_file: Path | None = Field(None, description="private key of the client certificate")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> MqttTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        return self


class MqttConfig(Strict):
    url: str = Field(description="mqtts://host:port (TLS), or mqtt://host:port only with insecure: true")
    client_id: str | None = Field(None, description="default: gcmk-gw-<site id>")
    protocol: Literal["auto", "5", "3.1.1"] = Field("auto", description="auto: MQTT 5, else 3.1.1")
    tls: MqttTls = MqttTls()
    insecure: bool = Field(False, description="allow plain TCP without TLS; logged and shown in a metric")
    username: str | None = None
    password_file: Path | None = Field(None, description="file holding the password (one line)")
    password_env: str | None = Field(None, description="environment variable holding the password")
    # Declared only so that an inline secret gets a clear message instead of "extra field".
    password: None = Field(None, description="not allowed: use password_file or password_env")
    keepalive: Duration = 10.0
    max_inflight: int = Field(64, ge=1, le=1000, description="QoS 1 publishes awaiting PUBACK at once")

    @field_validator("password", mode="before")
    @classmethod
    def _no_inline_secret(cls, value: object) -> None:
        if value is not None:
            raise ValueError("inline secrets are not allowed: put the password in password_file or password_env")

    @field_validator("url")
    @classmethod
    def _url_shape(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("broker url must look like mqtts://host:8883 or mqtt://host:1883")
        if parts.username or parts.password:
            raise ValueError("no credentials in the broker url: use username and password_file")
        return url

    @model_validator(mode="after")
    def _tls_unless_insecure(self) -> MqttConfig:
        scheme = urlsplit(self.url).scheme
        if scheme == "mqtt" and not self.insecure:
            raise ValueError("plain mqtt:// needs an explicit insecure: true (use mqtts:// in production)")
        if scheme == "mqtts" and self.insecure:
            raise ValueError("insecure: true contradicts an mqtts:// url; remove one of them")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


# --- supervision, journal, local endpoints ---------------------------------------------------------------


class Supervision(Strict):
    heartbeat_interval: Duration = Field(5.0, gt=0, description="meldkamer heartbeat period")
    device_offline_after: Duration = Field(
        10.0, gt=0, description="BACnet: silence (no COV, no read) after which a device is offline"
    )


class DeliveryConfig(Strict):
    """When an event counts as delivered (and may be pruned after the retention period)."""

    confirm: Literal["meldkamer", "broker"] = Field(
        "meldkamer",
        description=(
            "meldkamer: only the receivers' confirmations (gcmk/v1/{site}/confirm) make an event delivered; a"
            " broker's PUBACK only makes it published. broker: the PUBACK is enough (setups without a"
            " confirming receiver; a broker that loses acknowledged messages then loses alarms)"
        ),
    )
    receivers: list[Identifier] = Field(
        default_factory=lambda: ["meldkamer"],
        min_length=1,
        description="receiver ids that must ALL confirm an event before it is delivered (confirm: meldkamer)",
    )
    confirm_timeout: Duration = Field(
        10.0,
        gt=0,
        description="an event published but unconfirmed this long is published again (then 2x, 4x ... up to 32x)",
    )

    @model_validator(mode="after")
    def _unique_receivers(self) -> DeliveryConfig:
        if len(set(self.receivers)) != len(self.receivers):
            raise ValueError("delivery.receivers lists a receiver twice")
        return self


class JournalConfig(Strict):
    data_dir: Path = Field(description="directory of the SQLite journal; relative to the working directory")
    retention: Duration = Field(7 * 86400.0, description="how long delivered events are kept for audit")
    max_bytes: int = Field(1 << 30, ge=1 << 20, description="disk bound; beyond it only info events are shed")
    # Removed, declared only so that a site config still setting it gets a clear message instead of "unknown
    # key": not in the editor schema, never dumped, and any value (even null) is an error.
    commit_interval: SkipJsonSchema[None] = Field(None, exclude=True)

    @field_validator("commit_interval", mode="before")
    @classmethod
    def _commit_interval_removed(cls, value: object) -> None:
        raise ValueError(
            "commit_interval was removed (it never had an effect): the journal commits as soon as the previous"
            " commit has finished, gathering whatever arrived meanwhile into one transaction, so an interval"
            " could only delay alarms; delete this line"
        )


class BacnetLocal(Strict):
    address: str = Field("0.0.0.0", description="local interface of the gateway's BACnet/IP application")
    port: int = Field(47808, ge=1, le=65535)
    device_instance: int = Field(4_194_000, ge=0, le=4_194_302, description="the gateway's own BACnet id")

    @model_validator(mode="before")
    @classmethod
    def _port_after_colon(cls, data: object) -> object:
        return addresses.take_port_from_address(data, "address")

    @field_validator("address")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        return addresses.bacnet_local_ipv4(value)


class MetricsConfig(Strict):
    listen: str = Field("127.0.0.1", description="bind address of /metrics, /healthz, /readyz")
    port: int = Field(9108, ge=0, le=65535, description="0 = let the OS choose")


# --- devices ---------------------------------------------------------------------------------------------


class BacnetDevice(Strict):
    protocol: Literal["bacnet"]
    id: Identifier
    name: str = Field(min_length=1)
    address: str = Field(min_length=1, description="IP address of the BACnet/IP device")
    port: int = Field(47808, ge=1, le=65535)
    device_instance: int = Field(ge=0, le=4_194_302)
    cov: bool = Field(True, description="subscribe to COV; false (or a refusing device) = poll")
    cov_lifetime: Duration = Field(300.0, gt=0, description="COV subscription lifetime, renewed before expiry")
    poll_interval: Duration = Field(1.0, gt=0)
    timeout: Duration = Field(2.0, gt=0, description="per request")
    timezone: TimeZoneName | None = Field(
        None,
        description="IANA time zone of this device's clock; overrides site.timezone and the device's own "
        "UTC_Offset / Daylight_Savings_Status (for a panel whose offset properties are wrong). " + DEVICE_CLOCK_RULES,
        examples=["Europe/Amsterdam"],
    )

    @model_validator(mode="before")
    @classmethod
    def _port_after_colon(cls, data: object) -> object:
        """`address: 192.0.2.10:47809` is shorthand for `address: 192.0.2.10` + `port: 47809`."""
        return addresses.take_port_from_address(data, "address")

    @field_validator("address")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        return addresses.bacnet_ipv4(value)

    @property
    def address_text(self) -> str:
        """Where the device is, as events name it (`source.address`)."""
        return f"{self.address}:{self.port}"


class SerialLine(Strict):
    port: str = Field(min_length=1, description="e.g. /dev/ttyUSB0")
    baudrate: int = Field(9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class ModbusDevice(Strict):
    protocol: Literal["modbus"]
    id: Identifier
    name: str = Field(min_length=1)
    transport: Literal["tcp", "rtu_over_tcp", "serial"] = Field(
        "tcp", description="rtu_over_tcp: RTU framing through a serial-to-Ethernet converter"
    )
    host: str | None = Field(None, description="tcp and rtu_over_tcp")
    port: int = Field(502, ge=1, le=65535)
    serial: SerialLine | None = Field(None, description="transport serial only")
    unit_id: int = Field(1, ge=0, le=255)
    poll_interval: Duration = Field(1.0, gt=0)
    timeout: Duration = Field(0.5, gt=0)
    offline_after_failures: int = Field(3, ge=1, le=100, description="consecutive failed polls -> offline")
    max_gap: int = Field(8, ge=0, le=100, description="unused addresses a block read may span")
    inter_request_delay: Duration = Field(0.0, description="spacing between requests on a shared RTU bus")

    @model_validator(mode="before")
    @classmethod
    def _port_after_colon(cls, data: object) -> object:
        """`host: 192.0.2.20:5020` is shorthand for `host: 192.0.2.20` + `port: 5020`."""
        return addresses.take_port_from_address(data, "host")

    @field_validator("host")
    @classmethod
    def _host_without_port(cls, value: str | None) -> str | None:
        return None if value is None else addresses.modbus_host(value)

    @model_validator(mode="after")
    def _transport_fields(self) -> ModbusDevice:
        if self.transport == "serial":
            if self.serial is None:
                raise ValueError("transport serial needs a serial: section (port, baudrate, ...)")
            if self.host is not None:
                raise ValueError("transport serial takes no host")
        else:
            if not self.host:
                raise ValueError(f"transport {self.transport} needs a host")
            if self.serial is not None:
                raise ValueError(f"transport {self.transport} takes no serial: section")
        return self

    @property
    def address_text(self) -> str:
        """Where the device is, as events name it (`source.address`): line or endpoint, then the unit id."""
        if self.transport == "serial" and self.serial is not None:
            return f"{self.serial.port}#{self.unit_id}"
        return f"{self.host}:{self.port}#{self.unit_id}"

    @property
    def bus_key(self) -> str:
        """Devices with the same key share one physical line and one serialised request queue."""
        if self.transport == "serial" and self.serial is not None:
            return f"serial:{self.serial.port}"
        if self.transport == "rtu_over_tcp":
            return f"rtu:{self.host}:{self.port}"
        return f"tcp:{self.host}:{self.port}:{self.unit_id}"


Device = Annotated[BacnetDevice | ModbusDevice, Field(discriminator="protocol")]


# --- points ----------------------------------------------------------------------------------------------

_BACNET_OBJECT = re.compile(r"^[a-z][a-z-]*,\d+$")


class ModbusSource(Strict):
    protocol: Literal["modbus"]
    table: Literal["coil", "discrete_input", "holding", "input"]
    address: int = Field(ge=0, le=MODBUS_MAX_ADDRESS)
    bit: int | None = Field(None, ge=0, le=15, description="registers only: lowest bit of the field")
    width: int = Field(1, ge=1, le=16, description="registers only: bits in the field (with bit)")

    @model_validator(mode="after")
    def _bits_fit(self) -> ModbusSource:
        if self.table in ("coil", "discrete_input"):
            if self.bit is not None or self.width != 1:
                raise ValueError(f"a {self.table} is one bit: bit and width apply to registers only")
        elif self.bit is not None and self.bit + self.width > 16:
            raise ValueError(f"bit {self.bit} + width {self.width} does not fit in a 16-bit register")
        return self

    @property
    def ref(self) -> str:
        if self.bit is None:
            return f"{self.table}:{self.address}"
        if self.width == 1:
            return f"{self.table}:{self.address}.{self.bit}"
        return f"{self.table}:{self.address}.{self.bit}+{self.width}"


class BacnetSource(Strict):
    protocol: Literal["bacnet"]
    object: str = Field(description="object type and instance, e.g. 'binary-input,12'")
    property: str = Field("present-value", pattern=r"^[a-z][a-z-]*$")

    @field_validator("object")
    @classmethod
    def _object_shape(cls, value: str) -> str:
        """'<object-type>,<instance>' with a type bacpypes3 knows and an instance BACnet allows."""
        if not _BACNET_OBJECT.match(value):
            kind, _, instance = (part.strip() for part in value.partition(","))
            guess = closest(kind, bt.OBJECT_TYPES) if kind else None
            hint = f"; did you mean '{guess},{instance}'?" if guess and instance.isdigit() else ""
            raise ValueError(f"object must be '<object-type>,<instance>', e.g. 'life-safety-point,3'{hint}")
        kind, instance = value.split(",")
        if kind not in bt.OBJECT_TYPES:
            hint = did_you_mean(kind, bt.OBJECT_TYPES) or _types_hint()
            raise ValueError(f"unknown BACnet object type '{kind}'{hint}")
        if int(instance) > bt.MAX_INSTANCE:
            raise ValueError(
                f"object instance {int(instance)} is beyond {bt.MAX_INSTANCE}, the highest BACnet instance number"
            )
        return value

    @field_validator("property")
    @classmethod
    def _known_property(cls, value: str) -> str:
        if value not in bt.PROPERTY_IDENTIFIERS:
            raise ValueError(f"unknown BACnet property '{value}'{did_you_mean(value, bt.PROPERTY_IDENTIFIERS)}")
        return value

    @builtins.property
    def ref(self) -> str:
        return f"{self.object}/{self.property}"


def _types_hint() -> str:
    return "; object types: " + ", ".join(bt.OBJECT_TYPES)


Source = Annotated[ModbusSource | BacnetSource, Field(discriminator="protocol")]


class MomentaryEvent(Strict):
    value: RawValue
    type: EventType
    state: Literal["info", "alarm"] = "info"
    priority: int | None = Field(None, ge=1, le=5)


CommandAction = Literal["acknowledge", "reset", "pulse", "lock", "unlock", "arm", "disarm"]
DOOR_ACTIONS = ("pulse", "lock", "unlock")


class PointAction(Strict):
    """One command the meldkamer may send for a point, and what it writes (see docs/commands.md).

    Modbus: `value` is written to `table`/`address` of the point's device, or, without them, to the point's
    own source (a coil or holding register/bit field). BACnet: `value` is written to `property` (default
    present-value) of the point's object with `priority`; an `acknowledge` without a value is an
    AcknowledgeAlarm of the point's last notification. `pulse` writes `value`, waits the command's
    duration (default `pulse`, at most `max_pulse`) and writes `restore`; a BACnet pulse without `restore`
    (e.g. access-door 'pulse-unlock') is timed by the device.
    """

    action: CommandAction
    table: Literal["coil", "holding"] | None = Field(None, description="Modbus: target table (with address)")
    address: int | None = Field(None, ge=0, le=MODBUS_MAX_ADDRESS, description="Modbus: target address")
    property: str | None = Field(None, pattern=r"^[a-z][a-z-]*$", description="BACnet: default present-value")
    priority: int | None = Field(None, ge=1, le=16, description="BACnet write priority")
    value: RawValue | None = Field(None, description="what to write; BACnet acknowledge: none = AcknowledgeAlarm")
    restore: RawValue | None = Field(None, description="pulse: written after the pulse (e.g. relock)")
    pulse: Duration | None = Field(None, gt=0, description="pulse: default duration (5s)")
    max_pulse: Duration | None = Field(None, gt=0, description="pulse: longest duration a command may ask (30s)")

    @field_validator("property")
    @classmethod
    def _known_property(cls, value: str | None) -> str | None:
        if value is not None and value not in bt.PROPERTY_IDENTIFIERS:
            raise ValueError(f"unknown BACnet property '{value}'{did_you_mean(value, bt.PROPERTY_IDENTIFIERS)}")
        return value

    @model_validator(mode="after")
    def _shape(self) -> PointAction:
        if (self.table is None) != (self.address is None):
            raise ValueError("table and address go together (the Modbus target of the action)")
        pulse_fields = (self.pulse, self.max_pulse, self.restore)
        if self.action != "pulse" and any(f is not None for f in pulse_fields):
            raise ValueError(f"pulse, max_pulse and restore belong to action pulse, not {self.action}")
        if self.pulse_default > self.pulse_max:
            raise ValueError(f"pulse {self.pulse_default:g}s is longer than max_pulse {self.pulse_max:g}s")
        return self

    @builtins.property
    def pulse_default(self) -> float:
        return self.pulse if self.pulse is not None else 5.0

    @builtins.property
    def pulse_max(self) -> float:
        return self.max_pulse if self.max_pulse is not None else max(30.0, self.pulse_default)

    def problems_for(self, source: ModbusSource | BacnetSource) -> list[str]:
        """What does not fit the point's protocol; empty when the action is complete."""
        what = f"action {self.action}"
        if isinstance(source, BacnetSource):
            if self.table is not None:
                return [f"{what}: table/address are Modbus targets; a BACnet action writes property/value"]
            if self.value is None and self.action != "acknowledge":
                return [f"{what}: needs value: (what to write to {self.property or 'present-value'})"]
            if self.value is None and (self.property is not None or self.priority is not None):
                return [f"{what}: property/priority need a value (without one, acknowledge is AcknowledgeAlarm)"]
            return []
        if self.property is not None or self.priority is not None:
            return [f"{what}: property and priority are BACnet settings; a Modbus action writes table/address"]
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            return [f"{what}: a Modbus action needs an integer value: (what to write)"]
        if self.action == "pulse" and (not isinstance(self.restore, int) or isinstance(self.restore, bool)):
            return [f"{what}: a Modbus pulse needs an integer restore: (written after the pulse, e.g. 0 = lock)"]
        table = self.table or source.table
        if table not in ("coil", "holding"):
            return [f"{what}: the point's source {source.ref} is read-only: give table: coil|holding and address:"]
        width = 1 if table == "coil" else (source.width if self.table is None and source.bit is not None else 16)
        for name, value in (("value", self.value), ("restore", self.restore)):
            if isinstance(value, int) and not 0 <= value < (1 << width):
                return [f"{what}: {name} {value} does not fit the target ({width} bit(s))"]
        return []


class PointConfig(Strict):
    id: Identifier
    name: str = Field(min_length=1)
    device: Identifier
    tenant: Identifier
    zone: Identifier
    location: str = ""
    type: EventType = Field(description="what an alarm of this point is")
    category: Category | None = Field(None, description="default: the type's category")
    priority: int | None = Field(None, ge=1, le=5, description="1 = most urgent; default per type")
    source: Source
    kind: Literal["state", "momentary"] = Field(
        "state", description="state: alarm/restore on transitions; momentary: one event per occurrence"
    )
    alarm: list[RawValue] = Field(default_factory=list, description="raw values meaning alarm (of type)")
    normal: list[RawValue] = Field(default_factory=list, description="raw values meaning quiet")
    fault: list[RawValue] = Field(default_factory=list, description="raw values meaning a fault of the point")
    other_alarms: dict[EventType, list[RawValue]] = Field(
        default_factory=dict, description="further raw values that raise another type, e.g. tamper"
    )
    events: list[MomentaryEvent] = Field(default_factory=list, description="momentary: value -> event")
    debounce: Duration = Field(0.0, description="a change must hold this long before it counts")
    commissioning: bool = Field(False, description="point in test mode: events flagged commissioning")
    actions: list[PointAction] = Field(
        default_factory=list, description="commands the meldkamer may send for this point (docs/commands.md)"
    )
    dc09_zone: int | None = Field(
        None,
        ge=1,
        le=9999,
        description="SIA DC-09 zone number of this point, unique per site (1-999 with format adm-cid); default:"
        " derived and kept in the journal's zone table (docs/dc09.md)",
    )

    @model_validator(mode="after")
    def _actions_fit(self) -> PointConfig:
        seen: set[str] = set()
        for action in self.actions:
            if action.action in seen:
                raise ValueError(f"action {action.action} is listed twice in actions:")
            seen.add(action.action)
            problems = action.problems_for(self.source)
            if problems:
                raise ValueError(problems[0])
        return self

    def action(self, name: str) -> PointAction | None:
        return next((a for a in self.actions if a.action == name), None)

    @model_validator(mode="after")
    def _mapping_complete(self) -> PointConfig:
        if self.kind == "state":
            if self.events:
                raise ValueError("events: belongs to kind momentary; a state point uses alarm/normal")
            if not self.alarm or not self.normal:
                raise ValueError("a state point needs both alarm: and normal: values")
            seen: Counter[str] = Counter()
            for values in (self.alarm, self.normal, self.fault, *self.other_alarms.values()):
                seen.update(str(v) for v in set(values))
            twice = sorted(v for v, n in seen.items() if n > 1)
            if twice:
                raise ValueError(f"value(s) {', '.join(twice)} mapped to more than one condition")
        else:
            if self.alarm or self.normal or self.fault or self.other_alarms:
                raise ValueError("a momentary point maps values with events:, not alarm/normal/fault")
            if not self.events:
                raise ValueError("a momentary point needs events: (value -> type)")
            dup = [v for v, n in Counter(str(e.value) for e in self.events).items() if n > 1]
            if dup:
                raise ValueError(f"value(s) {', '.join(dup)} appear twice in events:")
        return self

    @property
    def effective_category(self) -> Category:
        return self.category or TYPES[self.type].category

    @property
    def effective_priority(self) -> int:
        return self.priority or TYPES[self.type].priority


# --- the whole site --------------------------------------------------------------------------------------


class CommandsConfig(Strict):
    """Commands from the meldkamer (docs/commands.md). Disabled by default: a read-only gateway."""

    enabled: bool = Field(False, description="false = read-only gateway: no command is subscribed to or executed")
    rate_limit: int = Field(30, ge=1, le=10_000, description="commands executed per minute, per site")
    clock_skew: Duration = Field(5.0, le=300, description="tolerance on issued_at / expires_at")
    max_ttl: Duration = Field(300.0, gt=0, description="longest expires_at - issued_at a command may have")
    timeout: Duration = Field(10.0, gt=0, description="device work of one command (plus its pulse duration)")
    max_concurrent: int = Field(4, ge=1, le=64, description="commands executing at once")


# --- SIA DC-09: a second, standard path to an alarm receiving centre (docs/dc09.md) -------------------------

DC09_ACCOUNT = r"^[0-9A-Fa-f]{3,16}$"
DC09_HEX_FIELD = r"^[0-9A-Fa-f]{1,6}$"
CONTACT_ID_MAX_ZONE = 999


class Dc09Receiver(Strict):
    """One alarm receiving centre's DC-09 receiver: one connection, one account per site (or per tenant)."""

    id: Identifier = Field(description="names the path in the journal, the metrics and path_fault events")
    host: str = Field(min_length=1, description="host name or IP address of the receiver")
    port: int = Field(ge=1, le=65535)
    transport: Literal["tcp", "udp"] = "tcp"
    account: Annotated[str, Field(pattern=DC09_ACCOUNT)] = Field(
        description="the site's account at this receiver: 3-16 hex digits (dc09.accounts overrides it per tenant)"
    )
    receiver: Annotated[str, Field(pattern=DC09_HEX_FIELD)] | None = Field(
        None, description="receiver number (the frame's R field, 1-6 hex digits); none = no R field"
    )
    prefix: Annotated[str, Field(pattern=DC09_HEX_FIELD)] = Field(
        "0", description="account prefix (the frame's L field, 1-6 hex digits)"
    )
    key_file: Path | None = Field(
        None, description="file holding the AES key as hex (32, 48 or 64 digits: AES-128/192/256)"
    )
    insecure: bool = Field(False, description="allow unencrypted messages (no key_file); shown in a metric")
    supervision: Duration = Field(60.0, gt=0, description="NULL message interval; also the path-fault delay")
    ack_timeout: Duration = Field(10.0, gt=0, description="how long to wait for ACK/NAK/DUH before a retry")

    @field_validator("account")
    @classmethod
    def _upper_account(cls, account: str) -> str:
        return account.upper()

    @model_validator(mode="after")
    def _key_unless_insecure(self) -> Dc09Receiver:
        if self.key_file is None and not self.insecure:
            raise ValueError("give key_file (AES key as hex), or insecure: true for unencrypted messages")
        if self.key_file is not None and self.insecure:
            raise ValueError("insecure: true contradicts a key_file; remove one of them")
        if self.ack_timeout >= self.supervision:
            raise ValueError(
                f"ack_timeout {self.ack_timeout:g}s must be shorter than supervision {self.supervision:g}s"
            )
        return self


class Dc09Routing(Strict):
    """Which events go over DC-09. An event goes when its category, state and priority all match."""

    categories: list[Category] | None = Field(None, description="default: every category")
    states: list[EventState] = Field(
        default_factory=lambda: [EventState.ALARM, EventState.RESTORE],
        min_length=1,
        description="default: alarm and restore (info events, e.g. access granted and command audit, stay on MQTT)",
    )
    max_priority: int = Field(5, ge=1, le=5, description="only events of this priority or more urgent (1 = most)")

    def routes(self, category: str, state: str, priority: int) -> bool:
        if self.categories is not None and category not in self.categories:
            return False
        return state in self.states and priority <= self.max_priority


class Dc09Config(Strict):
    format: Literal["sia-dcs", "adm-cid"] = Field(
        "sia-dcs", description="sia-dcs (SIA DC-03 codes; carries the user of access events) or adm-cid (Contact ID)"
    )
    receivers: list[Dc09Receiver] = Field(min_length=1)
    accounts: dict[Identifier, Annotated[str, Field(pattern=DC09_ACCOUNT)]] = Field(
        default_factory=dict, description="per-tenant accounts (tenant id -> 3-16 hex digits), for every receiver"
    )
    routing: Dc09Routing = Dc09Routing()

    @field_validator("accounts")
    @classmethod
    def _upper_accounts(cls, accounts: dict[str, str]) -> dict[str, str]:
        return {tenant: account.upper() for tenant, account in accounts.items()}

    @property
    def max_zone(self) -> int:
        return CONTACT_ID_MAX_ZONE if self.format == "adm-cid" else 9999


class SiteConfig(Strict):
    version: Literal[1] = Field(description="site-config format version")
    site: SiteInfo
    tenants: list[Tenant] = Field(min_length=1)
    zones: list[Zone] = Field(min_length=1)
    mqtt: MqttConfig
    supervision: Supervision = Supervision()
    journal: JournalConfig
    delivery: DeliveryConfig = DeliveryConfig()
    bacnet: BacnetLocal | None = Field(None, description="required when the site has BACnet devices")
    metrics: MetricsConfig = MetricsConfig()
    commands: CommandsConfig = CommandsConfig()
    dc09: Dc09Config | None = Field(None, description="SIA DC-09 receivers: a second path (docs/dc09.md)")
    devices: list[Device] = Field(min_length=1)
    points: list[PointConfig] = Field(min_length=1)

    def device(self, device_id: str) -> BacnetDevice | ModbusDevice:
        return self._devices_by_id[device_id]

    def points_of(self, device_id: str) -> list[PointConfig]:
        return [p for p in self.points if p.device == device_id]

    @property
    def _devices_by_id(self) -> dict[str, BacnetDevice | ModbusDevice]:
        return {d.id: d for d in self.devices}

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"gcmk-gw-{self.site.id}"


def _duplicates(items: list[Any], attr: str) -> Iterator[tuple[int, str]]:
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        key = str(getattr(item, attr))
        if key in first:
            yield index, key
        else:
            first[key] = index


def cross_check(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """Checks that relate parts of the document; each problem comes with the path it is about."""
    problems: list[tuple[Loc, str]] = []
    for section, items in (("tenants", cfg.tenants), ("zones", cfg.zones), ("devices", cfg.devices)):
        for index, key in _duplicates(list(items), "id"):
            problems.append(((section, index, "id"), f"duplicate id '{key}' in {section}"))
    for index, key in _duplicates(cfg.points, "id"):
        problems.append((("points", index, "id"), f"duplicate point id '{key}'"))

    tenants = {t.id for t in cfg.tenants}
    zones = {z.id: z for z in cfg.zones}
    devices = {d.id: d for d in cfg.devices}
    for index, zone in enumerate(cfg.zones):
        if zone.tenant is not None and zone.tenant not in tenants:
            problems.append((("zones", index, "tenant"), f"zone '{zone.id}' names unknown tenant '{zone.tenant}'"))

    bacnet_endpoints: dict[tuple[str, int], str] = {}
    modbus_units: dict[tuple[str, int], str] = {}
    for index, dev in enumerate(cfg.devices):
        if isinstance(dev, BacnetDevice):
            endpoint = (dev.address, dev.port)
            if endpoint in bacnet_endpoints:
                other = bacnet_endpoints[endpoint]
                problems.append(
                    (
                        ("devices", index, "port"),
                        f"BACnet devices '{other}' and '{dev.id}' share {dev.address}:{dev.port}",
                    )
                )
            bacnet_endpoints.setdefault(endpoint, dev.id)
        else:
            if dev.timeout >= dev.poll_interval:
                problems.append(
                    (
                        ("devices", index, "timeout"),
                        f"timeout {dev.timeout:g}s must be shorter than poll_interval {dev.poll_interval:g}s",
                    )
                )
            unit_key = (dev.bus_key.rsplit(":", 1)[0] if dev.transport == "tcp" else dev.bus_key, dev.unit_id)
            if unit_key in modbus_units:
                other = modbus_units[unit_key]
                problems.append(
                    (
                        ("devices", index, "unit_id"),
                        f"Modbus devices '{other}' and '{dev.id}' share unit id {dev.unit_id} on one endpoint",
                    )
                )
            modbus_units.setdefault(unit_key, dev.id)
    if any(isinstance(d, BacnetDevice) for d in cfg.devices) and cfg.bacnet is None:
        problems.append((("bacnet",), "the site has BACnet devices: add a bacnet: section (local address)"))

    for index, point in enumerate(cfg.points):
        where: Loc = ("points", index)
        if point.tenant not in tenants:
            problems.append(((*where, "tenant"), f"unknown tenant '{point.tenant}'"))
        point_zone = zones.get(point.zone)
        if point_zone is None:
            problems.append(((*where, "zone"), f"unknown zone '{point.zone}'"))
        elif point_zone.tenant is not None and point_zone.tenant != point.tenant:
            problems.append(
                (
                    (*where, "zone"),
                    f"zone '{point_zone.id}' belongs to tenant '{point_zone.tenant}', the point to '{point.tenant}'",
                )
            )
        point_device = devices.get(point.device)
        if point_device is None:
            problems.append(((*where, "device"), f"unknown device '{point.device}'"))
        elif point_device.protocol != point.source.protocol:
            problems.append(
                (
                    (*where, "source", "protocol"),
                    f"device '{point_device.id}' speaks {point_device.protocol}, "
                    f"the point's source is {point.source.protocol}",
                )
            )
    problems.extend(_modbus_address_clashes(cfg))
    problems.extend(_action_target_clashes(cfg))
    problems.extend(_dc09_problems(cfg))
    problems.extend(_gateway_raised_types(cfg))
    return problems


def _gateway_raised_types(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """A point mapped to an event type only the gateway raises (journal_fault, point_unavailable, ...)."""
    problems: list[tuple[Loc, str]] = []

    def refuse(loc: Loc, event_type: EventType) -> None:
        problems.append(
            (
                loc,
                f"'{event_type.value}' is raised by the gateway itself, not by a device point: choose the event "
                "type the device's signal means (e.g. fault, tamper, burglary)",
            )
        )

    for index, point in enumerate(cfg.points):
        if point.type in GATEWAY_RAISED:
            refuse(("points", index, "type"), point.type)
        for other in point.other_alarms:
            if other in GATEWAY_RAISED:
                refuse(("points", index, "other_alarms", other.value), other)
        for e_index, event in enumerate(point.events):
            if event.type in GATEWAY_RAISED:
                refuse(("points", index, "events", e_index, "type"), event.type)
    return problems


def _modbus_address_clashes(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """Two points reading the same bits of the same device are almost always a copy-paste mistake."""
    problems: list[tuple[Loc, str]] = []
    owners: dict[tuple[str, str, int, int], str] = {}
    for index, point in enumerate(cfg.points):
        src = point.source
        if not isinstance(src, ModbusSource):
            continue
        bits = range(16) if src.bit is None and src.table in ("holding", "input") else None
        if src.bit is not None:
            bits = range(src.bit, src.bit + src.width)
        for bit in bits or (0,):
            key = (point.device, src.table, src.address, bit)
            if key in owners and owners[key] != point.id:
                problems.append(
                    (
                        ("points", index, "source", "address"),
                        f"{src.ref} is already read by point '{owners[key]}'",
                    )
                )
                break
            owners[key] = point.id
    return problems


def _action_target_clashes(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """A command that writes bits another point reads would raise (or clear) that point's alarm."""
    problems: list[tuple[Loc, str]] = []
    readers: dict[tuple[str, str, int], set[str]] = {}
    for point in cfg.points:
        if isinstance(point.source, ModbusSource):
            readers.setdefault((point.device, point.source.table, point.source.address), set()).add(point.id)
    for index, point in enumerate(cfg.points):
        for a_index, action in enumerate(point.actions):
            if action.table is None or action.address is None:
                continue
            others = sorted(readers.get((point.device, action.table, action.address), set()) - {point.id})
            if others:
                problems.append(
                    (
                        ("points", index, "actions", a_index, "address"),
                        f"action {action.action} writes {action.table}:{action.address}, "
                        f"which point '{others[0]}' reads: a command would change that point's state",
                    )
                )
    return problems


def _dc09_problems(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """DC-09 numbers unique per site and within the format's range; receivers and accounts that exist."""
    problems: list[tuple[Loc, str]] = []
    dc09 = cfg.dc09
    zones: dict[int, str] = {}
    for index, point in enumerate(cfg.points):
        if point.dc09_zone is None:
            continue
        if point.dc09_zone in zones:
            problems.append(
                (
                    ("points", index, "dc09_zone"),
                    f"dc09_zone {point.dc09_zone} is already the zone of point '{zones[point.dc09_zone]}'",
                )
            )
        zones.setdefault(point.dc09_zone, point.id)
        if dc09 is not None and point.dc09_zone > dc09.max_zone:
            problems.append(
                (("points", index, "dc09_zone"), f"dc09_zone {point.dc09_zone}: Contact ID (adm-cid) zones are 1-999")
            )
    areas: dict[int, str] = {}
    for index, tenant in enumerate(cfg.tenants):
        if tenant.dc09_area is None:
            continue
        if tenant.dc09_area in areas:
            problems.append(
                (
                    ("tenants", index, "dc09_area"),
                    f"dc09_area {tenant.dc09_area} is already the area of tenant '{areas[tenant.dc09_area]}'",
                )
            )
        areas.setdefault(tenant.dc09_area, tenant.id)
    if dc09 is None:
        return problems
    for index, key in _duplicates(dc09.receivers, "id"):
        problems.append((("dc09", "receivers", index, "id"), f"duplicate receiver id '{key}' in dc09.receivers"))
    endpoints: dict[tuple[str, int, str], str] = {}
    for index, receiver in enumerate(dc09.receivers):
        endpoint = (receiver.host, receiver.port, receiver.transport)
        if endpoint in endpoints:
            problems.append(
                (
                    ("dc09", "receivers", index, "port"),
                    f"receivers '{endpoints[endpoint]}' and '{receiver.id}' share {receiver.host}:{receiver.port}",
                )
            )
        endpoints.setdefault(endpoint, receiver.id)
    tenant_ids = {t.id for t in cfg.tenants}
    for tenant_id in dc09.accounts:
        if tenant_id not in tenant_ids:
            problems.append(
                (("dc09", "accounts", tenant_id), f"unknown tenant '{tenant_id}' (the keys are tenant ids)")
            )
    return problems
