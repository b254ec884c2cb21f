"""Every mistake class of issue 14 ("Why") is refused by validation with file, line, path and a message in
BACnet or Modbus words, and a "did you mean" where a value is enumerated."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import load_site
from gateway.config.models import BacnetDevice, ModbusDevice
from gateway.domain.errors import ConfigError
from tests.support.sites import MINIMAL_SITE

BASE = MINIMAL_SITE.read_text(encoding="utf-8")
BACNET_DEVICE = "    address: 127.0.0.1\n    port: 47809\n"
MODBUS_HOST = "    host: 127.0.0.1\n    port: 5020\n"
PIR_SOURCE = 'source: {protocol: modbus, table: holding, address: "100 + {i} // 16", bit: "{i} % 16"}'
DI_SOURCE = 'source: {protocol: modbus, table: discrete_input, address: "{i}"}'


def _line_of(text: str, needle: str | tuple[str, int]) -> int:
    needle, occurrence = needle if isinstance(needle, tuple) else (needle, 1)
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(lines) >= occurrence, f"{needle!r} not in the test document"
    return lines[occurrence - 1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_site(_write(tmp_path, text))
    return info.value.problems


# (case, [(old, new), ...], needle of the expected line, expected path, expected message)
MISTAKES = [
    ("object type typo", [('"access-door,1"', '"binary-inptu,3"')], "binary-inptu", "points[1].source.object",
     "unknown BACnet object type 'binary-inptu'; did you mean 'binary-input'?"),
    ("object written in another spelling", [('"access-door,1"', '"Access_Door, 1"')], "Access_Door",
     "points[1].source.object", "object must be '<object-type>,<instance>', e.g. 'life-safety-point,3';"
     " did you mean 'access-door,1'?"),
    ("write property typo", [("      tamper: [tamper]\n", "      tamper: [tamper]\n    actions:\n"
     "      - {action: unlock, value: unlock, property: present-valu}\n")], "present-valu",
     "points[1].actions[0].property", "unknown BACnet property 'present-valu'; did you mean 'present-value'?"),
    ("property typo", [("property: door-alarm-state", "property: door-alarm-stat")], "door-alarm-stat",
     "points[1].source.property", "unknown BACnet property 'door-alarm-stat'; did you mean 'door-alarm-state'?"),
    ("property the object type does not have", [('"life-safety-point,1"}', '"life-safety-point,1", property: '
     'door-alarm-state}')], '"life-safety-point,1", property', "points[2].source.property",
     "a life-safety-point has no property 'door-alarm-state'"),
    ("object instance beyond BACnet's", [('"life-safety-point,1"', '"life-safety-point,4194303"')], "4194303",
     "points[2].source.object", "object instance 4194303 is beyond 4194302, the highest BACnet instance number"),
    ("alarm 2 on a one-bit input", [(PIR_SOURCE, DI_SOURCE), ("    alarm: [1]\n", "    alarm: [2]\n")],
     "alarm: [2]", "points[0] (repeat n=1 and 7 more).alarm[0]",
     "2 cannot occur: a discrete input (one bit) reports 0, 1"),
    ("alarm 2 on a single register bit", [("    alarm: [1]\n", "    alarm: [2]\n")], "alarm: [2]",
     "points[0] (repeat n=1 and 7 more).alarm[0]", "2 cannot occur: a single bit of a holding register reports 0, 1"),
    ("value beyond a bit field", [('bit: "{i} % 16"}', 'bit: 0, width: 2}'),
     ("repeat: {count: 8}", "repeat: {count: 1}"), ("    alarm: [1]\n", "    alarm: [4]\n")], "alarm: [4]",
     "points[0] (repeat n=1).alarm[0]",
     "4 cannot occur: a 2-bit field of a holding register reports 0, 1, 2, 3"),
    ("a name on a Modbus point", [("    alarm: [1]\n", "    alarm: [active]\n")], "alarm: [active]",
     "points[0] (repeat n=1 and 7 more).alarm[0]", "'active' cannot occur: a single bit of a holding register"
     " reports a number (0, 1); did you mean 1?"),
    ("alarm 1 on a BACnet binary input", [('object: "life-safety-point,1"}', 'object: "binary-input,1"}'),
     ("    alarm: [alarm]\n    normal: [quiet]\n    fault: [fault]\n", "    alarm: [1]\n    normal: [0]\n")],
     ("alarm: [1]", 2), "points[2].alarm[0]", "1 cannot occur: binary-input present-value reports names, not numbers"
     " (inactive, active); did you mean 'active' (value 1)?"),
    ("forced on a door", [("alarm: [forced-open]", "alarm: [forced]")], "alarm: [forced]", "points[1].alarm[0]",
     "'forced' cannot occur: access-door door-alarm-state reports one of: normal, alarm, door-open-too-long,"
     " forced-open, tamper, door-fault, lock-down, free-access, egress-open; did you mean 'forced-open'?"),
    ("other_alarms value that cannot occur", [("tamper: [tamper]", "tamper: [tampered]")], "[tampered]",
     "points[1].other_alarms.tamper[0]", "did you mean 'tamper'?"),
    ("fault value that cannot occur", [("fault: [door-fault]", "fault: [DOOR_FAULT_X]")], "DOOR_FAULT_X",
     "points[1].fault[0]", "'DOOR_FAULT_X' cannot occur: access-door door-alarm-state"),
    ("momentary access event typo", [("value: denied-unknown-credential", "value: denied-unknown-credentials")],
     "denied-unknown-credentials", "points[3].events[1].value", "did you mean 'denied-unknown-credential'?"),
    ("life-safety state in upper case", [("    alarm: [alarm]\n    normal: [quiet]", "    alarm: [ALARM]\n"
     "    normal: [quiet]")], "[ALARM]", "points[2].alarm[0]", "did you mean 'alarm'?"),
    ("ip:port with a different port:", [(BACNET_DEVICE, "    address: 127.0.0.1:47810\n    port: 47809\n")],
     "127.0.0.1:47810", "devices[1].address", "'127.0.0.1:47810' ends in port 47810 but port: says another;"
     " write address: 127.0.0.1 and the port once, under port:"),
    ("BACnet address that is a host name", [(BACNET_DEVICE, "    address: panel.example\n")], "panel.example",
     "devices[1].address", "'panel.example' is not an IPv4 address"),
    ("BACnet address in IPv6", [(BACNET_DEVICE, '    address: "[::1]:47809"\n')], "[::1]", "devices[1].address",
     "is an IPv6 address: the gateway speaks BACnet/IPv4"),
    ("BACnet address with a netmask", [(BACNET_DEVICE, "    address: 127.0.0.1/8\n")], "127.0.0.1/8",
     "devices[1].address", "a device address takes no netmask; write address: 127.0.0.1"),
    ("Modbus host:port with a different port:", [(MODBUS_HOST, "    host: 127.0.0.1:5021\n    port: 5020\n")],
     "127.0.0.1:5021", "devices[0].host", "ends in port 5021 but port: says another"),
    ("discrete input address 70000", [(PIR_SOURCE, DI_SOURCE.replace('"{i}"', "70000"))], "70000",
     "points[0] (repeat n=1 and 7 more).source.address",
     "discrete input address 70000 is beyond 65535, the highest Modbus address"),
    ("Modicon numbering", [(PIR_SOURCE, PIR_SOURCE.replace('"100 + {i} // 16"', "400101"))], "400101",
     "points[0] (repeat n=1 and 7 more).source.address", "400101 looks like the 6-digit Modicon numbering of"
     " holding register 100: write address: 100"),
    ("unit id 300", [("    unit_id: 1\n", "    unit_id: 300\n")], "unit_id: 300", "devices[0].unit_id",
     "unit id 300 is beyond 255: Modbus unit ids are 1-247 on a serial line"),
    ("unit id 0 on an RTU line", [("    unit_id: 1\n", "    transport: rtu_over_tcp\n    unit_id: 0\n")], "unit_id: 0",
     "devices[0].unit_id", "unit id 0 cannot be polled on an RTU line behind a converter: Modbus unit ids there"
     " are 1-247 (0 is the broadcast address, which no device answers)"),
    ("bit 16", [(PIR_SOURCE, PIR_SOURCE.replace('"{i} % 16"', "16"))], "bit: 16",
     "points[0] (repeat n=1 and 7 more).source.bit",
     "bit 16 is beyond 15: a 16-bit register has bits 0 (lowest) to 15"),
    ("event type typo", [("type: door_forced", "type: door_forcd")], "door_forcd", "points[1].type",
     "unknown event type 'door_forcd'; did you mean 'door_forced'?"),
    ("event type typo as other_alarms key", [("      door_held_open:", "      door_held_opn:")], "door_held_opn",
     "points[1].other_alarms.door_held_opn", "unknown event type 'door_held_opn'; did you mean 'door_held_open'?"),
    ("Modbus table typo", [(PIR_SOURCE, PIR_SOURCE.replace("table: holding", "table: holding_register"))],
     "holding_register", "points[0] (repeat n=1 and 7 more).source.table",
     "unknown Modbus table 'holding_register'; did you mean 'holding'?"),
    ("transport typo", [("    unit_id: 1\n", "    transport: rtu-over-tcp\n    unit_id: 1\n")], "rtu-over-tcp",
     "devices[0].transport", "unknown Modbus transport 'rtu-over-tcp'; did you mean 'rtu_over_tcp'?"),
    ("device instance 4194303", [("device_instance: 1001", "device_instance: 4194303")], "4194303",
     "devices[1].device_instance", "device instance 4194303 is beyond 4194302: BACnet device instances are"
     " 0-4194302"),
]


@pytest.mark.parametrize(("case", "edits", "needle", "path", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_named_with_file_line_path_and_domain_words(
    tmp_path: Path, case: str, edits: list[tuple[str, str]], needle: str | tuple[str, int], path: str, message: str
) -> None:
    text = BASE
    for old, new in edits:
        assert old in text, case
        text = text.replace(old, new, 1)
    problems = _problems(tmp_path, text)
    expected = f"{tmp_path / 'site.yaml'}:{_line_of(text, needle)}: {path}: "
    matching = [p for p in problems if p.startswith(expected) and message in p]
    assert matching, (expected + message, problems)


def test_ip_port_is_shorthand_for_address_and_port(tmp_path: Path) -> None:
    text = BASE.replace(BACNET_DEVICE, "    address: 127.0.0.1:47810\n", 1)
    text = text.replace(MODBUS_HOST, "    host: 127.0.0.1:5021\n", 1)
    site = load_site(_write(tmp_path, text))
    bacnet, modbus = site.device("fire-1"), site.device("panel-1")
    assert isinstance(bacnet, BacnetDevice) and isinstance(modbus, ModbusDevice)
    assert (bacnet.address, bacnet.port, bacnet.address_text) == ("127.0.0.1", 47810, "127.0.0.1:47810")
    assert (modbus.host, modbus.port) == ("127.0.0.1", 5021)


def test_ip_port_with_the_same_port_given_again_is_accepted(tmp_path: Path) -> None:
    site = load_site(_write(tmp_path, BASE.replace(BACNET_DEVICE, "    address: 127.0.0.1:47809\n    port: 47809\n")))
    device = site.device("fire-1")
    assert isinstance(device, BacnetDevice)
    assert (device.address, device.port) == ("127.0.0.1", 47809)


def test_modbus_tcp_accepts_ipv6_hosts(tmp_path: Path) -> None:
    site = load_site(_write(tmp_path, BASE.replace(MODBUS_HOST, '    host: "[::1]:5021"\n', 1)))
    assert (site.device("panel-1").host, site.device("panel-1").port) == ("::1", 5021)  # type: ignore[union-attr]
    site = load_site(_write(tmp_path, BASE.replace(MODBUS_HOST, '    host: "::1"\n    port: 5022\n', 1)))
    assert (site.device("panel-1").host, site.device("panel-1").port) == ("::1", 5022)  # type: ignore[union-attr]


def test_overlay_port_shorthand_is_also_checked(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    site = load_site(path, [{"devices": {"fire-1": {"address": "127.0.0.1:40001", "port": None}}}])
    assert site.device("fire-1").port == 40001
    with pytest.raises(ConfigError, match="ends in port 40001 but port: says another"):
        load_site(path, [{"devices": {"fire-1": {"address": "127.0.0.1:40001"}}}])


def test_a_vendors_own_enumeration_number_is_accepted_but_not_on_binary_objects(tmp_path: Path) -> None:
    load_site(_write(tmp_path, BASE.replace("tamper: [tamper]", "tamper: [tamper, 300]")))
    text = BASE.replace('object: "life-safety-point,1"}', 'object: "binary-input,1"}').replace(
        "    alarm: [alarm]\n    normal: [quiet]\n    fault: [fault]\n", "    alarm: [active]\n    normal: [2]\n"
    )
    assert any("2 cannot occur: binary-input present-value reports one of: inactive, active" in p
               for p in _problems(tmp_path, text))


def test_bacnet_action_values_are_checked_against_the_written_property(tmp_path: Path) -> None:
    text = BASE.replace("      tamper: [tamper]\n", "      tamper: [tamper]\n    actions:\n"
                        "      - {action: unlock, value: unlocked}\n", 1)
    problems = _problems(tmp_path, text)
    assert any("points[1].actions[0].value: 'unlocked' cannot occur: access-door present-value reports one of:"
               " lock, unlock, pulse-unlock, extended-pulse-unlock; did you mean 'unlock'?" in p for p in problems)


def test_every_problem_of_a_point_is_reported_together(tmp_path: Path) -> None:
    text = BASE.replace("alarm: [forced-open]", "alarm: [forced]").replace("normal: [normal]", "normal: [norma]")
    text = text.replace("    unit_id: 1\n", "    transport: rtu_over_tcp\n    unit_id: 0\n")
    problems = _problems(tmp_path, text)
    paths = [p.split(": ", 2)[1] for p in problems]
    assert paths == ["devices[0].unit_id", "points[1].alarm[0]", "points[1].normal[0]"]


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ("    type: fire\n", "    type: journal_fault\n", "points[2].type"),
        (
            "{value: granted, type: access_granted}",
            "{value: granted, type: point_unavailable}",
            "points[3].events[0].type",
        ),
    ],
)
def test_an_event_type_only_the_gateway_raises_is_refused_on_a_point(
    tmp_path: Path, old: str, new: str, path: str
) -> None:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    (problem,) = [p for p in _problems(tmp_path, text) if "raised by the gateway itself" in p]
    assert f"site.yaml:{_line_of(text, new.strip())}: {path}: " in problem, problem
