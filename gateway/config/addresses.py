"""Device addresses as installers write them: `ip`, `ip:port` (a shorthand for address + port), `[v6]:port`.

The BACnet stack (bacpypes3) is given `address:port`; a host name there is looked up once at start (a failed
lookup stops the gateway) and an IPv6 address is a different BACnet data link (BACnet/IPv6) that the
gateway does not speak, so a BACnet device address must be an IPv4 address, checked here, not at run time.
"""

from __future__ import annotations

import ipaddress
import re

_HOST_PORT = re.compile(r"^(?P<host>[^:\[\]]+):(?P<port>\d+)$")
_BRACKETED = re.compile(r"^\[(?P<host>[^\]]+)\](?::(?P<port>\d+))?$")


def split_host_port(text: str) -> tuple[str, int] | None:
    """('127.0.0.1', 47809) for '127.0.0.1:47809' or '[::1]:47809'; None when no port is written."""
    text = text.strip()
    match = _HOST_PORT.match(text) or _BRACKETED.match(text)
    if match is None or match.group("port") is None:
        return None
    return match.group("host"), int(match.group("port"))


def take_port_from_address(data: object, key: str) -> object:
    """Before validation: `key: ip:port` becomes `key: ip` + `port: port`, unless `port:` says otherwise
    (then the address is left as written and its validator names the conflict)."""
    if not isinstance(data, dict) or not isinstance(data.get(key), str):
        return data
    split = split_host_port(data[key])
    if split is None:
        return data
    host, port = split
    given = data.get("port")
    if given is not None and str(given).strip() != str(port):
        return data
    return {**data, key: host, "port": port}


def _port_conflict(text: str, key: str) -> str | None:
    split = split_host_port(text)
    if split is None:
        return None
    host, port = split
    return (
        f"'{text}' ends in port {port} but port: says another; write {key}: {host} and the port once, under port:"
    )


def bacnet_ipv4(text: str) -> str:
    """A BACnet/IP device address: an IPv4 address, nothing else."""
    conflict = _port_conflict(text, "address")
    if conflict is not None:
        raise ValueError(conflict)
    if "/" in text:
        raise ValueError(f"'{text}': a device address takes no netmask; write address: {text.split('/', 1)[0]}")
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise ValueError(
            f"'{text}' is not an IPv4 address: give the BACnet device's IP address, e.g. 192.0.2.10"
            " (a host name would be looked up only once, at start, and a failed lookup would stop the gateway)"
        ) from None
    if address.version == 6:
        raise ValueError(
            f"'{text}' is an IPv6 address: the gateway speaks BACnet/IPv4 (Annex J), not BACnet/IPv6;"
            " give the device's IPv4 address"
        )
    return str(address)


def bacnet_local_ipv4(text: str) -> str:
    """The gateway's own BACnet/IP interface: an IPv4 address, optionally with its netmask ('192.0.2.5/24',
    which gives the stack the broadcast address)."""
    conflict = _port_conflict(text, "address")
    if conflict is not None:
        raise ValueError(conflict)
    try:
        interface = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise ValueError(
            f"'{text}' is not an IPv4 address (optionally with its netmask, e.g. 192.0.2.5/24)"
        ) from None
    if interface.version == 6:
        raise ValueError(f"'{text}' is an IPv6 address: the gateway speaks BACnet/IPv4, not BACnet/IPv6")
    return text.strip()


def modbus_host(text: str) -> str:
    """A Modbus TCP host: a name or an IPv4/IPv6 address, without a port (that goes under port:)."""
    conflict = _port_conflict(text, "host")
    if conflict is not None:
        raise ValueError(conflict)
    return text.strip().strip("[]")
