"""EDE import and export: round trip of the shipped sites, separators, state texts, skipped rows with file:line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.config.loader import load_site
from gateway.config.models import BacnetDevice, BacnetSource, SiteConfig
from gateway.tools.ede import detect_separator, ede_skeleton, export_ede, read_ede, read_state_texts
from gateway.tools.skeleton import diff
from tests.support.logs import configured_logging
from tests.support.paths import REPO
from tests.support.skeletons import load_resolved

SITES = sorted((REPO / "gateway" / "sites").glob("*.yaml"))
BACNET_SITES = [p for p in SITES if any(isinstance(d, BacnetDevice) for d in load_site(p).devices)]


@pytest.fixture(autouse=True)
def _restored_logging() -> Iterator[None]:
    """`main()` points process-wide logging at this test's captured stderr; later tests must not write to it."""
    with configured_logging():
        yield

# Layout 2.2 as the B.I.G.-EU sample writes it, with rows an importer must refuse (line numbers in comments).
SAMPLE = """\
# Proposal_Engineering-Data-Exchange - B.I.G.-EU;;;;;;;;;;;;;;;
PROJECT_NAME;Pand 5;;;;;;;;;;;;;;
VERSION_OF_REFERENCEFILE;1;;;;;;;;;;;;;;
TIMESTAMP_OF_LAST_CHANGE;1. Dez 26;;;;;;;;;;;;;;
AUTHOR_OF_LAST_CHANGE;Installateur;;;;;;;;;;;;;;
VERSION_OF_LAYOUT;2.3;;;;;;;;;;;;;;
{inclusion}
{columns}
Panel;500;Centrale pand 5;8;500;;;;;N;N;;;;;;
PIR-1;500;PIR gang 1;3;1;Gang 1e;;;;N;Y;;;1;;;1
PIR-2;500;PIR gang 2;3;2;Gang 2e;;;;N;Y;;;2;;;1
Temp-1;500;Temperatuur;0;1;Serverruimte;20;;;N;N;;;;62;;
Broken;5x0;PIR kapot;3;3;;;;;N;Y;;;;;;
Unknown;500;Vendor object;999;1;;;;;N;N;;;;;;
Short;500;Kort
PIR-1b;500;PIR gang 1 nogmaals;3;1;;;;;N;Y;;;;;;
Rook-1;500;Rookmelder 1;21;1;Hal;;;;N;Y;;;;;;2
Deur-1;500;Deur hoofdingang;30;1;Entree;;;;N;Y;;;;;;3
Lezer-1;500;Lezer hoofdingang;33;1;Entree;;;;N;Y;;;;;;
Stand;500;Inschakelstatus;19;1;;;;;Y;Y;;;3;;;
"""
SAMPLE = SAMPLE.format(
    inclusion=";".join(["#mandatory", *["mandatory"] * 4, *["optional"] * 12]),
    columns="# keyname;device obj.-instance;object-name;object-type;object-instance;description;"
    "present-value-default;min-present-value;max-present-value;settable;supports COV;hi-limit;low-limit;"
    "state-text-reference;unit-code;vendor-specific-address;notification-class",
)
STATE_TEXTS = """\
#State Text Reference;;;;
#Reference Number;Text 1 or Inactive-Text ;Text 2 or Active-Text ;Text 3;Text 4
1;Rust;Alarm;;
2;normal;tamper;;
3;Uit;In;Deels in;
x;kapot;;;
"""


def _site_objects(site: SiteConfig) -> set[tuple[int, str]]:
    devices = {d.id: d for d in site.devices if isinstance(d, BacnetDevice)}
    return {
        (devices[p.device].device_instance, p.source.object)
        for p in site.points
        if isinstance(p.source, BacnetSource) and p.device in devices
    }


@pytest.mark.parametrize("site_path", BACNET_SITES, ids=lambda p: p.stem)
def test_export_then_import_gives_the_same_objects(site_path: Path, tmp_path: Path) -> None:
    site = load_site(site_path)
    main_file, state_file = export_ede(site, tmp_path, timestamp="2026-12-01", author="test")
    ede = read_ede(main_file)
    texts, skipped_texts = read_state_texts(state_file)
    assert (ede.separator, ede.layout, ede.skipped, skipped_texts) == (";", "2.2", [], [])
    skeleton = ede_skeleton(ede, texts, command="test")
    imported = {(int(d.entry["device_instance"]), str(p.source["object"])) for d in skeleton.devices for p in d.points}
    assert imported == _site_objects(site)
    names = {int(d.entry["device_instance"]): d.entry["name"] for d in skeleton.devices}
    assert names == {d.device_instance: d.name for d in site.devices if isinstance(d, BacnetDevice)}
    assert diff(skeleton, site) == []  # same devices, same objects, properties the site reads


def test_import_reads_columns_by_name_and_reports_every_skipped_row(tmp_path: Path) -> None:
    path = tmp_path / "pand5_EDE.csv"
    path.write_text(SAMPLE, encoding="utf-8")
    ede = read_ede(path)
    assert (ede.separator, ede.project, ede.layout) == (";", "Pand 5", "2.3")
    assert ede.skipped == [
        f"{path}:13: device obj.-instance '5x0' is not 0..4194302",
        f"{path}:14: object-type '999' is not a standard BACnet object type number",
        f"{path}:15: 3 field(s): the five mandatory ones (keyname, device obj.-instance, object-name, object-type,"
        " object-instance) are needed (separator ';' detected)",
        f"{path}:16: binary-input,1 of device 500 is already on line 10",
    ]
    texts, skipped_texts = read_state_texts(_write(tmp_path / "pand5_StateTexts.csv", STATE_TEXTS))
    assert texts[3] == ["Uit", "In", "Deels in"]
    assert skipped_texts == [f"{tmp_path / 'pand5_StateTexts.csv'}:6: reference number 'x' is not a number"]
    skeleton = ede_skeleton(ede, texts, command="gcmk-gateway ede import pand5_EDE.csv")
    assert ede.skipped[-1] == f"{path}:12: analog-input,1: " + (
        "analog objects (no alarm mapping: the gateway maps states, not measurements)"
    )
    (device,) = skeleton.devices
    assert (device.entry["name"], device.entry["address"]) == ("Centrale pand 5", "TODO")
    by_object = {p.source["object"]: p for p in device.points}
    assert by_object["binary-input,1"].type == "TODO-burglary"
    assert by_object["binary-input,2"].type == "TODO-tamper"  # the active text names an event type
    assert "inactive = 'Rust', active = 'Alarm'" in by_object["binary-input,1"].note
    assert "notification-class 2" in by_object["life-safety-point,1"].note
    assert "1 = 'Uit', 2 = 'In', 3 = 'Deels in'" in by_object["multi-state-value,1"].note
    assert by_object["access-door,1"].source["property"] == "door-alarm-state"
    assert sum(skeleton.skipped.values()) == 5
    site = load_resolved(skeleton.render(), tmp_path)
    assert len(site.points) == 6


@pytest.mark.parametrize("separator", [",", "\t"])
def test_the_separator_is_detected(separator: str, tmp_path: Path) -> None:
    text = SAMPLE.replace(";", separator)
    assert detect_separator(text) == separator
    ede = read_ede(_write(tmp_path / "ede.csv", text))
    assert ede.separator == separator
    keys = ["Panel", "PIR-1", "PIR-2", "Temp-1", "Rook-1", "Deur-1", "Lezer-1", "Stand"]
    assert [r.keyname for r in ede.rows] == keys


def test_cli_import_writes_the_skeleton_and_lists_skipped_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ede_file = _write(tmp_path / "pand5_EDE.csv", SAMPLE)
    states = _write(tmp_path / "pand5_StateTexts.csv", STATE_TEXTS)
    out = tmp_path / "skeleton.yaml"
    assert main(["ede", "import", str(ede_file), "--state-texts", str(states), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {ede_file}:14: object-type '999'" in err
    assert f"skipped {states}:6: reference number 'x'" in err
    assert out.read_text(encoding="utf-8").startswith("# Site config skeleton written by `gcmk-gateway ede import")

    analog_only = _write(tmp_path / "analog_EDE.csv", "\n".join([*SAMPLE.splitlines()[:8], "T;500;Temp;0;1"]))
    assert main(["ede", "import", str(analog_only)]) == 3
    assert "no object the gateway can map" in capsys.readouterr().err


def test_cli_export_writes_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = BACNET_SITES[0]
    assert main(["ede", "export", "--site", str(site), "--out", str(tmp_path)]) == 0
    site_id = load_site(site).site.id
    assert (tmp_path / f"{site_id}_EDE.csv").read_text(encoding="utf-8").startswith("# Engineering-Data-Exchange")
    assert (tmp_path / f"{site_id}_StateTexts.csv").is_file()
    assert "written" in capsys.readouterr().err


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
