"""A `TODO` left by discover (or the EDE import) is refused with what to choose and the choices; what merely
follows from it (an unknown tenant 'TODO') is not reported on top."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import load_site
from gateway.domain.errors import ConfigError
from tests.support.sites import MINIMAL_SITE

BASE = MINIMAL_SITE.read_text(encoding="utf-8")
DOOR = "    tenant: jv\n    zone: hal\n    type: door_forced\n"


def _problems(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_site(path)
    return path, info.value.problems


def _line(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_todo_tenant_zone_and_type_are_named_with_the_choices(tmp_path: Path) -> None:
    text = BASE.replace(DOOR, "    tenant: TODO\n    zone: TODO\n    type: TODO-door_forced\n", 1)
    path, problems = _problems(tmp_path, text)
    assert problems[:3] == [
        f"{path}:{_line(text, 'tenant: TODO')}: points[1].tenant: still TODO: choose the tenant this point belongs"
        " to (one of: jv, az)",
        f"{path}:{_line(text, 'zone: TODO')}: points[1].zone: still TODO: choose the zone this point is in"
        " (one of: jv-1, hal)",
        f"{path}:{_line(text, 'type: TODO')}: points[1].type: still TODO: choose what an alarm of this point is"
        " (one of: " + problems[2].split("(one of: ", 1)[1],
    ]
    assert "door_forced" in problems[2] and "suggested: 'door_forced' (if right, delete 'TODO-')" in problems[2]
    assert len(problems) == 3, problems  # no "unknown tenant 'TODO'", no pattern error on top


def test_todo_raw_values_name_what_the_source_reports(tmp_path: Path) -> None:
    text = BASE.replace("alarm: [forced-open]", "alarm: [TODO]", 1)
    path, problems = _problems(tmp_path, text)
    assert problems == [
        f"{path}:{_line(text, '[TODO]')}: points[1].alarm[0]: still TODO: choose the raw values that mean an alarm"
        " (access-door door-alarm-state reports: normal, alarm, door-open-too-long, forced-open, tamper,"
        " door-fault, lock-down, free-access, egress-open)"
    ]


def test_a_todo_in_a_repeat_template_is_said_once(tmp_path: Path) -> None:
    text = BASE.replace("    zone: jv-1\n", "    zone: TODO\n", 1)
    path, problems = _problems(tmp_path, text)
    assert problems == [
        f"{path}:{_line(text, 'zone: TODO')}: points[0] (repeat n=1 and 7 more).zone: still TODO: choose the zone"
        " this point is in (one of: jv-1, hal)"
    ]


def test_other_problems_are_still_reported_beside_a_todo(tmp_path: Path) -> None:
    text = BASE.replace("  name: Testgebouw", "  name: TODO").replace("    timeout: 500ms", "    timout: 500ms")
    _path, problems = _problems(tmp_path, text)
    assert any("site.name: still TODO: give it the name the meldkamer will read" in p for p in problems)
    assert any("devices[0].timout: unknown key 'timout'; did you mean 'timeout'?" in p for p in problems)


def test_todo_only_counts_as_a_whole_word(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BASE.replace("name: Hoofdentree", "name: TODOS-kamer"), encoding="utf-8")
    load_site(path)
