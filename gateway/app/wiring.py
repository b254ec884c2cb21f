"""The composition root: the one place that builds a building's gateway process from a validated SiteConfig.

Every component gets its collaborators here, as constructor arguments (journal, publisher, command store,
adapters, normaliser); no component builds another one itself, so tests build any of them with fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from gateway import __version__
from gateway.app.reload import Reloader
from gateway.app.service import Gateway, Inputs, Supervisor
from gateway.commands.processor import CommandProcessor
from gateway.commands.store import CommandStore, store_path
from gateway.config.models import BacnetDevice, ModbusDevice, SiteConfig
from gateway.config.source import SiteSource
from gateway.core.normaliser import Normaliser
from gateway.core.ports import Adapter, EventSink, Replayer
from gateway.core.stdout_sink import StdoutSink
from gateway.delivery.dc09_path import Dc09Path, build_paths
from gateway.delivery.publisher import Publisher
from gateway.delivery.sink import DeliverySink, open_journal
from gateway.delivery.stats import DeliveryStats
from gateway.domain.event import utcnow
from gateway.ops.sdnotify import SystemdNotifier

SinkKind = Literal["mqtt", "stdout"]


def build_adapters(site: SiteConfig) -> list[Adapter]:
    """One adapter per protocol present in the site config."""
    adapters: list[Adapter] = []
    if any(isinstance(d, ModbusDevice) for d in site.devices):
        from adapters.modbus import ModbusAdapter

        adapters.append(ModbusAdapter(site))
    if any(isinstance(d, BacnetDevice) for d in site.devices):
        from adapters.bacnet import BacnetAdapter

        adapters.append(BacnetAdapter(site))
    return adapters


def build_commands(site: SiteConfig, adapters: Sequence[Adapter], sink: EventSink) -> CommandProcessor | None:
    """Commands from the meldkamer when the site config enables them; and, with meldkamer confirmation, the
    receivers' replay requests (a read-only gateway serves those too: they touch no device). A commissioning
    run (stdout sink) has no meldkamer link, so it takes neither."""
    replays = site.delivery.confirm == "meldkamer" and isinstance(sink, Replayer)
    if (not site.commands.enabled and not replays) or isinstance(sink, StdoutSink):
        return None
    store = CommandStore(store_path(site), retention=site.journal.retention)
    replayer = sink if isinstance(sink, Replayer) else None
    return CommandProcessor(site, adapters, sink, store=store, replayer=replayer)


def build_gateway(
    site: SiteConfig,
    *,
    sink: SinkKind | EventSink = "mqtt",
    config_hash: str = "",
    notifier: SystemdNotifier | None = None,
    source: SiteSource | None = None,
) -> Gateway:
    """The whole process of one building: `mqtt` (journal + delivery), `stdout` (commissioning), or an
    EventSink of the caller's (tests). `notifier`: systemd's notify socket when run as a Type=notify unit.
    `source`: the site file (and overlays) the config came from: SIGHUP and POST /-/reload read it again."""
    normaliser = Normaliser(site, epoch=utcnow())
    adapters = build_adapters(site)
    supervisor = Supervisor()
    inputs = Inputs(normaliser, supervisor, adapters)
    event_sink: EventSink
    delivery: DeliveryStats | None = None
    paths: list[Dc09Path] = []
    if sink == "stdout":
        event_sink = StdoutSink()
    elif sink == "mqtt":
        delivery = DeliveryStats()
        event_sink = DeliverySink(
            site,
            config_hash=config_hash,
            version=__version__,
            journal=open_journal(site),
            publisher=Publisher,
            stats=delivery,
            devices=inputs.devices_online,
            inputs_ok=inputs.ok,
        )
        paths = build_paths(site, event_sink)  # DC-09 receivers: further paths on the sink's journal
    else:
        event_sink = sink
    gateway = Gateway(
        site,
        event_sink,
        adapters,
        normaliser=normaliser,
        commands=build_commands(site, adapters, event_sink),
        supervisor=supervisor,
        delivery=delivery,
        config_hash=config_hash,
        paths=paths,
        notifier=notifier,
    )
    if source is not None:
        gateway.reloader = Reloader(gateway, source)
    return gateway
