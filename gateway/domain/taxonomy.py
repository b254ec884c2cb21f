"""The one table of event types: category, default priority and the Contact ID / SIA DC-03 codes.

Everything that needs to know what a "door_forced" is (config validation, the normaliser, the event
schema, the meldkamer contract) reads it from here, so the codes cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    INTRUSION = "intrusion"
    FIRE = "fire"
    ACCESS = "access"
    TAMPER = "tamper"
    TECHNICAL = "technical"
    SUPERVISION = "supervision"


class EventState(StrEnum):
    ALARM = "alarm"
    RESTORE = "restore"
    INFO = "info"


class EventType(StrEnum):
    BURGLARY = "burglary"
    FIRE = "fire"
    FIRE_TROUBLE = "fire_trouble"
    DURESS = "duress"
    HOLDUP = "holdup"
    PANIC = "panic"
    TAMPER = "tamper"
    DOOR_FORCED = "door_forced"
    DOOR_HELD_OPEN = "door_held_open"
    ACCESS_DENIED = "access_denied"
    ACCESS_GRANTED = "access_granted"
    FAULT = "fault"
    POWER_LOSS = "power_loss"
    LOW_BATTERY = "low_battery"
    COMM_LOSS = "comm_loss"
    POINT_UNAVAILABLE = "point_unavailable"
    BYPASS = "bypass"
    ARMED = "armed"
    DISARMED = "disarmed"
    PERIODIC_TEST = "periodic_test"
    INFO_SHED = "info_shed"
    JOURNAL_FAULT = "journal_fault"
    PATH_FAULT = "path_fault"
    COMMAND = "command"
    CONFIG_CHANGED = "config_changed"
    CONFIG_RELOAD_FAILED = "config_reload_failed"


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """Defaults and standard codes of one event type."""

    category: Category
    priority: int
    contact_id: str
    sia_alarm: str
    sia_restore: str | None


# Contact ID event codes and SIA DC-03 codes (the published code tables of both). Priority 1 = most urgent.
TYPES: dict[EventType, TypeInfo] = {
    EventType.BURGLARY: TypeInfo(Category.INTRUSION, 2, "130", "BA", "BH"),
    EventType.FIRE: TypeInfo(Category.FIRE, 1, "110", "FA", "FH"),
    EventType.FIRE_TROUBLE: TypeInfo(Category.FIRE, 3, "373", "FT", "FJ"),
    EventType.DURESS: TypeInfo(Category.INTRUSION, 1, "121", "HA", "HH"),
    EventType.HOLDUP: TypeInfo(Category.INTRUSION, 1, "122", "HA", "HH"),
    EventType.PANIC: TypeInfo(Category.INTRUSION, 1, "120", "PA", "PH"),
    EventType.TAMPER: TypeInfo(Category.TAMPER, 2, "137", "TA", "TR"),
    EventType.DOOR_FORCED: TypeInfo(Category.ACCESS, 2, "423", "DF", "DR"),
    EventType.DOOR_HELD_OPEN: TypeInfo(Category.ACCESS, 3, "426", "DN", "DR"),
    EventType.ACCESS_DENIED: TypeInfo(Category.ACCESS, 4, "421", "DD", None),
    EventType.ACCESS_GRANTED: TypeInfo(Category.ACCESS, 5, "422", "DG", None),
    # A point's technical fault (a detector line's "storing"): Contact ID 300 "system trouble"; SIA YX "service
    # required" / YZ "service completed", the SIA codes of Contact ID 300 in the receivers' mapping tables
    # (pysiaalarm's adm_mapping: 300 -> YX/YZ). YP/YQ, used before, say "power supply trouble".
    EventType.FAULT: TypeInfo(Category.TECHNICAL, 3, "300", "YX", "YZ"),
    EventType.POWER_LOSS: TypeInfo(Category.TECHNICAL, 4, "301", "AT", "AR"),
    EventType.LOW_BATTERY: TypeInfo(Category.TECHNICAL, 4, "302", "YT", "YR"),
    EventType.COMM_LOSS: TypeInfo(Category.SUPERVISION, 2, "350", "YC", "YK"),
    # A configured point the device says does not exist (BACnet unknown-object / unknown-property, Modbus
    # exception 01-03): the device answers, but this point cannot report an alarm, so it is as blind as a
    # point behind a lost link (priority 2, like comm_loss). Contact ID 380 "sensor trouble" is the code for
    # one zone's sensor that cannot be supervised (350/354 are for the path and 373 for fire loops only); SIA
    # UT / UJ "untyped zone trouble / trouble restore" carry the point as the zone number.
    EventType.POINT_UNAVAILABLE: TypeInfo(Category.SUPERVISION, 2, "380", "UT", "UJ"),
    EventType.BYPASS: TypeInfo(Category.INTRUSION, 4, "570", "BB", "BU"),
    EventType.ARMED: TypeInfo(Category.INTRUSION, 5, "401", "CL", None),
    EventType.DISARMED: TypeInfo(Category.INTRUSION, 5, "401", "OP", None),
    EventType.PERIODIC_TEST: TypeInfo(Category.SUPERVISION, 5, "602", "RP", None),
    # The journal reached its disk bound and sheds info events (alarm) / is below it again (restore): Contact ID
    # 624 "event log overflow", SIA JO "log overflow" (the mapping tables: 624 -> JO). 354 / YK, used before,
    # say "failure to communicate" / "communications restoral": a path's fault, not the log's.
    EventType.INFO_SHED: TypeInfo(Category.SUPERVISION, 3, "624", "JO", None),
    # The gateway's own journal could not be written (disk full, I/O error, read-only): Contact ID 300 "system
    # trouble" (the table has no code for a storage fault; 354 and 624 "event log overflow" mean something
    # else), SIA YX "service required" / YZ "service completed" (YP/YQ would say power supply).
    EventType.JOURNAL_FAULT: TypeInfo(Category.SUPERVISION, 2, "300", "YX", "YZ"),
    # A delivery path of the gateway (a DC-09 receiver) failing longer than its supervision interval, reported
    # on the other paths: Contact ID 354 "failure to communicate event" (350 is comm_loss, a device), SIA YC
    # "communications fail" / YK "communications restore".
    EventType.PATH_FAULT: TypeInfo(Category.SUPERVISION, 2, "354", "YC", "YK"),
    EventType.COMMAND: TypeInfo(Category.SUPERVISION, 5, "000", "LX", None),
    # A reload applied a new site config (audit, info): Contact ID 306 "panel programming changed", SIA RS
    # "remote program success" (the change came from outside the panel; YG "parameter changed" would do too,
    # RS pairs with the failure's RU).
    EventType.CONFIG_CHANGED: TypeInfo(Category.SUPERVISION, 5, "306", "RS", None),
    # A reload was refused (invalid file, or a change that needs a restart): the gateway keeps the old config.
    # Contact ID has no code for a refused programming attempt (306 would say the programming changed), so 300
    # "system trouble", as for the journal; SIA RU "remote program fail". Priority 3: nothing is lost, but the
    # building does not run the config its installer deployed.
    EventType.CONFIG_RELOAD_FAILED: TypeInfo(Category.SUPERVISION, 3, "300", "RU", None),
}

# Raised by the gateway about itself or its inputs, never by a device point: a site config that maps a point to
# one of these would make a device's alarm look like the gateway's own supervision.
GATEWAY_RAISED: frozenset[EventType] = frozenset(
    {
        EventType.INFO_SHED,
        EventType.JOURNAL_FAULT,
        EventType.COMMAND,
        EventType.POINT_UNAVAILABLE,
        EventType.CONFIG_CHANGED,
        EventType.CONFIG_RELOAD_FAILED,
        EventType.PATH_FAULT,
    }
)

# Contact ID qualifiers: 1 = new event / opening, 3 = restore / closing, 6 = still present.
QUALIFIER = {EventState.ALARM: "1", EventState.RESTORE: "3", EventState.INFO: "1"}


def contact_id_qualifier(event_type: EventType, state: EventState) -> str:
    """Arm/disarm is reported as open/close: Q3 armed (closing), Q1 disarmed (opening)."""
    if event_type is EventType.ARMED:
        return "3"
    return QUALIFIER[state]


def sia_code(event_type: EventType, state: EventState) -> str:
    info = TYPES[event_type]
    if state is EventState.RESTORE and info.sia_restore is not None:
        return info.sia_restore
    return info.sia_alarm
