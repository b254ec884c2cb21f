"""A receiver tier: several reference receivers that share the sites by partitioning the SITES, not the messages.

Why not MQTT 5 shared subscriptions (`$share/<group>/gcmk/v1/+/events/#`): the broker spreads one site's
events over the members, so no member sees a site's whole stream. Per-site seq tracking, gap detection,
replay requests and the cumulative confirmation all need the whole stream of a site in one place.

How: every member of a group announces itself with a retained presence message on
`gcmk/v1/_receivers/<group>/<member>`; its MQTT will clears that message (empty retained payload), so the
broker itself tells the others when a member dies. Each member subscribes to the presence topics and
computes the same owner for every site by rendezvous hashing (highest random weight) over the live members:
a member joining or leaving moves only the sites it gains or had, nothing else reshuffles. A member
subscribes to the events, state and command results of the sites it owns only; it hears the (small) status,
heartbeat and confirm messages of every site, to learn the sites and the tier's position of each.

A will is published only by a broker that is up when the connection dies: a member that dies while the
broker is down (or with it) leaves its retained presence behind, and the others would keep its sites
unserved for ever. So presence is also a lease: every member announces itself again every PRESENCE_REFRESH
seconds (MQTT 5: with a message expiry of LEASE_PERIODS of them, so a newcomer never even sees a stale one), and a
member not heard of for that long counts as gone (`Membership.expire`, by the local clock of receipt,
so the members' clocks need not agree).

Hand-over without shared storage: all members confirm as the tier's one receiver id (the id in the
gateways' `delivery.receivers`), and every member reads every confirmation of that id, so each knows the
tier's position of every site at the moment it takes one over. The gateway's heartbeat (`confirmed_seq`) is
the fallback after a restart of the whole tier. Whatever the dying member stored but had not confirmed is
published again by the gateway after `delivery.confirm_timeout`, or asked for with `gcmk.replay.v1` from
the tail gap behind the heartbeat's `last_seq`: nothing depends on the dead member's store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from gateway.delivery.contract import ROOT

PRESENCE = f"{ROOT}/_receivers"
PRESENCE_REFRESH = 10.0  # seconds between a member's announcements
LEASE_PERIODS = 3  # a member not heard of for this many announcement periods is gone (its will may never come)


def presence_topic(group: str, member: str) -> str:
    return f"{PRESENCE}/{group}/{member}"


def presence_filter(group: str) -> str:
    return f"{PRESENCE}/{group}/+"


def presence_payload(member: str, nonce: str) -> bytes:
    """The nonce tells this connection's announcement apart from an older retained one of the same member."""
    return json.dumps({"member": member, "nonce": nonce}).encode()


def owner(site: str, members: set[str] | frozenset[str]) -> str | None:
    """Rendezvous hashing: the member with the highest hash of (member, site); stable across processes."""
    best: tuple[bytes, str] | None = None
    for member in members:
        weight = hashlib.blake2b(f"{member}\x00{site}".encode(), digest_size=8).digest()
        if best is None or (weight, member) > best:
            best = (weight, member)
    return best[1] if best else None


@dataclass
class Membership:
    """The live members of one group, as the presence messages say, and so which sites `me` owns."""

    group: str
    me: str
    nonce: str
    members: set[str] = field(default_factory=set)
    ready: bool = False  # our own announcement of this connection came back: every older one was seen
    cleared_me: bool = False  # our presence was cleared while we are here (an older connection's will): announce again
    heard: dict[str, float] = field(default_factory=dict)  # member -> when its last announcement arrived (monotonic)

    def on_presence(self, topic: str, payload: bytes, now: float = 0.0) -> bool:
        """Apply one presence message that arrived at `now` (monotonic); True when the member set changed (or
        we just became ready)."""
        member = topic.rsplit("/", 1)[-1]
        before = set(self.members)
        if not payload:
            self.members.discard(member)
            self.heard.pop(member, None)
            if member == self.me:  # an older connection's will (taken over by this one): we are still here
                self.members.add(self.me)
                self.cleared_me = True
        else:
            self.members.add(member)
            self.heard[member] = now
            if member == self.me and not self.ready:
                try:
                    nonce = json.loads(payload).get("nonce")
                except (ValueError, AttributeError):
                    nonce = None
                if nonce == self.nonce:
                    self.ready = True
                    return True
        return self.ready and self.members != before

    def expire(self, now: float, ttl: float) -> list[str]:
        """Members not heard of for `ttl` seconds (a retained presence the broker kept for a member that died
        with it, or while it was down): gone. Returns them; never ourselves."""
        gone = [m for m in self.members if m != self.me and now - self.heard.get(m, now) > ttl]
        for member in gone:
            self.members.discard(member)
            self.heard.pop(member, None)
        return gone

    def owns(self, site: str) -> bool:
        return self.ready and owner(site, self.members | {self.me}) == self.me
