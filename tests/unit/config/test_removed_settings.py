"""Settings that were removed: a site config that still sets one is refused with a message saying so and why,
on the line of the key, instead of a bare "unknown key" (or, worse, a setting silently doing nothing)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from gateway.config.loader import load_site, site_json_schema
from gateway.config.models import JournalConfig
from gateway.domain.errors import ConfigError
from tests.support.sites import MINIMAL_SITE, SITES

BASE = MINIMAL_SITE.read_text(encoding="utf-8")
DATA_DIR = "  data_dir: var/test-site\n"


@pytest.mark.parametrize("value", ["5ms", "0", "null"])
def test_commit_interval_is_refused_as_removed_on_its_line(tmp_path: Path, value: str) -> None:
    assert DATA_DIR in BASE
    text = BASE.replace(DATA_DIR, f"{DATA_DIR}  commit_interval: {value}\n", 1)
    line = next(n for n, row in enumerate(text.splitlines(), start=1) if "commit_interval" in row)
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert len(info.value.problems) == 1, info.value.problems
    problem = info.value.problems[0]
    assert problem.startswith(f"{path}:{line}: journal.commit_interval: commit_interval was removed"), problem
    assert "could only delay alarms; delete this line" in problem, problem


def test_commit_interval_is_not_offered_to_editors_nor_part_of_the_model() -> None:
    schema = site_json_schema()
    journal = schema["$defs"]["JournalConfig"]
    assert "commit_interval" not in journal["properties"]
    document = YAML(typ="safe").load(BASE.replace(DATA_DIR, f"{DATA_DIR}  commit_interval: 5ms\n", 1))
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(document)), "the editor flags it too"
    assert "commit_interval" not in JournalConfig(data_dir=Path("x")).model_dump()


def test_no_shipped_site_config_sets_a_removed_setting() -> None:
    assert len(list(SITES.glob("*.yaml"))) == 4
    for path in sorted(SITES.glob("*.yaml")):
        assert "commit_interval" not in path.read_text(encoding="utf-8"), path
