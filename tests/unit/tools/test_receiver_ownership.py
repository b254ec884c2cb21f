"""Site ownership in a receiver tier: stable, and only the sites of a leaving member move."""

from __future__ import annotations

from gateway.tools.receiver_tier import Membership, owner, presence_payload

SITES = [f"site-{n}" for n in range(300)]


def test_a_leaving_member_moves_only_its_own_sites() -> None:
    before = {s: owner(s, {"a", "b", "c", "d"}) for s in SITES}
    after = {s: owner(s, {"a", "b", "c"}) for s in SITES}
    moved = {s for s in SITES if before[s] != after[s]}
    assert moved == {s for s in SITES if before[s] == "d"}
    counts = [list(before.values()).count(m) for m in "abcd"]
    assert min(counts) > 40, f"spread over the members: {counts}"


def test_membership_is_ready_on_its_own_announcement_and_follows_wills() -> None:
    me = Membership("tier", "a", nonce="n2")
    assert not me.on_presence("gcmk/v1/_receivers/tier/b", presence_payload("b", "x"))
    assert not me.on_presence("gcmk/v1/_receivers/tier/a", presence_payload("a", "n1")), "an older announcement"
    assert not me.owns("site-1"), "not ready: owns nothing yet"
    assert me.on_presence("gcmk/v1/_receivers/tier/a", presence_payload("a", "n2"))
    assert me.members == {"a", "b"}
    mine = {s for s in SITES if me.owns(s)}
    assert 0 < len(mine) < len(SITES)
    assert me.on_presence("gcmk/v1/_receivers/tier/b", b""), "b's will: b is gone"
    assert all(me.owns(s) for s in SITES)


def test_an_older_connections_will_does_not_remove_us_but_asks_for_a_new_announcement() -> None:
    me = Membership("tier", "a", nonce="n1")
    me.on_presence("gcmk/v1/_receivers/tier/a", presence_payload("a", "n1"))
    me.on_presence("gcmk/v1/_receivers/tier/a", b"")
    assert me.members == {"a"} and me.cleared_me


def test_a_member_not_heard_of_for_the_ttl_is_gone_though_no_will_came() -> None:
    """b died while the broker was down: no will, its retained presence came back with the broker. Without a
    refresh within the TTL it counts as gone, and its sites move to the members still announcing."""
    ttl = 30.0
    me = Membership("tier", "a", nonce="n1")
    me.on_presence("gcmk/v1/_receivers/tier/a", presence_payload("a", "n1"), now=100.0)
    me.on_presence("gcmk/v1/_receivers/tier/b", presence_payload("b", "x"), now=100.0)  # the stale retained one
    me.on_presence("gcmk/v1/_receivers/tier/c", presence_payload("c", "y"), now=100.0)
    assert me.expire(100.0 + ttl, ttl) == [] and me.members == {"a", "b", "c"}
    me.on_presence("gcmk/v1/_receivers/tier/c", presence_payload("c", "y"), now=125.0)  # c refreshes, b does not
    assert me.expire(100.0 + ttl + 1, ttl) == ["b"]
    assert me.members == {"a", "c"}
    assert {s for s in SITES if owner(s, {"a", "c"}) == "a"} == {s for s in SITES if me.owns(s)}
    assert me.expire(10_000.0, ttl) == ["c"] and me.members == {"a"}, "we never expire ourselves"
