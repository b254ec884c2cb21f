"""The config hash (status document, gcmk_config_info) names the config as deployed: the site file and its
overlays, so that a change to an overlay alone (an endpoint, a port, a receiver) is visible as a new config."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from gateway.config.source import load_validated

SITE = Path(__file__).resolve().parents[3] / "config" / "sites" / "hoftoren.yaml"


def test_without_overlays_it_is_the_files_sha256sum_prefix(tmp_path: Path) -> None:
    site = tmp_path / "hoftoren.yaml"
    shutil.copy(SITE, site)
    assert load_validated(site).hash == hashlib.sha256(site.read_bytes()).hexdigest()[:16]


def test_an_overlay_changes_it_and_a_change_to_the_overlay_alone_changes_it_again(tmp_path: Path) -> None:
    site = tmp_path / "hoftoren.yaml"
    shutil.copy(SITE, site)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("supervision:\n  heartbeat_interval: 5s\n", encoding="utf-8")
    alone, first = load_validated(site).hash, load_validated(site, [overlay]).hash
    overlay.write_text("supervision:\n  heartbeat_interval: 7s\n", encoding="utf-8")
    second = load_validated(site, [overlay]).hash
    assert len({alone, first, second}) == 3
    assert load_validated(site, [overlay]).hash == second  # the same files: the same hash
    as_dict = {"supervision": {"heartbeat_interval": "7s"}}
    assert load_validated(site, [as_dict]).hash == load_validated(site, [dict(as_dict)]).hash != alone
