"""The lower bounds in pyproject.toml are the versions `.ci/run` tests (ci/lowest-constraints.txt): every
runtime dependency has an upper bound and a lower bound, and the constraints file pins exactly those."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.paths import REPO


def _lower_bound(req: Requirement) -> str | None:
    lows = [spec.version for spec in req.specifier if spec.operator in (">=", "==")]
    return lows[0] if len(lows) == 1 else None


def test_every_runtime_dependency_has_a_tested_lower_bound_and_an_upper_bound() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    pinned = {}
    for line in (REPO / "ci" / "lowest-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[canonicalize_name(name)] = version.strip()
    for req in requirements:
        low = _lower_bound(req)
        assert low is not None, f"{req}: needs exactly one lower bound (>=)"
        pin = pinned.get(canonicalize_name(req.name))
        assert pin is not None and Version(pin) == Version(low), f"{req}: ci/lowest-constraints.txt must pin {low}"
        if canonicalize_name(req.name) != "tzdata":  # the time zone database only ever grows
            assert any(spec.operator == "<" for spec in req.specifier), f"{req}: needs an upper bound"
    # test tools whose verdict depends on their version (hadolint's rules) may be pinned too, at their lower bound
    tools = {canonicalize_name(r.name): r for r in map(Requirement, project["optional-dependencies"]["test"])}
    for name in set(pinned) & set(tools):
        low = _lower_bound(tools[name])
        assert low is not None and Version(pinned[name]) == Version(low), f"{tools[name]}: pin {low}"
    runtime = {canonicalize_name(r.name) for r in requirements}
    assert set(pinned) - set(tools) == runtime, "no stale pins"
