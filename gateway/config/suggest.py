"""Suggestions ("did you mean ...?") for every enumerated value in the site config, from one place."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(value: object, choices: Iterable[str]) -> str | None:
    """The choice an installer most likely meant: same spelling apart from case and '_'/'-', else the
    difflib nearest, else the only choice that starts with what was written."""
    options = list(dict.fromkeys(choices))
    text = str(value).strip()
    folded = text.lower().replace("_", "-").replace(" ", "-")
    for option in options:
        if option.lower().replace("_", "-") == folded:
            return option
    near = difflib.get_close_matches(text, options, n=1, cutoff=0.6)
    if not near and folded != text:
        near = difflib.get_close_matches(folded, options, n=1, cutoff=0.6)
    if near:
        return near[0]
    starting = [o for o in options if folded and o.lower().replace("_", "-").startswith(folded)]
    return starting[0] if len(starting) == 1 else None


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """"; did you mean 'x'?" or nothing."""
    match = closest(value, choices)
    return f"; did you mean '{match}'?" if match is not None and match != str(value) else ""


def one_of(choices: Iterable[object], limit: int = 30) -> str:
    """'a, b, c' (at most `limit`, then '... (N in all)')."""
    items = [str(c) for c in choices]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items)} in all)"
