"""The command channels of docs/asyncapi.yaml must match the code (tests/test_asyncapi.py checks the rest;
`.venv/bin/python -m tests.test_asyncapi --write` regenerates every schema from the code)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from ruamel.yaml import YAML

from gateway.commands.contract import COMMAND_CHANNELS, CommandDoc, CommandResultDoc, command_schemas
from tests.support.paths import REPO

DOC = REPO / "docs" / "asyncapi.yaml"


def load() -> Any:
    return json.loads(json.dumps(YAML(typ="safe").load(DOC.read_text())))


def validator(doc: Any, schema: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{schema}", "components": doc["components"]})


def test_channels_and_operations() -> None:
    doc = load()
    channels = {name: ch["address"] for name, ch in doc["channels"].items() if name in COMMAND_CHANNELS}
    assert channels == COMMAND_CHANNELS
    actions = {op["channel"]["$ref"].removeprefix("#/channels/"): op for op in doc["operations"].values()}
    assert actions["commands"]["action"] == "receive" and actions["command-results"]["action"] == "send"
    for name in COMMAND_CHANNELS:
        binding = actions[name]["bindings"]["mqtt"]
        assert binding["qos"] == 1 and binding["retain"] is False


def test_schemas_are_the_generated_ones() -> None:
    schemas = load()["components"]["schemas"]
    assert {k: schemas[k] for k in command_schemas()} == command_schemas(), (
        "docs/asyncapi.yaml is out of date: run .venv/bin/python -m tests.test_asyncapi --write"
    )


def test_samples_validate() -> None:
    doc = load()
    now = datetime.now(UTC)
    command = CommandDoc(command_id="mk-1", point_id="door-1", action="pulse", issued_at=now,
                         expires_at=now + timedelta(seconds=30), operator="op-7", duration=3)
    validator(doc, "CommandDoc").validate(json.loads(command.model_dump_json(by_alias=True, exclude_none=True)))
    results = validator(doc, "CommandResultDoc")
    for result in (
        CommandResultDoc(site="s", command_id="mk-1", point_id="door-1", action="pulse", status="executed",
                         detail="ok", received_at=now, at=now, audit_seq=12),
        CommandResultDoc(site="s", status="refused", reason="malformed", detail="not JSON", received_at=now, at=now),
    ):
        results.validate(json.loads(result.to_json()))
    assert not validator(doc, "CommandDoc").is_valid({"command_id": "x"})
