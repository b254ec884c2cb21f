"""Retransmitted confirmed notifications: recognised and answered like the original, never handled twice.

A device retries a confirmed notification it has no answer for after its APDU timeout. The gateway answers
only once the readings are journaled, so under load a retry can arrive after bacpypes3 has finished (or
timed out) the first transaction, and bacpypes3 then takes it for a new request. Handled again, an old COV
value would be reported after newer notifications: a restore or alarm that never happened. A retry repeats
the invoke id and the encoded service data; a new notification differs in at least one of them (event
notifications carry the device's time stamp, COV notifications the seconds left of the subscription).

The key of a COV notification is one flat tuple of ints, strings, bytes and None: CPython stops tracking such a
tuple at the first collection it survives, so the thousands of remembered keys cost a full collection nothing.
Nested tuples with bacpypes3's ObjectType and tag objects inside kept ~55,000 tracked objects in the table at
1,000 notifications/s, and each full collection took 30-44 ms (bench_bacnet.py's gc line): the adapter's p99.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

Key = tuple[Any, ...]
WINDOW = 30.0  # seconds a handled request is remembered: longer than any device's retries take
LIMIT = 4096  # requests remembered at most


def request_key(apdu: Any) -> Key:
    """Who sent it, its invoke id and its service data.

    A COV notification (nearly all the traffic) is keyed by its decoded fields and the tags of each value as
    received (`Any.tagList`): re-encoding the whole request costs as much as decoding it did. Anything else
    by its re-encoded service data.
    """
    values = getattr(apdu, "listOfValues", None)
    if values is not None and getattr(apdu, "subscriberProcessIdentifier", None) is not None:
        device_type, device_instance = apdu.initiatingDeviceIdentifier
        object_type, object_instance = apdu.monitoredObjectIdentifier
        key: list[Any] = [
            str(apdu.pduSource),
            int(apdu.apduInvokeID),
            int(apdu.subscriberProcessIdentifier),
            int(device_type),
            int(device_instance),
            int(object_type),
            int(object_instance),
            int(apdu.timeRemaining),
        ]
        for pv in values:  # flat, with counts: unambiguous, and one tuple of plain values (module docstring)
            tags = pv.value.tagList.tagList
            key += (int(pv.propertyIdentifier), _plain(pv.propertyArrayIndex), _plain(pv.priority), len(tags))
            for t in tags:
                key += (int(t.tag_class), int(t.tag_number), int(t.tag_lvt), bytes(t.tag_data))
        return tuple(key)
    return str(apdu.pduSource), int(apdu.apduInvokeID), bytes(apdu.encode().pduData)


def _plain(value: Any) -> int | None:
    return None if value is None else int(value)


class RecentRequests:
    """Confirmed requests being handled or handled within WINDOW, with their outcome.

    The outcome is what the original got for an answer: True/False (the handler's result), or None when
    the handler failed (no answer, so a retry is handled afresh).
    """

    def __init__(self, window: float = WINDOW, limit: int = LIMIT) -> None:
        self.window = window
        self.limit = limit
        self.duplicates = 0  # retries recognised
        self.by_source: Counter[str] = Counter()  # retries recognised per sender address (`pduSource`)
        self._entries: dict[Key, tuple[float, asyncio.Future[bool | None]]] = {}

    def earlier(self, key: Key) -> asyncio.Future[bool | None] | None:
        """The outcome of the same request seen before (pending while it is still being handled), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        at, outcome = entry
        if asyncio.get_running_loop().time() - at > self.window or (outcome.done() and outcome.result() is None):
            del self._entries[key]
            return None
        self.duplicates += 1
        self.by_source[key[0]] += 1
        return outcome

    def begin(self, key: Key) -> asyncio.Future[bool | None]:
        """Remember a request now being handled; the caller sets the outcome (or cancels it)."""
        loop = asyncio.get_running_loop()
        self._expire(loop.time())
        outcome: asyncio.Future[bool | None] = loop.create_future()
        self._entries[key] = (loop.time(), outcome)
        return outcome

    def forget(self, key: Key) -> None:
        self._entries.pop(key, None)

    def _expire(self, now: float) -> None:
        """Drop the oldest entries past the window (or over the limit); stops at the first one still valid,
        so a call costs what it removes, not the size of the table."""
        entries = self._entries
        while entries:
            key = next(iter(entries))  # oldest first
            at, outcome = entries[key]
            if len(entries) < self.limit and now - at <= self.window:
                break
            if not outcome.done() and len(entries) < self.limit:
                break  # still being handled: kept, as before (it ends within the device's timeout)
            del entries[key]
