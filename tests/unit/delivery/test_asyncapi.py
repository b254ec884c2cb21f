"""docs/asyncapi.yaml is the contract with the meldkamer: it must match what the code publishes.

`.venv/bin/python -m tests.unit.delivery.test_asyncapi --write` regenerates its components.schemas from the code.
"""

from __future__ import annotations

import copy
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
from ruamel.yaml import YAML

from gateway.commands.contract import COMMAND_CHANNELS, command_schemas
from gateway.delivery.contract import CHANNELS, HeartbeatDoc, PointStateDoc, StatusDoc, document_schemas
from gateway.delivery.journal import Journal, Journaled, StateDoc
from gateway.delivery.outbox import Outbox
from gateway.domain.event import event_json_schema
from gateway.domain.taxonomy import Category, EventState, EventType
from tests.support.delivery_harness import SITE, make_event
from tests.support.paths import REPO

DOC = REPO / "docs" / "asyncapi.yaml"


def load() -> Any:
    return YAML(typ="rt").load(DOC.read_text())


def plain(node: Any) -> Any:
    """ruamel's round-trip containers -> plain dicts and lists (for comparisons and jsonschema)."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node


def generated_schemas() -> dict[str, Any]:
    """components.schemas as the code defines them: the event schema's $defs become sibling components."""
    event = copy.deepcopy(event_json_schema())
    defs = event.pop("$defs", {})
    event.pop("$id", None)  # a $id would re-base the component refs inside the AsyncAPI document

    def rebase(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                    node[key] = "#/components/schemas/" + value.removeprefix("#/$defs/")
                else:
                    rebase(value)
        elif isinstance(node, list):
            for value in node:
                rebase(value)

    rebase(event)
    rebase(defs)
    docs = document_schemas()
    return {"Event": event, **defs, "StatusDoc": docs["status"], "HeartbeatDoc": docs["heartbeat"],
            "PointStateDoc": docs["state"], "ConfirmDoc": docs["confirm"], **command_schemas()}


def validator(doc: Any, schema: str) -> jsonschema.Draft202012Validator:
    root = {"$ref": f"#/components/schemas/{schema}", "components": plain(doc["components"])}
    return jsonschema.Draft202012Validator(root)


def address_pattern(address: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/+#]+", re.escape(address)) + "$")


def test_document_structure() -> None:
    doc = plain(load())
    assert doc["asyncapi"] == "3.0.0"
    assert doc["defaultContentType"] == "application/json"
    channels = doc["channels"]
    assert {name: ch["address"] for name, ch in channels.items()} == {**CHANNELS, **COMMAND_CHANNELS}
    for channel in channels.values():
        for param in re.findall(r"\{([a-z_]+)\}", channel["address"]):
            assert param in channel["parameters"]
    assert channels["events"]["parameters"]["category"]["enum"] == [c.value for c in Category]
    retained = {"events": False, "state": True, "status": True, "heartbeat": False, "confirm": False,
                "commands": False, "command-results": False}
    seen = set()
    for operation in doc["operations"].values():
        name = operation["channel"]["$ref"].removeprefix("#/channels/")
        assert operation["action"] == ("receive" if name in ("commands", "confirm") else "send"), name
        seen.add(name)
        assert operation["bindings"]["mqtt"]["qos"] == 1
        assert operation["bindings"]["mqtt"]["retain"] is retained[name]
        for message in operation["messages"]:
            _, _, channel, _, key = message["$ref"].split("/")
            assert key in doc["channels"][channel]["messages"]
    assert seen == set(CHANNELS) | set(COMMAND_CHANNELS)
    will = doc["servers"]["meldkamer"]["bindings"]["mqtt"]["lastWill"]
    assert will["topic"] == CHANNELS["status"] and will["retain"] is True


def test_every_topic_the_code_publishes_to_is_a_channel(tmp_path: Path) -> None:
    doc = plain(load())
    patterns = [address_pattern(ch["address"]) for ch in doc["channels"].values()]

    async def reader(start: int, limit: int) -> list[Journaled]:
        return []

    outbox = Outbox(SITE, reader)
    topics = []
    for category in Category:
        event = make_event(1, next(t for t in EventType if t.value and _cat(t) is category))
        journaled = Journaled(1, str(event.event_id), category.value, 3, event.with_seq(1).to_json(), 0.0, False)
        topics.append(outbox._event(journaled, urgent=False).topic)
    topics.append(outbox._state(StateDoc("pir-01", "normal", 0, datetime.now(UTC), 1, 1)).topic)
    from gateway.delivery.contract import heartbeat_topic, status_topic

    topics += [status_topic(SITE), heartbeat_topic(SITE)]
    for topic in topics:
        assert any(p.match(topic) for p in patterns), f"{topic} is not documented"


def _cat(event_type: EventType) -> Category:
    from gateway.domain.taxonomy import TYPES

    return TYPES[event_type].category


def test_payload_schemas_are_the_generated_ones() -> None:
    doc = plain(load())
    assert doc["components"]["schemas"] == generated_schemas(), (
        "docs/asyncapi.yaml is out of date: run .venv/bin/python -m tests.unit.delivery.test_asyncapi --write"
    )
    for message, schema in (("event", "Event"), ("status", "StatusDoc"), ("heartbeat", "HeartbeatDoc"),
                            ("pointState", "PointStateDoc")):
        assert doc["components"]["messages"][message]["payload"]["$ref"] == f"#/components/schemas/{schema}"


def test_sample_payloads_validate(tmp_path: Path) -> None:
    import json

    doc = load()
    events = validator(doc, "Event")
    samples = [make_event(1).with_seq(1), make_event(2, EventType.ACCESS_GRANTED, EventState.INFO).with_seq(2)]
    journal = Journal(tmp_path / "j.sqlite3", site=SITE, max_bytes=1 << 20, retention=1.0)
    samples.append(journal._shed_announcement(True, 0.0).with_seq(3))  # a site-level event without tenant
    for event in samples:
        events.validate(json.loads(event.to_json()))
        buffered = event.to_json().replace('"buffered":false', '"buffered":true', 1)
        events.validate(json.loads(buffered))
    now = datetime.now(UTC)
    for schema, sample in (
        ("StatusDoc", StatusDoc(site=SITE, status="online", reason="connected", version="1", config_hash="x",
                                started_at=now, at=now, last_seq=3)),
        ("StatusDoc", StatusDoc(site=SITE, status="offline", reason="connection lost", version="1",
                                config_hash="x", started_at=now)),
        ("HeartbeatDoc", HeartbeatDoc(site=SITE, at=now, interval=5.0, last_seq=3, journal_depth=0,
                                      oldest_undelivered_age=None, published_seq=0, confirmed_seq=0, devices_online=1,
                                      devices_total=2, inputs_ok=True,
                                      journal_ok=True, info_shed=0)),
        ("PointStateDoc", PointStateDoc(site=SITE, point_id="pir-01", condition="burglary", in_alarm=True, value=1,
                                        since=now, as_of_seq=3, version=2)),
    ):
        validator(doc, schema).validate(json.loads(sample.to_json()))
    broken = json.loads(samples[0].to_json())
    del broken["event_id"]
    assert not events.is_valid(broken)


def write() -> None:
    """Regenerates components.schemas in place, keeping the hand-written rest of the document."""
    yaml = YAML(typ="rt")
    yaml.width = 110
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(DOC.read_text())
    doc["components"]["schemas"] = generated_schemas()
    with DOC.open("w") as out:
        yaml.dump(doc, out)


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
