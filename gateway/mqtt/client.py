"""The one place that builds MQTT clients: publisher, command processor and tools all connect through here.

What every MQTT link of the gateway shares: TLS that verifies the broker (plain TCP only with
`insecure: true`, never as a fallback), the password from a file or the environment (never inline),
TCP_NODELAY, a persistent session, the MQTT 5 probe with its 3.1.1 fallback, and jittered exponential
backoff between attempts. The TLS files and the password are read again for every connection
(`ClientFactory.credentials`), so rotating them on disk takes effect at the next session (a reload asks for
one at once): a file that cannot be read then is a `CredentialsUnreadable`, which the caller counts and
retries with backoff like a refused connection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config.models import MqttConfig
from gateway.domain.errors import ConfigError, DeliveryError

BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
PROBE_TIMEOUT = 3.0  # protocol "auto": how long an MQTT 5 CONNECT may go unanswered before trying 3.1.1
# paho does not set TCP_NODELAY: Nagle + delayed ACK then add ~40 ms per hop whenever a small packet waits
# behind an unacknowledged one (bench/bench_commands.py). The broker needs `set_tcp_nodelay true` as well.
NODELAY: tuple[tuple[int, int, int], ...] = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class CredentialsUnreadable(DeliveryError):
    """The TLS files or the password could not be read for a new connection (the message names which and why,
    never the secret); `problems` as a ConfigError gives them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def tls_context(mqtt: MqttConfig) -> ssl.SSLContext | None:
    """Verification on (system CAs or tls.ca_file); client certificate for mTLS. None only for insecure."""
    if not mqtt.uses_tls:
        return None
    ca = str(mqtt.tls.ca_file) if mqtt.tls.ca_file is not None else None
    try:
        context = ssl.create_default_context(cafile=ca)
        if mqtt.tls.cert_file is not None and mqtt.tls.key_file is not None:
            context.load_cert_chain(str(mqtt.tls.cert_file), str(mqtt.tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"mqtt.tls: cannot load certificates: {exc}"]) from exc
    return context


def password(mqtt: MqttConfig) -> str | None:
    if mqtt.password_file is not None:
        try:
            return mqtt.password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError([f"mqtt.password_file: {exc}"]) from exc
    if mqtt.password_env is not None:
        value = os.environ.get(mqtt.password_env)
        if value is None:
            raise ConfigError([f"mqtt.password_env: environment variable {mqtt.password_env} is not set"])
        return value
    return None


def credentials_fingerprint(mqtt: MqttConfig) -> str:
    """A digest of what a connection would authenticate with now: the MQTT settings and the bytes of the TLS
    and password files (and the password variable's value). Equal digests: renewing a session would change
    nothing. Raises OSError when a file cannot be read. Never logged: it is derived from secrets."""
    digest = hashlib.sha256(mqtt.model_dump_json().encode())
    for path in (mqtt.tls.ca_file, mqtt.tls.cert_file, mqtt.tls.key_file, mqtt.password_file):
        digest.update(b"\0" + (Path(path).read_bytes() if path is not None else b"-"))
    if mqtt.password_env is not None:
        digest.update(b"\0" + os.environ.get(mqtt.password_env, "").encode())
    return digest.hexdigest()


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` consecutive failed attempts: exponential, capped, jittered."""
    return float(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(failures, 16)) * random.uniform(0.5, 1.0))


def refuses_protocol(exc: BaseException) -> bool:
    """A 3.1.1-only broker answers an MQTT 5 CONNECT with 'unacceptable protocol version' (3.1.1 code 1, MQTT 5
    code 132), or (amqtt, which cannot parse an MQTT 5 will) drops it without any CONNACK: the TCP connection
    worked, MQTT 5 did not."""
    if isinstance(exc, MqttConnectError | aiomqtt.MqttCodeError):
        return getattr(exc.rc, "value", exc.rc) in (1, 132)
    return isinstance(exc, aiomqtt.MqttError) and str(exc) == "Operation timed out"


def first_protocol(mqtt: MqttConfig) -> aiomqtt.ProtocolVersion:
    """The protocol of the first attempt: the configured one, or MQTT 5 for `auto` (then probed)."""
    return aiomqtt.ProtocolVersion.V311 if mqtt.protocol == "3.1.1" else aiomqtt.ProtocolVersion.V5


@dataclass(frozen=True)
class Credentials:
    """What one connection authenticates with, read from disk (or the environment) for that connection."""

    tls: ssl.SSLContext | None
    password: str | None = field(repr=False)  # never in a repr, a log line or a traceback


@dataclass(frozen=True)
class ClientFactory:
    """Builds MQTT connections for one site's broker. `of` reads the credentials once, so a missing password
    file or a bad certificate is a config error at start; every connection then reads them again
    (`credentials`), so a rotated certificate, CA or password is used from the next session on."""

    mqtt: MqttConfig

    @classmethod
    def of(cls, mqtt: MqttConfig) -> ClientFactory:
        factory = cls(mqtt)
        factory.check()
        return factory

    def check(self) -> None:
        """Raises ConfigError (every problem) when the credentials cannot be read now."""
        tls_context(self.mqtt)
        password(self.mqtt)

    def credentials(self) -> Credentials:
        """The TLS context and password as they are on disk now; CredentialsUnreadable if they cannot be read."""
        try:
            return Credentials(tls_context(self.mqtt), password(self.mqtt))
        except ConfigError as exc:
            raise CredentialsUnreadable(exc.problems) from None

    @property
    def timeout(self) -> float:
        """Seconds an MQTT operation (CONNECT, PUBLISH, SUBSCRIBE) may take before the session counts as dead."""
        return max(5.0, 2 * self.mqtt.keepalive)

    def client(
        self,
        identifier: str,
        protocol: aiomqtt.ProtocolVersion,
        *,
        session_expiry: int,
        probe: bool = False,
        logger: str = "gateway.mqtt",
        **options: Any,
    ) -> aiomqtt.Client:
        """A client with a persistent session (MQTT 5: clean_start false + session expiry; 3.1.1: clean_session
        false). `probe`: a first MQTT 5 attempt under protocol auto, answered quickly or taken as 'not MQTT 5'.
        `options` go to aiomqtt.Client as they are (will, max_inflight_messages, ...). Reads the credentials
        (raises CredentialsUnreadable)."""
        credentials = self.credentials()
        session: dict[str, Any]
        if protocol == aiomqtt.ProtocolVersion.V5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry
            session = {"clean_start": False, "properties": props}
        else:
            session = {"clean_session": False}
        return aiomqtt.Client(
            self.mqtt.host,
            self.mqtt.port,
            identifier=identifier,
            username=self.mqtt.username,
            password=credentials.password,
            protocol=protocol,
            keepalive=max(1, round(self.mqtt.keepalive)),
            timeout=min(self.timeout, PROBE_TIMEOUT) if probe else self.timeout,
            tls_context=credentials.tls,
            socket_options=NODELAY,
            logger=logging.getLogger(logger),
            **session,
            **options,
        )
