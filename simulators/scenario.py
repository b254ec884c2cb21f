"""Scenarios: timed steps played against simulated buildings, each with the events it must cause.

A scenario file (`simulators/scenarios/*.yaml`) lists steps at offsets from the start. Every step knows
which events the meldkamer must receive because of it (`expected`), so a demo or test can check that
each one arrived: raise -> alarm, clear -> restore, silence -> comm_loss alarm, resume -> comm_loss
restore, burst -> one event per occurrence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from gateway.config.types import Duration
from gateway.domain.errors import ConfigError
from gateway.domain.values import RawValue
from simulators.control import Fault, SiteSimulatorProtocol

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


@dataclass(frozen=True, slots=True)
class Expected:
    site: str
    point_id: str  # for comm_loss: the device id
    state: str  # alarm, restore, info
    count: int = 1


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: Duration = Field(description="offset from the scenario start")
    site: str | None = Field(None, description="building; may be omitted when played against one building")
    action: Literal["raise", "clear", "set", "silence", "resume", "burst"]
    point: str | None = None
    device: str | None = None
    value: RawValue | None = Field(None, description="set: the raw value; burst: the occurrence value")
    idle: RawValue | None = Field(None, description="burst: the value between occurrences")
    count: int = Field(1, ge=1, le=1000, description="burst: number of occurrences")
    every: Duration = Field(0.5, gt=0, description="burst: time between occurrences")
    expect_state: Literal["alarm", "restore", "info"] | None = Field(
        None, description="burst/set: the state of the events expected (burst default info)"
    )
    note: str = ""

    @model_validator(mode="after")
    def _targets(self) -> Step:
        if self.action in ("silence", "resume"):
            if self.device is None or self.point is not None:
                raise ValueError(f"{self.action} takes a device, not a point")
        elif self.point is None or self.device is not None:
            raise ValueError(f"{self.action} takes a point, not a device")
        if self.action in ("set", "burst") and self.value is None:
            raise ValueError(f"{self.action} needs a value")
        if self.action == "burst" and self.idle is None:
            raise ValueError("burst needs an idle value to return to between occurrences")
        return self

    def expected(self, site: str) -> Expected | None:
        match self.action:
            case "raise":
                return Expected(site, str(self.point), "alarm")
            case "clear":
                return Expected(site, str(self.point), "restore")
            case "silence":
                return Expected(site, str(self.device), "alarm")
            case "resume":
                return Expected(site, str(self.device), "restore")
            case "burst":
                return Expected(site, str(self.point), self.expect_state or "info", self.count)
            case _:
                return Expected(site, str(self.point), self.expect_state) if self.expect_state else None


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    steps: list[Step] = Field(min_length=1)

    @property
    def duration(self) -> float:
        return max(s.at + (s.count * s.every if s.action == "burst" else 0) for s in self.steps)

    def for_site(self, site: str) -> Scenario:
        """The steps one building plays: those naming it, and those naming no building."""
        return self.model_copy(update={"steps": [s for s in self.steps if s.site in (None, site)]})

    def expected(self, default_site: str | None = None) -> list[Expected]:
        out = []
        for step in self.steps:
            site = step.site or default_site
            if site is None:
                raise ConfigError([f"scenario {self.name}: step at {step.at:g}s names no site"])
            expected = step.expected(site)
            if expected is not None:
                out.append(expected)
        return out


def load_scenario(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
        return Scenario.model_validate(data)
    except (OSError, YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read scenario: {exc}"]) from None
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError([f"{path}: {line}" for line in str(exc).splitlines()]) from None


async def play(
    scenario: Scenario, simulators: Mapping[str, SiteSimulatorProtocol], *, default_site: str | None = None
) -> None:
    """Play every step at its time; steps at the same time run in file order."""
    start = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for step in sorted(scenario.steps, key=lambda s: s.at):
            delay = start + step.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # a schedule, not synchronisation
            sim = simulators[step.site or str(default_site)]
            if step.action == "burst":
                tg.create_task(_burst(sim, step))
            else:
                await _do(sim, step)


async def _do(sim: SiteSimulatorProtocol, step: Step) -> None:
    match step.action:
        case "raise":
            await sim.raise_alarm(str(step.point))
        case "clear":
            await sim.clear_alarm(str(step.point))
        case "set":
            assert step.value is not None
            await sim.set_raw(str(step.point), step.value)
        case "silence":
            await sim.inject(str(step.device), Fault("silent"))
        case "resume":
            await sim.inject(str(step.device), Fault("none"))


async def _burst(sim: SiteSimulatorProtocol, step: Step) -> None:
    assert step.value is not None and step.idle is not None
    for _ in range(step.count):
        await sim.set_raw(str(step.point), step.value)
        await asyncio.sleep(step.every / 2)
        await sim.set_raw(str(step.point), step.idle)
        await asyncio.sleep(step.every / 2)
