"""`gcmk-gateway reload`: for setups without systemd (`systemctl reload` sends SIGHUP instead).

Validates the file first, with the same load-and-validate as a start (gateway/config/source.py): every
problem is printed as `file:line: path: what` and the running gateway is not touched (exit 2). Then it asks
the gateway to reload (POST /-/reload on its operator endpoint, like Prometheus' `/-/reload`), which reads
its own site file again and answers what it did. Exit codes: 0 applied, 1 refused by the gateway (the
reasons are printed; it keeps running the old config), 2 invalid here, 3 no gateway answered.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.config.models import SiteConfig
from gateway.config.source import load_validated
from gateway.domain.errors import ConfigError

EXIT_APPLIED = 0
EXIT_REFUSED = 1
EXIT_INVALID = 2
EXIT_UNREACHABLE = 3


def request_reload(site: Path, overlays: Sequence[Path], *, url: str | None, timeout: float) -> int:
    try:
        loaded = load_validated(site, overlays)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{site}: not reloaded: the running gateway was not asked", file=sys.stderr)
        return EXIT_INVALID
    endpoint = url or _endpoint(loaded.config)
    if endpoint is None:
        print(f"{site}: metrics.port is 0 (chosen by the OS): give the gateway's address with --url", file=sys.stderr)
        return EXIT_INVALID
    request = urllib.request.Request(endpoint.rstrip("/") + "/-/reload", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = _parse(response.read())
    except urllib.error.HTTPError as exc:
        answer = _parse(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"no gateway answered at {endpoint}: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if answer is None:
        print(f"{endpoint}: not a gateway's answer to /-/reload", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not answer.get("applied"):
        print(f"reload refused: {answer.get('summary')}; the gateway keeps config {answer.get('config_hash')}")
        for problem in answer.get("problems") or ():
            print(f"  {problem}")
        return EXIT_REFUSED
    print(f"reload applied: config {answer.get('config_hash')}: {answer.get('summary')}")
    if answer.get("config_hash") != loaded.hash:
        print(
            f"warning: the gateway runs config {answer.get('config_hash')}, {site} is {loaded.hash}: it reloaded"
            " its own site file, which is not this one",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    return EXIT_APPLIED


def _endpoint(site: SiteConfig) -> str | None:
    if site.metrics.port == 0:
        return None
    host = site.metrics.listen
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{site.metrics.port}"


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "applied" in data else None
