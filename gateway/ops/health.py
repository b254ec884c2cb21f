"""/healthz and /readyz, and the routes of the operator port.

Readiness is the conjunction of what each component reports through the `Health` protocol (the gateway's
lifecycle: started, not stopping; the delivery sink: MQTT connected, journal writable; ...); the body lists
every component's verdict so that an operator sees which one is not ready and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest

from gateway.core.ports import Health, HealthReport
from gateway.ops.http import Response

# What generate_latest writes: the text format 0.0.4. Our lowest allowed prometheus-client (0.20) calls it
# CONTENT_TYPE_LATEST; later ones moved that name to format 1.0.0 and call this one CONTENT_TYPE_PLAIN_0_0_4.
TEXT_FORMAT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"


def readiness(components: Sequence[Health]) -> HealthReport:
    """Ready when every component says so; the detail names each component's verdict, failures first."""
    reports = [(c.name, c.health()) for c in components]
    failing = [f"{name}: {r.detail}" for name, r in reports if not r.ok]
    if failing:
        return HealthReport(False, "; ".join(failing))
    return HealthReport(True, "; ".join(f"{name}: {r.detail}" for name, r in reports) or "running")


@dataclass
class OperatorEndpoints:
    """The registry and the three routes served by `gateway.ops.http.OperatorServer`."""

    registry: CollectorRegistry
    components: Sequence[Health]

    def routes(self) -> dict[str, Callable[[], Response]]:
        return {"/metrics": self.metrics, "/healthz": self.healthz, "/readyz": self.readyz}

    def metrics(self) -> Response:
        return Response(200, generate_latest(self.registry), TEXT_FORMAT_0_0_4)

    def healthz(self) -> Response:
        return Response(200, b"ok\n")  # answered by the event loop, so the process lives

    def readyz(self) -> Response:
        report = readiness(self.components)
        return Response(200 if report.ok else 503, (report.detail + "\n").encode())
