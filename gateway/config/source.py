"""The one way a site config file becomes a running config: load, overlay, validate completely, hash.

`gcmk-gateway run`, the SIGHUP reload and `gcmk-gateway reload` all call `load_validated`, so a reload accepts
exactly what a start would (and a validation made stricter later applies to all three at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.loader import Overlay, config_hash, load_overlay, load_site
from gateway.config.models import SiteConfig
from gateway.domain.errors import ConfigError


@dataclass(frozen=True)
class LoadedSite:
    """A validated site config and the hash of its files as deployed, overlays included (status, metric)."""

    config: SiteConfig
    hash: str


@dataclass(frozen=True)
class SiteSource:
    """Where a gateway's config comes from: the site file and its overlays (paths, or dicts in tests)."""

    site: Path
    overlays: Sequence[Path | dict[str, object]] = field(default_factory=tuple)

    def load(self) -> LoadedSite:
        return load_validated(self.site, self.overlays)


def load_validated(site: Path | str, overlays: Sequence[Path | str | dict[str, object]] = ()) -> LoadedSite:
    """Load and fully validate a site config with its overlays; raises ConfigError with every problem
    (`file:line: path: what`). Nothing else is touched."""
    site = Path(site)
    loaded: list[Overlay] = [load_overlay(o) if isinstance(o, Path | str) else o for o in overlays]
    config = load_site(site, loaded)
    try:
        digest = config_hash(site, overlays)
    except OSError as exc:  # replaced or removed between the two reads
        raise ConfigError([f"{site}: cannot read: {exc.strerror or exc}"]) from None
    return LoadedSite(config, digest)
