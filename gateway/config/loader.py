"""Load a site config from YAML into `SiteConfig`, naming the file, line and path of every problem.

Steps: parse with ruamel.yaml (round-trip, so every key and item keeps its line), flatten into plain data
plus a map path -> line, apply overlays (endpoint replacements from simulators or tests), expand `repeat:`
templates, validate with pydantic, then `cross_check`. Every problem, not just the first, is reported as
`file:line: path: what is wrong`.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import operator
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from gateway.config.messages import explain
from gateway.config.models import Loc, SiteConfig, cross_check
from gateway.config.protocol_checks import check_protocols
from gateway.config.todo import find_todos
from gateway.domain.errors import ConfigError

REPEATABLE = ("zones", "devices", "points")
MAX_REPEAT = 10_000
_ARITHMETIC = re.compile(r"^[\d\s+\-*%/()]+$")
_OPERATOR = re.compile(r"\d\s*[-+*%/]")
_OPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}

Overlay = Mapping[str, Any] | Path


@dataclass
class _Document:
    """Plain data of one YAML file with the line (1-based) of every path, and where expansions came from."""

    file: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    # expanded list item -> (index of its template in the file, the template's n)
    origins: dict[tuple[str, int], tuple[int, int | None]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    repeats: dict[tuple[int | None, str, str], int] = field(default_factory=dict)
    located: list[tuple[int | None, str, str, tuple[int | None, str, str]]] = field(default_factory=list)
    decided_later: list[Loc] = field(default_factory=list)  # where a TODO stands

    def line_of(self, loc: Loc) -> int | None:
        loc = self._source_loc(loc)
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None

    def _source_loc(self, loc: Loc) -> Loc:
        if len(loc) >= 2 and isinstance(loc[0], str) and isinstance(loc[1], int):
            origin = self.origins.get((loc[0], loc[1]))
            if origin is not None:
                return (loc[0], origin[0], *loc[2:])
        return loc

    def describe(self, loc: Loc) -> str:
        """`points[3] (repeat n=17).source.address`, in terms of the file as written."""
        text = ""
        for index, part in enumerate(loc):
            if isinstance(part, int):
                origin = self.origins.get((str(loc[0]), part)) if index == 1 else None
                if origin is None:
                    text += f"[{part}]"
                else:
                    text += f"[{origin[0]}]" if origin[1] is None else f"[{origin[0]}] (repeat n={origin[1]})"
            else:
                text += f".{part}" if text else str(part)
        return text or "(document)"

    def report(self, loc: Loc, message: str) -> None:
        """Record a problem; the same problem in many expansions of one template is reported once. What
        follows from a TODO left in place (an unknown tenant 'TODO') is not reported: the TODO is."""
        if any(loc[: len(todo)] == todo for todo in self.decided_later):
            return
        line = self.line_of(loc)
        described = self.describe(loc)
        template = re.sub(r" \(repeat n=\d+\)", "", described)
        # expansions of one template differ only in their numbers ("address 65536", "65537"): said once
        key = (line, template, message if template == described else re.sub(r"\d+", "#", message))
        if key in self.repeats:
            if template != described:
                self.repeats[key] += 1
            return  # the same problem twice (e.g. both members of a union) is said once
        self.repeats[key] = 0
        self.located.append((line, described, message, key))

    @property
    def problems_text(self) -> list[str]:
        out = list(self.problems)
        for line, described, message, key in sorted(self.located, key=lambda o: o[0] or 0):
            more = self.repeats[key]
            path = described.replace(")", f" and {more} more)", 1) if more else described
            where = f"{self.file}:{line}" if line is not None else self.file
            out.append(f"{where}: {path}: {message}")
        return out


def load_site(path: Path | str, overlays: Sequence[Overlay] = ()) -> SiteConfig:
    """Load and validate one site config; raises ConfigError listing every problem."""
    path = Path(path)
    doc = _parse(path)
    _expand_repeats(doc)  # first, so that an overlay can name a device written with repeat:
    if not doc.located:
        for overlay in overlays:
            _apply_overlay(doc, overlay)
    if doc.problems or doc.located:
        raise ConfigError(doc.problems_text)
    for loc, message in find_todos(doc.data):
        doc.report(loc, message)
        doc.decided_later.append(loc)
    try:
        site = SiteConfig.model_validate(doc.data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            loc, message = _explain(doc.data, error)
            doc.report(loc, message)
        raise ConfigError(doc.problems_text) from None
    for loc, message in [*cross_check(site), *check_protocols(site)]:
        doc.report(loc, message)
    if doc.located:
        raise ConfigError(doc.problems_text)
    return site


def site_json_schema() -> dict[str, Any]:
    """JSON Schema of the file as written (for editors): the models' schema, plus `repeat:` templates,
    whose fields hold placeholders and arithmetic and so are only checked once expanded."""
    schema = SiteConfig.model_json_schema(by_alias=True)
    schema["title"] = "GCMK gateway site config"
    template = {
        "type": "object",
        "required": ["repeat"],
        "properties": {
            "repeat": {
                "type": "object",
                "properties": {"count": {"type": "integer", "minimum": 1, "maximum": MAX_REPEAT},
                               "start": {"type": "integer", "minimum": 0}},
                "required": ["count"],
                "additionalProperties": False,
            }
        },
        "description": "expanded into `count` entries; {n} and {i} are substituted in every string",
    }
    for section in REPEATABLE:
        prop = schema["properties"][section]
        prop["items"] = {"anyOf": [prop["items"], template]}
    return schema


def config_hash(path: Path | str, overlays: Sequence[Path | str | Overlay] = ()) -> str:
    """Short hash of the config as deployed, shown in the status document and a metric: the site file's bytes
    (alone: the first 16 hex digits of its `sha256sum`), then each overlay's bytes (a dict overlay, as in tests:
    its canonical JSON), so that a change to an overlay (an endpoint, a port) is a new config too."""
    digest = hashlib.sha256(Path(path).read_bytes())
    for overlay in overlays:
        digest.update(b"\0overlay\0")
        if isinstance(overlay, Path | str):
            digest.update(Path(overlay).read_bytes())
        else:
            digest.update(json.dumps(overlay, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


# --- parsing ---------------------------------------------------------------------------------------------


def _parse(path: Path) -> _Document:
    doc = _Document(file=str(path), data=None)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        doc.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        raise ConfigError(doc.problems_text) from None
    except UnicodeDecodeError:
        doc.problems.append(f"{path}: not UTF-8 text")
        raise ConfigError(doc.problems_text) from None
    try:
        tree = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        doc.problems.append(f"{path}{line}: YAML syntax error: {what}")
        raise ConfigError(doc.problems_text) from None
    except YAMLError as exc:
        doc.problems.append(f"{path}: YAML error: {exc}")
        raise ConfigError(doc.problems_text) from None
    if not isinstance(tree, CommentedMap):
        doc.problems.append(f"{path}:1: (document): a site config is a mapping of sections (site:, devices:, ...)")
        raise ConfigError(doc.problems_text)
    doc.data = _plain(tree, (), doc.lines)
    return doc


def _plain(node: Any, loc: Loc, lines: dict[Loc, int]) -> Any:
    """ruamel's round-trip nodes -> dicts, lists and scalars, recording the 1-based line of each path."""
    if isinstance(node, CommentedMap):
        if not loc:
            lines[loc] = 1
        out: dict[Any, Any] = {}
        for key, value in node.items():
            child: Loc = (*loc, str(key))
            lines[child] = node.lc.key(key)[0] + 1
            out[str(key)] = _plain(value, child, lines)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            child = (*loc, index)
            lines[child] = node.lc.item(index)[0] + 1
            items.append(_plain(value, child, lines))
        return items
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


# --- overlays --------------------------------------------------------------------------------------------


def load_overlay(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read overlay: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: an overlay is a mapping (devices:, bacnet:, mqtt:, ...)"])
    return data


def _apply_overlay(doc: _Document, overlay: Overlay) -> None:
    data = load_overlay(overlay) if isinstance(overlay, Path) else dict(overlay)
    name = str(overlay) if isinstance(overlay, Path) else "overlay"
    devices = data.pop("devices", None) or {}
    if not isinstance(devices, Mapping):
        doc.problems.append(f"{name}: devices: must map device ids to replacements")
        return
    by_id = {d.get("id"): d for d in doc.data.get("devices", []) if isinstance(d, dict)}
    for device_id, replacement in devices.items():
        target = by_id.get(device_id)
        if target is None:
            doc.problems.append(f"{name}: devices.{device_id}: no such device in {doc.file}")
        elif not isinstance(replacement, Mapping):
            doc.problems.append(f"{name}: devices.{device_id}: must be a mapping of keys to replace")
        else:
            _merge(target, replacement)
    _merge(doc.data, data)


def _merge(target: dict[str, Any], changes: Mapping[str, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


# --- repeat: expansion -----------------------------------------------------------------------------------


def _expand_repeats(doc: _Document) -> None:
    for section in REPEATABLE:
        items = doc.data.get(section)
        if not isinstance(items, list):
            continue
        expanded: list[Any] = []
        for index, item in enumerate(items):
            if not (isinstance(item, dict) and "repeat" in item):
                doc.origins[(section, len(expanded))] = (index, None)
                expanded.append(item)
                continue
            template = {k: v for k, v in item.items() if k != "repeat"}
            numbers = _repeat_numbers(doc, (section, index, "repeat"), item["repeat"])
            for i, n in enumerate(numbers):
                try:
                    value = _substitute(template, {"n": n, "i": i})
                except _TemplateError as exc:
                    doc.report((section, index, *exc.loc), f"in repeat: {exc}")
                    break
                doc.origins[(section, len(expanded))] = (index, n)
                expanded.append(value)
        doc.data[section] = expanded


def _repeat_numbers(doc: _Document, loc: Loc, spec: Any) -> range:
    if not isinstance(spec, dict) or set(spec) - {"count", "start"} or "count" not in spec:
        doc.report(loc, "repeat takes {count: N, start: S} (start defaults to 1)")
        return range(0)
    count, start = spec["count"], spec.get("start", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_REPEAT:
        doc.report((*loc, "count"), f"count must be a whole number from 1 to {MAX_REPEAT}")
        return range(0)
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        doc.report((*loc, "start"), "start must be a whole number >= 0")
        return range(0)
    return range(start, start + count)


class _TemplateError(ValueError):
    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _substitute(value: Any, names: dict[str, int], loc: Loc = ()) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, names, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names, (*loc, i)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "{" not in value:
        return value
    try:
        text = value.format_map(names)
    except (KeyError, IndexError) as exc:
        raise _TemplateError(loc, f"unknown placeholder {exc} in '{value}' (use {{n}} or {{i}})") from None
    except ValueError as exc:
        raise _TemplateError(loc, f"bad placeholder in '{value}': {exc}") from None
    # "{n}" alone stays a string (pydantic reads "7" as 7 where a number is wanted, "7" where a name is);
    # "100 + {i} // 16" is computed.
    if _ARITHMETIC.match(text) and _OPERATOR.search(text):
        try:
            return _evaluate(ast.parse(text.strip(), mode="eval").body)
        except (SyntaxError, ValueError, ZeroDivisionError) as exc:
            raise _TemplateError(loc, f"cannot compute '{value}' -> '{text}': {exc}") from None
    return text


def _evaluate(node: ast.expr) -> int:
    """Whole-number arithmetic only: + - * // % and parentheses."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("only whole numbers with + - * // % are allowed")


# --- turning pydantic errors into plain words ------------------------------------------------------------


def _explain(data: Any, error: ErrorDetails) -> tuple[Loc, str]:
    loc, model = _clean_loc(data, tuple(error["loc"]))
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden" and loc:
        key = str(loc[-1])
        allowed = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else (f"; allowed: {', '.join(allowed)}" if allowed else "")
        return loc, f"unknown key '{key}'{hint}"
    if kind == "missing" and loc:
        return loc, f"missing required key '{loc[-1]}'"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        return loc, f"protocol must be one of {ctx.get('expected_tags', 'bacnet, modbus')}"
    if kind == "union_tag_not_found":
        return loc, "missing required key 'protocol' (bacnet or modbus)"
    if kind in ("value_error", "assertion_error"):
        return loc, message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if loc and loc[-1] in ("int", "str") and _is_raw_value_list(loc):
        loc = loc[:-1]  # the members of RawValue (int | str): one message for both
        value = _node_at(data, loc)
        return loc, f"a raw value is a whole number (Modbus, BACnet state numbers) or a name (BACnet), not '{value}'"
    field = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    value = _node_at(data, loc)
    parent = _node_at(data, loc[:-1]) if loc else None
    if len(loc) >= 3 and loc[-1] == "[key]":  # a mapping's key is wrong: name the key, point at its line
        loc = loc[:-1]
        field, value, parent = str(loc[-2]), loc[-1], _node_at(data, loc[:-2])
        model = _clean_loc(data, loc[:-1])[1]
    explained = explain(kind, dict(error.get("ctx") or {}), value, model.__name__ if model else "", field, parent)
    return loc, explained if explained is not None else message


def _is_raw_value_list(loc: Loc) -> bool:
    names = {"alarm", "normal", "fault", "other_alarms", "value", "restore"}
    return any(part in names for part in loc if isinstance(part, str))


def _node_at(data: Any, loc: Loc) -> Any:
    node = data
    for part in loc:
        found = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if not found:
            return None
        node = node[part]
    return node


def _clean_loc(data: Any, loc: Loc) -> tuple[Loc, type[BaseModel] | None]:
    """Drop pydantic's union tags from a location and find the model that owns its last key."""
    clean: list[str | int] = []
    node: Any = data
    model: type[BaseModel] | None = SiteConfig
    annotation: Any = SiteConfig
    for part in loc:
        if isinstance(node, dict) and part in node:
            clean.append(part)
            owner = _model_of(annotation, node)
            model = owner
            annotation = owner.model_fields[str(part)].annotation if owner and part in owner.model_fields else None
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            clean.append(part)
            annotation = _item_type(annotation)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and node.get("protocol") == part:
            continue  # the discriminator tag pydantic inserts for a union member
        else:
            clean.append(part)
            model = _model_of(annotation, node) if isinstance(node, dict) else model
            node = None
            annotation = None
    return tuple(clean), model


def _model_of(annotation: Any, node: Any) -> type[BaseModel] | None:
    for candidate in _flatten(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            protocol = candidate.model_fields.get("protocol")
            if (
                protocol is None
                or not isinstance(node, dict)
                or node.get("protocol") in typing.get_args(protocol.annotation)
            ):
                return candidate
    return None


def _item_type(annotation: Any) -> Any:
    for candidate in _flatten(annotation):
        if typing.get_origin(candidate) is list:
            return typing.get_args(candidate)[0]
    return None


def _flatten(annotation: Any) -> list[Any]:
    if annotation is None:
        return []
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [c for arg in typing.get_args(annotation) for c in _flatten(arg)]
    return [annotation]
