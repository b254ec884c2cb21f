"""docs/onboarding.md cannot drift from the code: its starter config is the shipped starter file and
validates; its raw-value tables are the ones validation uses; its metrics ports scheme is consistent."""

from __future__ import annotations

import re

from gateway.config.loader import load_site
from gateway.config.raw_values import raw_value_table
from tests.support.paths import REPO

DOC = (REPO / "docs" / "onboarding.md").read_text(encoding="utf-8")
STARTER = REPO / "config" / "examples" / "starter.yaml"


def test_the_starter_config_validates_and_is_short() -> None:
    site = load_site(STARTER)
    assert {d.protocol for d in site.devices} == {"bacnet", "modbus"}
    assert len(site.devices) == 2
    assert len(STARTER.read_text(encoding="utf-8").splitlines()) <= 80


def test_the_docs_show_the_starter_file_as_it_is() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC, flags=re.DOTALL)
    assert STARTER.read_text(encoding="utf-8") in blocks


def test_the_raw_value_tables_are_generated_from_the_validation_tables() -> None:
    match = re.search(r"<!-- raw-values:begin[^>]*-->\n(.*?)\n<!-- raw-values:end -->", DOC, flags=re.DOTALL)
    assert match is not None, "docs/onboarding.md lost its raw-values markers"
    assert match.group(1) == raw_value_table(), "regenerate with gateway.config.raw_values.raw_value_table()"


def test_the_onboarding_headings_are_there() -> None:
    headings = re.findall(r"^## (.+)$", DOC, flags=re.MULTILINE)
    for expected in ("1. Discover the devices", "2. Edit the skeleton", "3. Validate", "4. Check before go-live",
                     "5. Run", "6. Walk test", "Raw values per protocol", "Overlays", "Choosing metrics ports",
                     "What the startup messages mean"):
        assert expected in headings


def test_readme_points_to_the_onboarding_guide() -> None:
    assert "docs/onboarding.md" in (REPO / "README.md").read_text(encoding="utf-8")
