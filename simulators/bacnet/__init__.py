"""Simulated BACnet/IP security devices (bacpypes3) for tests, benchmarks and the demo."""

from simulators.bacnet.site import BacnetSiteSimulator

__all__ = ["BacnetSiteSimulator"]
