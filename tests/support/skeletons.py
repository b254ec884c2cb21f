"""What an installer does to a skeleton from `discover` / `ede import`, done by a test: resolve every TODO."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from gateway.config.loader import load_site
from gateway.config.models import SiteConfig


def resolve_todos(text: str, *, default_type: str = "burglary", first_port: int = 47900) -> str:
    """The skeleton with every TODO decided: suggestions (`TODO-x`) taken, the rest filled in for a test site."""
    doc: dict[str, Any] = YAML(typ="safe").load(text)
    doc["site"] = {"id": "test-site", "name": "Test site", "address": "Teststraat 1"}
    doc["tenants"] = [{"id": "t1", "name": "Tenant 1"}]
    doc["zones"] = [{"id": "z1", "name": "Zone 1", "tenant": "t1"}]
    doc["mqtt"] = {"url": "mqtt://127.0.0.1:1883", "insecure": True}
    for index, device in enumerate(doc["devices"]):
        if device.get("address") == "TODO":  # EDE has no addresses
            device["address"] = "127.0.0.1"
            device["port"] = first_port + index
    for point in doc["points"]:
        point["tenant"], point["zone"] = "t1", "z1"
        kind = point["type"]
        point["type"] = kind.removeprefix("TODO-") if kind.startswith("TODO-") else default_type
    out = io.StringIO()
    YAML(typ="safe").dump(doc, out)
    resolved = out.getvalue()
    assert "TODO" not in resolved, "a TODO the test does not know how to resolve"
    return resolved


def load_resolved(text: str, tmp_path: Path, **options: Any) -> SiteConfig:
    """Resolve the skeleton's TODOs and load it with the real loader: the skeleton is a real site config."""
    path = tmp_path / "resolved.yaml"
    path.write_text(resolve_todos(text, **options), encoding="utf-8")
    return load_site(path)
