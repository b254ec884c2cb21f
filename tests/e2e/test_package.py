"""What a plain (non-editable) install ships: the demo needs the site configs and the scenarios."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.paths import REPO


@pytest.mark.slow
def test_the_wheel_ships_the_site_configs_and_scenarios(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("gcmk_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_sites = {n for n in names if n.startswith("gateway/sites/") and n.endswith(".yaml")}
    assert shipped_sites == {f"gateway/sites/{p.name}" for p in (REPO / "config" / "sites").glob("*.yaml")}
    assert len(shipped_sites) == 4
    assert "simulators/scenarios/demo.yaml" in names
    assert "gateway/py.typed" in names
