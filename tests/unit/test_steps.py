"""The step executor and the service, against the in-memory fakes of tests/sim.

Each class is one numbered finding of issue 10 that lives in the executor
rather than the planner.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from danesync.history import SENDER_SLACK
from danesync.plan import Plan, Publish, Retire
from danesync.runtime import PassResult
from danesync.steps import execute_plan
from danesync.tlsa import TlsaRecord
from tests.sim.machine import MX, DanesyncWorld, _hex
from tests.sim.world import PRIMARY, Crash


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == name]


def settled() -> DanesyncWorld:
    """Every lineage deployed, its records published and on every server."""
    world = DanesyncWorld()
    world.full_pass()
    world.full_pass()
    world.transfer(0)
    world.full_pass()
    return world


class TestFinding1TtlAsServed:
    """An update that rewrites the RRset's TTL says so; tlsa.visible prints the real TTL."""

    def test_ttl_change_is_logged(self) -> None:
        world = settled()
        world.operator_adds_a_record(MX, 3600)  # the RRset is now served with TTL 3600
        world.transfer(0)
        world.full_pass()
        world.renew("rsa", "issuer")
        with capture_logs() as logs:
            world.full_pass()
        (changed,) = events(logs, "tlsa.ttl_changed")
        assert changed["previous_ttl"] == 3600 and changed["ttl"] == 60

    def test_visible_prints_the_served_ttl(self) -> None:
        world = settled()
        world.renew("rsa", "issuer")
        world.full_pass()
        with capture_logs() as logs:
            world.transfer(0)
            world.full_pass()
        assert all(" 60 IN TLSA " in str(e["tlsa"]) for e in events(logs, "tlsa.visible"))
        assert events(logs, "tlsa.visible")

    def test_waits_for_the_ttl_the_operator_served(self) -> None:
        world = settled()
        world.operator_adds_a_record(MX, 3600)
        world.transfer(0)
        world.full_pass()
        world.renew("rsa", "issuer")
        world.full_pass()
        world.transfer(0)
        world.full_pass()  # every server serves the new RRset (TTL 60) from now on
        world.advance(600)  # 10 x dns.ttl, far beyond rollover_wait
        world.full_pass()
        assert world.service.state.lineages["rsa"].deployed.serial == "0001"
        world.advance(3000)
        world.full_pass()
        assert world.service.state.lineages["rsa"].deployed.serial == "0001"  # the slack
        world.advance(SENDER_SLACK.total_seconds())
        world.full_pass()
        new = world.lineages.current["rsa"]
        assert world.service.state.lineages["rsa"].deployed == new.info  # type: ignore[union-attr]


class TestFinding3RolledBackFirstDeploy:
    """A first deploy that was rolled back does not come back; reload_pending does not stick."""

    def test_restart_does_not_adopt_the_leftover_file(self) -> None:
        world = DanesyncWorld()
        world.postfix.fail_probe.add("rsa")
        world.full_pass()
        state = world.service.state
        assert state.lineages["rsa"].deployed is None
        assert world.postfix.files["rsa"]  # the file stays (no .prev) ...
        assert "rsa" not in world.postfix.default_lineages()  # ... named by nothing
        assert not state.reload_pending
        world.restart()
        with capture_logs() as logs:
            world.full_pass()
        assert world.service.state.lineages["rsa"].deployed is None
        assert not events(logs, "deploy.resumed") and not world.service.state.reload_pending

    def test_one_lineage_probe_failure_keeps_the_others(self) -> None:
        """Issue 16 finding 1 depends on this: only the failed lineage is rolled back."""
        world = DanesyncWorld()
        world.postfix.fail_probe.add("sni1")
        world.full_pass()
        lineages = world.service.state.lineages
        assert lineages["sni1"].deployed is None
        assert all(lineages[n].deployed is not None for n in ("rsa", "ecdsa", "sni2"))
        assert set(world.postfix.default_lineages()) == {"rsa", "ecdsa"}
        assert set(world.postfix.table) == {"b.example.test"}


class TestFinding4RollbackCheckpoint:
    """A rollback restores what its own operation changed, nothing an earlier one saved."""

    def test_failed_postmap_keeps_the_earlier_parameters(self) -> None:
        world = DanesyncWorld()
        for lineage in ("sni1", "sni2"):
            world.lineages.current.pop(lineage)
        world.full_pass()
        chain_files = world.postfix.params["smtpd_tls_chain_files"]
        world._issue("sni1")
        world.postfix.fail_postmap = True
        world.full_pass()
        assert world.postfix.params["smtpd_tls_chain_files"] == chain_files
        assert "tls_server_sni_maps" not in world.postfix.params
        assert world.service.state.lineages["rsa"].deployed is not None


class TestFinding6Ownership:
    """A record is danesync's only if its own update added it."""

    def test_record_someone_else_added_is_not_owned(self) -> None:
        world = settled()
        world.renew("rsa", "issuer")
        new = world.lineages.current["rsa"].info  # type: ignore[union-attr]
        record = TlsaRecord(MX, 2, 1, 1, new.issuer_spki or "")
        world.dns.operator_add(MX, record, 60)  # the operator was quicker
        world.full_pass()
        assert record not in world.service.state.names[MX].owned

    def test_no_retirement_in_a_round_whose_publish_failed(self) -> None:
        world = settled()
        history = world.service.state.names[MX]
        owned = next(iter(history.owned))
        plan = Plan(
            (),
            (
                Publish(MX, (TlsaRecord(MX, 3, 1, 1, _hex("x")),), 60),
                Retire(MX, (owned,)),
            ),
        )
        result = PassResult()
        world.dns.lose_answer = True  # the publish is applied, but its answer lost
        execute_plan(world.service.rt, plan, {}, result)
        assert result.failed
        assert owned in world.dns.rrset(PRIMARY, MX).records

    def test_crash_between_update_and_save_keeps_ownership(self) -> None:
        world = settled()
        world.renew("rsa", "issuer")
        world.dns.crash_after_update = True
        with pytest.raises(Crash):
            world.service.reconcile(monitor=False)
        world.restart()
        world.full_pass()
        new = world.lineages.current["rsa"].info  # type: ignore[union-attr]
        assert TlsaRecord(MX, 2, 1, 1, new.issuer_spki or "") in world.service.state.names[MX].owned


class TestFinding8EnvironmentErrors:
    """No environment error escapes a pass: logged, kept for status, retried."""

    def test_disk_full_on_the_deploy_dir(self) -> None:
        world = DanesyncWorld()
        world.postfix.fail_write.add("rsa")
        with capture_logs() as logs:
            result = world.service.reconcile(monitor=False)
        assert result.failed
        failed, *_ = [e for e in events(logs, "pass.failed") if e.get("lineage") == "rsa"]
        assert "/sim/deploy/rsa.pem" in str(failed["path"])
        assert "No space left" in str(failed["reason"])
        assert world.service.state.lineages["ecdsa"].deployed is not None
        assert any(f.lineage == "rsa" for f in world.service.state.failures.values())
        world.postfix.fail_write.clear()
        world.full_pass()
        assert world.service.state.lineages["rsa"].deployed is not None
        assert not world.service.state.failures

    def test_state_dir_unwritable(self) -> None:
        world = DanesyncWorld()
        world.store.fail = True
        with capture_logs() as logs:
            result = world.service.reconcile(monitor=False)
        assert result.failed and events(logs, "pass.failed")

    def test_dead_dns_server(self) -> None:
        world = settled()
        world.dns.down.add(world.dns.servers[2])
        world.renew("rsa", "issuer")
        with capture_logs() as logs:
            result = world.service.reconcile(monitor=False)
        assert result.failed
        assert "10.0.0.3:53" in str(events(logs, "dns.failed")[0]["reason"])

    def test_v1_state_is_migrated(self, tmp_path: Path) -> None:
        from danesync.state import SCHEMA_VERSION, StateStore, read_state

        (tmp_path / "state.json").write_text(
            json.dumps({"version": 1, "lineages": {}, "records": {}, "reload_pending": False})
        )
        loaded = read_state(tmp_path)
        assert loaded.legacy is not None and "migrated" in (loaded.note or "")
        StateStore(tmp_path).save(loaded.state)
        assert json.loads((tmp_path / "state.json").read_text())["version"] == SCHEMA_VERSION

    def test_unknown_schema_is_rebuilt_not_a_crash_loop(self, tmp_path: Path) -> None:
        from danesync.state import read_state

        (tmp_path / "state.json").write_text(json.dumps({"version": 99}))
        loaded = read_state(tmp_path)
        assert "rebuilding" in (loaded.note or "")
        assert (tmp_path / "state.json.bad").exists()


class TestFinding9ClockSteps:
    """Waits survive clock steps."""

    def test_step_forward_does_not_shorten_the_wait(self) -> None:
        world = settled()
        world.renew("rsa", "issuer")
        world.full_pass()
        world.transfer(0)
        world.full_pass()
        world.clock.step(86400)  # NTP fixes a clock a day slow
        with capture_logs() as logs:
            world.full_pass()
        assert events(logs, "clock.jumped")
        assert world.service.state.lineages["rsa"].deployed.serial == "0001"
        world.advance(120)
        world.full_pass()
        assert world.service.state.lineages["rsa"].deployed.serial == "0005"

    def test_step_back_forces_nothing(self) -> None:
        world = settled()
        world.renew("rsa", "issuer")
        world.full_pass()
        world.transfer(0)
        world.full_pass()
        world.clock.step(-86400 * 30)
        with capture_logs() as logs:
            world.full_pass()
        assert not events(logs, "rollover.forced")
        world.advance(120)
        world.full_pass()
        assert world.service.state.lineages["rsa"].deployed.serial == "0005"

    def test_step_forward_across_a_restart_is_seen(self) -> None:
        world = settled()
        world.renew("rsa", "issuer")
        world.full_pass()
        world.transfer(0)
        world.full_pass()
        world.clock.step(86400)
        world.restart()
        world.full_pass()
        assert world.service.state.lineages["rsa"].deployed.serial == "0001"


class TestLightCheck:
    """Issue 13 finding 5: a record deleted by hand is noticed at the next light check."""

    def test_deleted_record_asks_for_a_full_pass(self) -> None:
        world = settled()
        assert not world.service.light_check()
        world.dns.zones[PRIMARY].pop(MX)
        assert world.service.light_check()
        world.full_pass()
        assert world.dns.rrset(PRIMARY, MX).records  # published again


class TestStatus:
    """`danesync status` shows deployed chains, records and last failures from the state."""

    def test_failures_are_shown(self) -> None:
        import io

        from danesync.status import build_status, print_status

        world = DanesyncWorld()
        world.postfix.fail_write.add("rsa")
        world.full_pass()
        document = build_status(world.config, world.service.state, world.clock.wall())
        assert document["failures"][0]["lineage"] == "rsa"
        out = io.StringIO()
        print_status(document, out)
        assert "No space left on device" in out.getvalue()
