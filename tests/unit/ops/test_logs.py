"""`configure_logging`: JSON lines or a console; secrets kept out of both, also out of tracebacks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import structlog

from gateway.config.models import MqttConfig
from gateway.mqtt.client import ClientFactory
from tests.support.logs import configured_logging, json_lines

SECRET = "Geheim-Wachtwoord-42"


def _fail_with(factory: ClientFactory) -> None:
    raise OSError(f"cannot reach {factory.mqtt.host}")


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
def test_a_logged_traceback_shows_no_local_variables_and_so_no_password(tmp_path: Path, as_json: bool) -> None:
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    mqtt = MqttConfig(url="mqtt://127.0.0.1:1883", insecure=True, username="gw", password_file=secret_file)
    with configured_logging(as_json=as_json) as stream:
        factory = ClientFactory.of(mqtt)
        credentials = factory.credentials()  # holds the password it read: a local of the frames below
        assert credentials.password == SECRET
        try:
            _fail_with(factory)
        except OSError as exc:
            structlog.get_logger("test").error("component failed; stopping the gateway", exc_info=exc)
            logging.getLogger("some.library").exception("library failed")
    output = stream.getvalue()
    assert SECRET not in output
    assert "OSError: cannot reach 127.0.0.1" in output, "the traceback itself is logged"
    assert "_fail_with" in output


def test_keys_that_name_a_secret_are_blanked() -> None:
    with configured_logging(as_json=True) as stream:
        structlog.get_logger("test").info("oops", password=SECRET, mqtt_password=SECRET, api_token=SECRET, user="gw")
    (line,) = json_lines(stream)
    assert (line["password"], line["mqtt_password"], line["api_token"], line["user"]) == ("***", "***", "***", "gw")
