"""Contact ID and SIA codes of the taxonomy agree with the receivers' own Contact ID -> SIA mapping table
(pysiaalarm 3.2.2's ADM_MAPPING, the table a receiving centre uses to show a Contact ID event as SIA), except
where gateway/domain/taxonomy.py says why not. A code changed by mistake (YP "power supply trouble" for any
fault, 354 "failure to communicate" for a log overflow, as before) fails here."""

from __future__ import annotations

from pysiaalarm.data.adm_mapping import ADM_MAPPING

from gateway.domain.taxonomy import TYPES, EventType

DELIBERATE = {  # type: why its SIA codes are not the mapping's for its Contact ID code
    EventType.DOOR_FORCED: "the mapping has no restore code for 423; SIA DR 'door restoral' is in the code list",
    EventType.DOOR_HELD_OPEN: "426 is not in the mapping; SIA DN 'door left open'",
    EventType.ACCESS_GRANTED: "422 is not in the mapping; SIA DG 'access granted'",
    EventType.POINT_UNAVAILABLE: "UT/UJ 'untyped zone trouble' carries the point as the zone (380 maps to YX/YZ)",
    EventType.ARMED: "one Contact ID code (401) for both; the qualifier and the SIA code say which",
    EventType.DISARMED: "one Contact ID code (401) for both; the qualifier and the SIA code say which",
    EventType.COMMAND: "no Contact ID code for a remote command's audit record (info only, not routed to DC-09)",
    EventType.CONFIG_CHANGED: "RS 'remote program success': 306 maps to YX/YZ, which would say service required",
    EventType.CONFIG_RELOAD_FAILED: "RU 'remote program fail': 300 maps to YX/YZ",
}


def test_sia_codes_follow_the_contact_id_mapping_unless_documented() -> None:
    differ = {}
    for event_type, info in TYPES.items():
        mapped = ADM_MAPPING.get(info.contact_id)
        ours = (info.sia_alarm, info.sia_restore or info.sia_alarm)
        if mapped is None or ours != (mapped.get("1"), mapped.get("3")):
            differ[event_type] = (info.contact_id, ours, mapped)
    assert set(differ) == set(DELIBERATE), {t: differ.get(t) for t in set(differ) ^ set(DELIBERATE)}


def test_the_log_overflow_and_the_faults_have_their_own_codes() -> None:
    assert (TYPES[EventType.INFO_SHED].contact_id, TYPES[EventType.INFO_SHED].sia_alarm) == ("624", "JO")
    assert (TYPES[EventType.FAULT].sia_alarm, TYPES[EventType.FAULT].sia_restore) == ("YX", "YZ")
    path, shed = TYPES[EventType.PATH_FAULT], TYPES[EventType.INFO_SHED]
    assert path.contact_id != shed.contact_id, "a path's fault and the log's overflow must not look alike"
