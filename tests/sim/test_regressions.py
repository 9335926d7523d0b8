"""Shrunk counterexamples of the simulation, kept as plain tests.

Each was found by breaking the code on purpose (the commit message or the
docstring says how) and must pass on the real code.
"""

from __future__ import annotations

from tests.sim.machine import MX, A, DanesyncWorld


def checked(world: DanesyncWorld) -> DanesyncWorld:
    world.every_presented_chain_matches_every_possible_rrset()
    return world


class TestCounterexamples:
    """Event sequences that broke a planner without the waits."""

    def test_old_rrset_cached_from_the_primary(self) -> None:
        """Found with the gate ignoring versions no server serves any more (no wait):
        a cache fetched the old RRset, the new record was published, and the
        next pass deployed the new issuer while the cache still held the old RRset."""
        world = checked(DanesyncWorld())
        checked(world).full_pass()
        world.fetch(cache=0, server=0)
        checked(world).renew(kind="issuer", lineage="rsa")
        checked(world).full_pass()
        checked(world).full_pass()
        checked(world)
        deployed = world.service.state.lineages["rsa"].deployed
        assert deployed is not None and deployed.serial == "0001"  # still the old one

    def test_rollover_completes_after_the_wait(self) -> None:
        world = checked(DanesyncWorld())
        world.full_pass()
        world.full_pass()  # publishes what the first deploys need
        world.transfer(0)
        world.renew(kind="issuer", lineage="rsa")
        world.full_pass()
        for cache in range(3):
            world.fetch(cache=cache, server=1)
        world.transfer(0)
        world.advance(10)
        checked(world).full_pass()
        assert world.service.state.lineages["rsa"].deployed.serial == "0001"
        world.advance(120)
        checked(world).full_pass()
        checked(world)
        assert world.service.state.lineages["rsa"].deployed.serial == "0005"
        records = {r.rdata for r in world.dns.rrset(world.dns.servers[0], MX).records}
        assert len(records) == 2  # the old issuer's record retired, ecdsa's kept

    def test_old_record_outlives_the_old_chain(self) -> None:
        """Found with records retired in the round that deploys (and without the
        served-chain gate): the old issuer's record went before the old chain."""
        world = checked(DanesyncWorld())
        checked(world).full_pass()
        checked(world).renew(kind="issuer", lineage="rsa")
        checked(world).full_pass()
        checked(world)

    def test_name_rejoining_a_lineage_over_foreign_records(self) -> None:
        """Found by `make soak`: a TLSA name left the config, danesync retired its
        record there, the operator's record stayed; the name came back. The
        simulation now refuses config changes that break DANE by themselves."""
        world = checked(DanesyncWorld())
        world.change_config(extra=True, ttl=15, usages=("2 1 1",), wait=None)
        checked(world).full_pass()
        world.operator_adds_a_record(name="_25._tcp.extra.example.test.", ttl=15)
        world.change_config(extra=False, ttl=15, usages=("2 1 1",), wait=None)
        checked(world).full_pass()
        world.change_config(extra=True, ttl=15, usages=("2 1 1",), wait=None)
        checked(world).full_pass()
        checked(world)


class TestSimfix:
    """Found by the simulation after the perf, mailhosts and families merges."""

    def test_light_check_after_a_clock_step(self) -> None:
        """The simulation's counterexample as found: the light check saw a
        wall clock stepped forward, saved it, and the next full pass took
        the step for elapsed time (no `clock.jumped`) and retired sni1's old
        record at once."""
        world = checked(DanesyncWorld())
        checked(world).full_pass()
        checked(world).renew(kind="issuer", lineage="sni1")
        checked(world).full_pass()
        checked(world).clock_step(seconds=120)
        checked(world).light_check()
        checked(world).full_pass()
        checked(world)

    def test_clock_step_seen_first_by_the_light_check_restarts_the_waits(self) -> None:
        """Break it: drop `self._check_clock()` from Service.light_check. The
        new chain was deployed while a cache still held the old RRset."""
        world = checked(DanesyncWorld())
        checked(world).full_pass()
        checked(world).renew(kind="issuer", lineage="sni1")
        world.fetch(cache=0, server=0)
        checked(world).full_pass()  # publishes the new issuer's record
        checked(world).clock_step(seconds=120)
        checked(world).light_check()
        checked(world).full_pass()
        checked(world)
        deployed = world.service.state.lineages["sni1"].deployed
        assert deployed is not None and deployed.serial == "0003"  # still the old one

    def test_sni_only_rollover_without_a_reload(self) -> None:
        """Postfix rereads a replaced SNI table without a reload (smtpd restarts
        before its next connection), so the old SNI chain is gone once the
        table is written; the fake kept presenting it until the next reload."""
        world = checked(DanesyncWorld())
        checked(world).full_pass()
        checked(world).renew(kind="issuer", lineage="sni1")
        checked(world).full_pass()
        world.advance(600)
        checked(world).full_pass()
        checked(world).full_pass()
        checked(world)
        deployed = world.service.state.lineages["sni1"].deployed
        assert deployed is not None and deployed.serial == "0005"
        records = {r.rdata for r in world.dns.rrset(world.dns.servers[0], A).records}
        assert len(records) == 2  # sni1's old issuer record retired, sni2's kept
