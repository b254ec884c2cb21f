"""Site configs for tests: the minimal test site, loaded with optional overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.config.loader import load_site
from gateway.config.models import SiteConfig

DATA = Path(__file__).resolve().parent.parent / "data"
MINIMAL_SITE = DATA / "minimal-site.yaml"
SITES = Path(__file__).resolve().parents[2] / "config" / "sites"


# A gateway built from the test site serves /metrics: on an OS-chosen port, never a fixed one.
OPERATOR_PORT_0: dict[str, Any] = {"metrics": {"listen": "127.0.0.1", "port": 0}}


def minimal_site(*overlays: dict[str, Any]) -> SiteConfig:
    return load_site(MINIMAL_SITE, [OPERATOR_PORT_0, *overlays])
