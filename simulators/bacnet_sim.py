"""Entry point named in the design: the BACnet site simulator (implementation in simulators/bacnet/)."""

from simulators.bacnet.site import BacnetSiteSimulator, free_udp_port

__all__ = ["BacnetSiteSimulator", "free_udp_port"]
