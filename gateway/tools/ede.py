"""EDE import and export: the BACnet Interest Group Europe (B.I.G.-EU) Engineering Data Exchange files.

What this relies on (the B.I.G.-EU template itself was not at hand; layout from public implementations and
vendor manuals: the EDE 2.2 sample and column mapping of the open-source bacnet-ex/bacnet_ede parser, and
the Tridium Niagara and Siemens Desigo CC EDE import manuals):
- The main file (`<project>_EDE.csv`) is CSV, usually `;`-separated (also `,` or tab in the wild), in
  layout 2.2 or 2.3. Header rows `PROJECT_NAME`, `VERSION_OF_REFERENCEFILE`, `TIMESTAMP_OF_LAST_CHANGE`,
  `AUTHOR_OF_LAST_CHANGE`, `VERSION_OF_LAYOUT`; comment rows start with `#`: a title, a
  `#mandatory;mandatory;...;optional` row and the column names `# keyname;device obj.-instance;object-name;
  object-type;object-instance;description;present-value-default;min-present-value;max-present-value;
  settable;supports COV;hi-limit;low-limit;state-text-reference;unit-code;vendor-specific-address`; 2.3
  adds `notification-class`. The first five are mandatory. object-type is the BACnet object type NUMBER
  (0 analog-input, 3 binary-input, 8 device, 21 life-safety-point, 30 access-door, ...); a row of type 8
  describes the device itself.
- The state-text file (`<project>_StateTexts.csv`): `#`-rows, then `reference;text 1;text 2;...`;
  for binary objects text 1 is the inactive text and text 2 the active text; for multi-state objects
  text n names state n. Rows of the main file refer to it by state-text-reference.
Columns are found by their names (any order, extra columns ignored); without a column-name row the 2.2
order is assumed. The separator is detected from the column-name row (else the first rows). Every row
that is not imported is reported with file:line and why.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bacpypes3.primitivedata import ObjectType

from gateway.config.models import BacnetDevice, BacnetSource, PointConfig, SiteConfig
from gateway.domain.taxonomy import EventType
from gateway.tools.skeleton import TODO, Skeleton, SkeletonDevice, bacnet_points, skip_reason

LAYOUT_22 = (
    "keyname",
    "device obj.-instance",
    "object-name",
    "object-type",
    "object-instance",
    "description",
    "present-value-default",
    "min-present-value",
    "max-present-value",
    "settable",
    "supports COV",
    "hi-limit",
    "low-limit",
    "state-text-reference",
    "unit-code",
    "vendor-specific-address",
)
_FIELD = {
    "keyname": "keyname",
    "objectname": "object_name",
    "objecttype": "object_type",
    "objectinstance": "object_instance",
    "description": "description",
    "supportscov": "supports_cov",
    "statetextreference": "state_text_ref",
    "notificationclass": "notification_class",
}
_HEADER_KEYS = (
    "PROJECT_NAME",
    "VERSION_OF_REFERENCEFILE",
    "TIMESTAMP_OF_LAST_CHANGE",
    "AUTHOR_OF_LAST_CHANGE",
    "VERSION_OF_LAYOUT",
)
SEPARATORS = (";", ",", "\t")
MAX_INSTANCE = 4_194_302
EVENT_TYPES = frozenset(str(t) for t in EventType)


def _field_of(column: str) -> str | None:
    """Column name as written ('# keyname', 'device obj.-instance', 'supports COV') -> our field name."""
    key = re.sub(r"[^a-z]", "", column.lower())
    if key.startswith("device") and "instance" in key:
        return "device_instance"
    return _FIELD.get(key)


@dataclass(frozen=True)
class EdeRow:
    line: int
    keyname: str
    device_instance: int
    object_name: str
    object_type: str  # bacpypes3 name: 'binary-input'
    object_instance: int
    description: str = ""
    state_text_ref: int | None = None
    notification_class: int | None = None
    supports_cov: bool | None = None


@dataclass
class EdeFile:
    path: Path
    separator: str
    project: str = ""
    layout: str = ""
    rows: list[EdeRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "file:line: why"
    notes: list[str] = field(default_factory=list)


def read_text(path: Path) -> tuple[str, str | None]:
    """The file's text (UTF-8, with or without BOM; else Windows-1252, as older tools write) and a note."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), f"{path}: not UTF-8, read as Windows-1252"


def detect_separator(text: str) -> str:
    """`;`, `,` or tab: the one that splits the column-name row (else the first rows) into most fields."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next((line for line in lines if "keyname" in line.lower()), None)
    sample = [header] if header is not None else lines[:20]
    counts = {sep: sum(line.count(sep) for line in sample) for sep in SEPARATORS}
    best = max(SEPARATORS, key=lambda sep: (counts[sep], -SEPARATORS.index(sep)))
    return best if counts[best] else ";"


def _rows(text: str, separator: str) -> Iterable[tuple[int, list[str]]]:
    """(line number of the row's first line, cells) for every CSV record."""
    reader = csv.reader(io.StringIO(text), delimiter=separator)
    start = 1
    for cells in reader:
        yield start, [c.strip() for c in cells]
        start = reader.line_num + 1


def _int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        try:
            number = float(text.strip().replace(",", "."))
        except ValueError:
            return None
        return int(number) if number.is_integer() else None


def object_type_name(text: str) -> str | None:
    """EDE object-type (a number; some tools write the name) -> bacpypes3 name; None if not a standard type."""
    number = _int(text)
    try:
        name = str(ObjectType(number if number is not None else text.strip().lower()))
    except (ValueError, TypeError, KeyError):
        return None
    return None if name.isdigit() else name


def object_type_number(name: str) -> int:
    return int(ObjectType(name))


def read_ede(path: Path) -> EdeFile:
    """Parse an EDE main file; rows that cannot be imported are in `skipped` with file:line and why."""
    text, note = read_text(path)
    ede = EdeFile(path=path, separator=detect_separator(text))
    if note:
        ede.notes.append(note)
    columns: dict[str, int] | None = None
    seen: dict[tuple[int, str, int], int] = {}
    for line, cells in _rows(text, ede.separator):
        if not any(cells):
            continue
        first = cells[0].lstrip("\ufeff")
        bare = first.lstrip("#").strip()
        if bare.upper() in _HEADER_KEYS:
            value = cells[1] if len(cells) > 1 else ""
            if bare.upper() == "PROJECT_NAME":
                ede.project = value
            elif bare.upper() == "VERSION_OF_LAYOUT":
                ede.layout = value
            continue
        if first.startswith("#"):
            if bare.lower() == "keyname":
                columns = {}
                for index, cell in enumerate(cells):
                    name = _field_of(cell)
                    if name is not None and name not in columns:
                        columns[name] = index
                missing = [
                    c
                    for c in ("keyname", "device_instance", "object_name", "object_type", "object_instance")
                    if c not in columns
                ]
                if missing:
                    ede.skipped.append(f"{path}:{line}: column-name row lacks {', '.join(missing)}: 2.2 order used")
                    columns = None
            continue
        if columns is None:
            columns = {_field_of(name) or name: index for index, name in enumerate(LAYOUT_22)}
            if not ede.notes or "column" not in ede.notes[-1]:
                ede.notes.append(f"{path}: no column-name row (# keyname;...) before line {line}: 2.2 order assumed")
        row = _row(path, line, cells, columns, ede.skipped, ede.separator)
        if row is None:
            continue
        key = (row.device_instance, row.object_type, row.object_instance)
        if key in seen:
            ede.skipped.append(
                f"{path}:{line}: {row.object_type},{row.object_instance} of device {row.device_instance}"
                f" is already on line {seen[key]}"
            )
            continue
        seen[key] = line
        ede.rows.append(row)
    if ede.layout and ede.layout not in ("2.2", "2.3"):
        ede.notes.append(f"{path}: layout version {ede.layout}: read as 2.2/2.3 (columns by name)")
    return ede


def _row(
    path: Path, line: int, cells: list[str], columns: dict[str, int], skipped: list[str], separator: str
) -> EdeRow | None:
    where = f"{path}:{line}"

    def cell(name: str) -> str:
        index = columns.get(name)
        return cells[index] if index is not None and index < len(cells) else ""

    if len(cells) < 5:
        skipped.append(
            f"{where}: {len(cells)} field(s): the five mandatory ones (keyname, device obj.-instance, object-name,"
            f" object-type, object-instance) are needed (separator {separator!r} detected)"
        )
        return None
    device = _int(cell("device_instance"))
    if device is None or not 0 <= device <= MAX_INSTANCE:
        skipped.append(f"{where}: device obj.-instance '{cell('device_instance')}' is not 0..{MAX_INSTANCE}")
        return None
    object_type = object_type_name(cell("object_type"))
    if object_type is None:
        skipped.append(f"{where}: object-type '{cell('object_type')}' is not a standard BACnet object type number")
        return None
    instance = _int(cell("object_instance"))
    if instance is None or not 0 <= instance <= MAX_INSTANCE:
        skipped.append(f"{where}: object-instance '{cell('object_instance')}' is not 0..{MAX_INSTANCE}")
        return None
    reference = cell("state_text_ref")
    notification_class = cell("notification_class")
    cov = cell("supports_cov").upper()
    return EdeRow(
        line=line,
        keyname=cell("keyname"),
        device_instance=device,
        object_name=cell("object_name") or cell("keyname"),
        object_type=object_type,
        object_instance=instance,
        description=cell("description"),
        state_text_ref=_int(reference) if reference else None,
        notification_class=_int(notification_class) if notification_class else None,
        supports_cov=True if cov in ("Y", "YES", "TRUE", "1") else False if cov in ("N", "NO", "FALSE", "0") else None,
    )


def read_state_texts(path: Path) -> tuple[dict[int, list[str]], list[str]]:
    """reference -> texts (text 1 first), and the skipped rows with file:line."""
    text, _note = read_text(path)
    separator = detect_separator(text)
    texts: dict[int, list[str]] = {}
    skipped: list[str] = []
    for line, cells in _rows(text, separator):
        if not any(cells) or cells[0].startswith("#"):
            continue
        reference = _int(cells[0])
        if reference is None or reference < 0:
            skipped.append(f"{path}:{line}: reference number '{cells[0]}' is not a number")
            continue
        values = list(cells[1:])
        while values and not values[-1]:
            values.pop()
        if reference in texts:
            skipped.append(f"{path}:{line}: reference {reference} appears twice (first kept)")
            continue
        texts[reference] = values
    return texts, skipped


# --- import -------------------------------------------------------------------------------------------------


def ede_skeleton(
    ede: EdeFile, state_texts: dict[int, list[str]] | None = None, *, command: str, state_file: str = ""
) -> Skeleton:
    """The EDE's devices and objects as a site-config skeleton. EDE has no addresses: `address: TODO`."""
    skeleton = Skeleton(command=command, protocol="bacnet", scanned={"*"})
    skeleton.notes.extend(ede.notes)
    devices: dict[int, SkeletonDevice] = {}
    names: dict[int, str] = {r.device_instance: r.object_name for r in ede.rows if r.object_type == "device"}
    for row in ede.rows:
        device = devices.get(row.device_instance)
        if device is None:
            entry = {
                "protocol": "bacnet",
                "id": f"bacnet-{row.device_instance}",
                "name": names.get(row.device_instance) or f"BACnet device {row.device_instance}",
                "address": TODO,
                "port": 47808,
                "device_instance": row.device_instance,
            }
            device = devices[row.device_instance] = SkeletonDevice(entry=entry, note="from EDE: address unknown")
        if row.object_type == "device":
            continue
        points = bacnet_points(
            device.id,
            row.object_type,
            row.object_instance,
            name=row.object_name,
            description=row.description,
            note=_row_note(row, state_texts, state_file),
            type_hint=_type_hint(row, state_texts),
        )
        if not points:
            skeleton.skipped[skip_reason(row.object_type)] += 1
            ede.skipped.append(
                f"{ede.path}:{row.line}: {row.object_type},{row.object_instance}: {skip_reason(row.object_type)}"
            )
            continue
        device.points.extend(points)
    skeleton.devices.extend(devices.values())
    rejected = len(ede.skipped) - sum(skeleton.skipped.values())
    if rejected:
        skeleton.skipped["EDE rows that could not be read (listed with file:line on stderr)"] += rejected
    return skeleton


def _type_hint(row: EdeRow, state_texts: dict[int, list[str]] | None) -> str | None:
    """A binary object whose active text names an event type ('tamper', as `ede export` writes) suggests it."""
    if not row.object_type.startswith("binary-") or row.state_text_ref is None:
        return None
    texts = (state_texts or {}).get(row.state_text_ref, [])
    active = texts[1].strip().lower() if len(texts) > 1 else ""
    return active if active in EVENT_TYPES else None


def _row_note(row: EdeRow, state_texts: dict[int, list[str]] | None, state_file: str) -> str:
    parts = [f"EDE {row.keyname}"]
    if row.notification_class is not None:
        parts.append(f"notification-class {row.notification_class}")
    if row.state_text_ref is not None:
        texts = (state_texts or {}).get(row.state_text_ref)
        if texts is None:
            where = f" in {state_file}" if state_file else " (no --state-texts file given)"
            parts.append(f"state texts {row.state_text_ref} not found{where}")
        elif row.object_type.startswith("binary-"):
            inactive = texts[0] if texts else ""
            active = texts[1] if len(texts) > 1 else ""
            parts.append(f"inactive = {inactive!r}, active = {active!r}")
        else:
            parts.append(", ".join(f"{n} = {t!r}" for n, t in enumerate(texts, start=1) if t))
    return "; ".join(parts)


# --- export -------------------------------------------------------------------------------------------------


def export_ede(site: SiteConfig, out_dir: Path, *, timestamp: str, author: str) -> tuple[Path, Path]:
    """Write `<site-id>_EDE.csv` and `<site-id>_StateTexts.csv` (layout 2.2 columns, `;`, CRLF) for the
    site's BACnet devices and the objects its points read (one row per object). Returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    state_rows: dict[tuple[str, ...], int] = {}
    for device in site.devices:
        if not isinstance(device, BacnetDevice):
            continue
        rows.append(
            _ede_row(
                device.id,
                device.device_instance,
                device.name,
                "device",
                device.device_instance,
                description=f"BACnet/IP {device.address_text}",
            )
        )
        by_object: dict[str, list[PointConfig]] = {}
        for point in site.points_of(device.id):
            if isinstance(point.source, BacnetSource):
                by_object.setdefault(point.source.object, []).append(point)
        for obj in sorted(by_object, key=_object_order):
            points = by_object[obj]
            object_type, instance = obj.split(",")
            texts = _state_texts(object_type, points)
            reference = ""
            if texts:
                reference = str(state_rows.setdefault(texts, len(state_rows) + 1))
            first = points[0]
            rows.append(
                _ede_row(
                    first.id,
                    device.device_instance,
                    first.name,
                    object_type,
                    int(instance),
                    description=first.location,
                    cov=device.cov,
                    state_text_ref=reference,
                )
            )
    main = out_dir / f"{site.site.id}_EDE.csv"
    states = out_dir / f"{site.site.id}_StateTexts.csv"
    header = [
        ["# Engineering-Data-Exchange - B.I.G.-EU"],
        ["PROJECT_NAME", site.site.name],
        ["VERSION_OF_REFERENCEFILE", "1"],
        ["TIMESTAMP_OF_LAST_CHANGE", timestamp],
        ["AUTHOR_OF_LAST_CHANGE", author],
        ["VERSION_OF_LAYOUT", "2.2"],
        ["#mandatory", *(["mandatory"] * 4), *(["optional"] * (len(LAYOUT_22) - 5))],
        [f"# {LAYOUT_22[0]}", *LAYOUT_22[1:]],
    ]
    _write_csv(main, [*header, *rows])
    width = max((len(t) for t in state_rows), default=2)
    state_header = [
        ["#State Text Reference"],
        [
            "#Reference Number",
            "Text 1 or Inactive-Text",
            "Text 2 or Active-Text",
            *(f"Text {n}" for n in range(3, width + 1)),
        ],
    ]
    _write_csv(states, [*state_header, *([str(ref), *texts] for texts, ref in state_rows.items())])
    return main, states


def _ede_row(
    keyname: str,
    device_instance: int,
    name: str,
    object_type: str,
    instance: int,
    *,
    description: str = "",
    cov: bool = False,
    state_text_ref: str = "",
) -> list[str]:
    """One row in the LAYOUT_22 columns (values not known from a site config left empty)."""
    row = dict.fromkeys(LAYOUT_22, "")
    row.update(
        {
            "keyname": keyname,
            "device obj.-instance": str(device_instance),
            "object-name": name,
            "object-type": str(object_type_number(object_type)),
            "object-instance": str(instance),
            "description": description,
            "settable": "N",
            "supports COV": "Y" if cov else "N",
            "state-text-reference": state_text_ref,
        }
    )
    return [row[column] for column in LAYOUT_22]


def _write_csv(path: Path, rows: Iterable[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
        writer.writerows(rows)


def _object_order(obj: str) -> tuple[int, int]:
    object_type, instance = obj.split(",")
    return (object_type_number(object_type), int(instance))


def _state_texts(object_type: str, points: list[PointConfig]) -> tuple[str, ...]:
    """Texts of the object's states as the points map them: binary (inactive, active), multi-state 1..n."""

    def meaning(value: object) -> str:
        for point in points:
            if point.kind == "momentary":
                for event in point.events:
                    if str(event.value) == str(value):
                        return str(event.type)
                continue
            if value in point.alarm:
                return str(point.type)
            if value in point.normal:
                return "normal"
            if value in point.fault:
                return "fault"
            for event_type, values in point.other_alarms.items():
                if value in values:
                    return str(event_type)
        return ""

    if object_type.startswith("binary-"):
        return (meaning("inactive") or "inactive", meaning("active") or "active")
    if object_type.startswith("multi-state-"):
        numbers = [
            v
            for p in points
            for v in (*p.alarm, *p.normal, *p.fault, *(e.value for e in p.events))
            if isinstance(v, int)
        ]
        if numbers:
            return tuple(meaning(n) or f"state {n}" for n in range(1, max(numbers) + 1))
    return ()
