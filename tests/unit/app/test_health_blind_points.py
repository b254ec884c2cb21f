"""/readyz with blind points: the gateway stays ready (the other points report) but says which device is half blind."""

from __future__ import annotations

from gateway.app.service import Gateway
from gateway.core.normaliser import Normaliser
from gateway.core.ports import Quality
from gateway.testing import CollectingSink
from tests.support.readings import SITE, T0
from tests.support.readings import read as _read


def test_health_stays_ready_but_names_the_half_blind_device() -> None:
    gateway = Gateway(SITE, CollectingSink(), [], normaliser=Normaliser(SITE, epoch=T0))
    gateway.started.set()
    assert gateway.health().detail == "running"
    for point in ("pir-01", "pir-02"):
        gateway.normaliser.process(_read(point, None, 0, Quality.UNAVAILABLE, text="no such object"))
    report = gateway.health()
    assert report.ok
    assert report.detail == "running; points unavailable (the device says they do not exist): panel-1: 2"
    gateway.normaliser.process(_read("pir-01", 0, 1))
    gateway.normaliser.process(_read("pir-02", 0, 1))
    assert gateway.health().detail == "running"
