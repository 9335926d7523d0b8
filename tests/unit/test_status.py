"""The status verdict (danesync.verdict) and `danesync status` around it (danesync.status)."""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import json
import os
from pathlib import Path

import pytest
import structlog

from danesync.config import CertificateConfig as Cert
from danesync.config import Config, DaemonConfig, DnsConfig, DnsMode, MonitorConfig
from danesync.health import DaneCheck, Health, HealthRecorder, read_health, write_health
from danesync.history import NameHistory, RRset
from danesync.state import ChainInfo, Failure, LineageState, State, StateStore
from danesync.status import read_daemon_running, run_status
from danesync.tlsa import TlsaRecord
from danesync.verdict import (
    Level,
    LineageFacts,
    build_unit_status,
    build_verdict,
    facts_from_state,
    failures_from_state,
    published_from_state,
)

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
DAY = dt.timedelta(days=1)
MX = "mx.example.test"
NAME = f"_25._tcp.{MX}."
RECORD = TlsaRecord(NAME, 2, 1, 1, "ab" * 32)


def config(tmp_path: Path = Path("/nonexistent"), **dns: object) -> Config:
    return Config(
        path=tmp_path / "danesync.toml",
        dns=DnsConfig(mode=DnsMode.CHECK, ttl=300, rollover_wait=600, **dns),  # type: ignore[arg-type]
        daemon=DaemonConfig(reconcile_interval=3600),
        monitor=MonitorConfig(check_interval=300),
        certificates=(Cert(MX, (MX,), (NAME,)),),
    )


def deployed(**changes: object) -> LineageFacts:
    values: dict[str, object] = {
        "lineage": MX,
        "deployed_serial": "01AB",
        "deployed_not_after": NOW + 60 * DAY,
    }
    values.update(changes)
    return LineageFacts(**values)  # type: ignore[arg-type]


def healthy(**changes: object) -> Health:
    values: dict[str, object] = {
        "pid": 42,
        "started_at": NOW - DAY,
        "last_pass": NOW - 10 * MINUTE,
        "last_success": NOW - 10 * MINUTE,
        "last_check": NOW - 2 * MINUTE,
        "dane": (check("valid"),),
    }
    values.update(changes)
    return Health(**values)  # type: ignore[arg-type]


def check(outcome: str, source: str = "verify server 127.0.0.1:53") -> DaneCheck:
    return DaneCheck(
        lineage=MX,
        name=NAME,
        source=source,
        outcome=outcome,
        reason="because",
        checked_at=NOW - 2 * MINUTE,
        key_algorithm="ecdsa",
        serial="01AB",
        issuer="CN=Test Intermediate",
        published=("2 1 1 " + "ab" * 32,),
    )


HEALTHY = object()  # the default: a daemon that reported recently, all fine


def verdict_of(
    facts: LineageFacts | None = None,
    health: Health | object | None = HEALTHY,
    running: bool | None = True,
    cfg: Config | None = None,
) -> tuple[Level, str]:
    result = build_verdict(
        cfg or config(),
        [facts or deployed()],
        healthy() if health is HEALTHY else health,  # type: ignore[arg-type]
        running,
        NOW,
    )
    return result.level, result.summary


class TestVerdict:
    """Each exit status is reached by the situation it names, and only by it."""

    def test_ok(self) -> None:
        level, summary = verdict_of()
        assert level is Level.OK
        assert summary == "DANESYNC OK - 1/1 deployed, records published"

    @pytest.mark.parametrize(
        ("facts", "health", "running", "expected"),
        [
            pytest.param(deployed(), HEALTHY, False, "not running", id="daemon-not-running"),
            pytest.param(deployed(), None, None, "never reported", id="no-heartbeat-ever"),
            pytest.param(
                deployed(),
                healthy(last_pass=NOW - 3 * 3600 * MINUTE / 60, last_check=NOW - 20 * MINUTE),
                None,
                "stale",
                id="stale-heartbeat",
            ),
            pytest.param(
                deployed(deployed_serial=None, deployed_not_after=None),
                HEALTHY,
                True,
                "nothing deployed",
                id="nothing-deployed",
            ),
            pytest.param(
                deployed(failed_reason="probe failed"),
                HEALTHY,
                True,
                "failing to deploy",
                id="deploy-failed",
            ),
            pytest.param(
                deployed(),
                healthy(lineage_failures={MX: "postfix.failed: boom"}),
                True,
                "failing to deploy",
                id="deploy-failed-logged",
            ),
            pytest.param(
                deployed(deployed_not_after=NOW - MINUTE), None, True, "expired", id="expired"
            ),
            pytest.param(
                deployed(deployed_not_after=NOW + 10 * MINUTE),
                HEALTHY,
                True,
                "sooner than a renewal",
                id="expiring-without-renewal",
            ),
            pytest.param(
                deployed(
                    deployed_not_after=NOW + DAY,
                    pending_serial="02",
                    pending_since=NOW,
                    proceed_at=NOW + 2 * DAY,
                ),
                HEALTHY,
                True,
                "before its renewal can be deployed",
                id="expiring-before-renewal",
            ),
            pytest.param(
                deployed(), healthy(dane=(check("broken"),)), True, "dane.broken", id="dane-broken"
            ),
            pytest.param(
                deployed(),
                healthy(dane=(check("no_records"),)),
                True,
                "no TLSA record",
                id="record-missing",
            ),
            pytest.param(
                deployed(),
                healthy(dane=(check("error", source="probe"),)),
                True,
                "serves no chain",
                id="nothing-served",
            ),
            pytest.param(
                deployed(missing_records=(RECORD.zone_line(300),)),
                HEALTHY,
                True,
                "records missing",
                id="record-missing-in-state",
            ),
        ],
    )
    def test_critical(
        self, facts: LineageFacts, health: object, running: bool | None, expected: str
    ) -> None:
        level, summary = verdict_of(facts, health, running)
        assert level is Level.CRITICAL
        assert summary.startswith("DANESYNC CRITICAL - ")
        assert expected in summary

    @pytest.mark.parametrize(
        ("facts", "health", "expected"),
        [
            pytest.param(
                deployed(pending_serial="02", pending_since=NOW - DAY, proceed_at=NOW + MINUTE),
                HEALTHY,
                "waiting since",
                id="rollover-waiting-too-long",
            ),
            pytest.param(
                deployed(
                    deployed_not_after=NOW + 3 * DAY,
                    pending_serial="02",
                    pending_since=NOW,
                    proceed_at=NOW + MINUTE,
                ),
                HEALTHY,
                "expires at",
                id="expiring-soon",
            ),
            pytest.param(
                deployed(),
                healthy(lineage_warnings={MX: "renewal.suggested: ARI"}),
                "renewal.suggested",
                id="ari",
            ),
            pytest.param(
                deployed(),
                healthy(dns_failure="127.0.0.1:53: timeout"),
                "DNS is failing",
                id="dns-failing",
            ),
            pytest.param(
                deployed(), healthy(dane=(check("error"),)), "self-check", id="selfcheck-dns-error"
            ),
            pytest.param(
                deployed(),
                healthy(dane=(check("unusable"),)),
                "because",
                id="only-unusable-records",
            ),
        ],
    )
    def test_warning(self, facts: LineageFacts, health: object, expected: str) -> None:
        level, summary = verdict_of(facts, health, True)
        assert level is Level.WARNING
        assert summary.startswith("DANESYNC WARNING - ")
        assert expected in summary

    def test_a_rollover_waiting_as_expected_is_ok(self) -> None:
        facts = deployed(
            pending_serial="02", pending_since=NOW - 5 * MINUTE, proceed_at=NOW + 5 * MINUTE
        )
        assert verdict_of(facts)[0] is Level.OK

    def test_fresh_heartbeat_from_the_selfcheck_alone(self) -> None:
        health = healthy(last_pass=NOW - 50 * MINUTE, last_check=NOW - 3 * MINUTE)
        assert verdict_of(health=health)[0] is Level.OK

    def test_dns_off_needs_no_records(self) -> None:
        cfg = Config(
            path=Path("/x"), dns=DnsConfig(mode=DnsMode.OFF), certificates=config().certificates
        )
        facts = deployed(
            missing_records=(RECORD.zone_line(300),), deployed_not_after=NOW + 20 * DAY
        )
        assert build_verdict(cfg, [facts], healthy(), True, NOW).level is Level.OK

    def test_the_worst_problem_comes_first(self) -> None:
        health = healthy(dns_failure="timeout", dane=(check("broken"),))
        result = build_verdict(config(), [deployed()], health, True, NOW)
        assert [p.level for p in result.problems] == [Level.CRITICAL, Level.WARNING]
        assert "(+1 more)" in result.summary

    def test_unit_status_names_what_failed(self) -> None:
        result = build_verdict(
            config(),
            [deployed(failed_reason="the probe did not see the new leaf")],
            healthy(),
            True,
            NOW,
        )
        text = build_unit_status(result, "1/1 deployed")
        assert text.startswith("CRITICAL: mx.example.test: failing to deploy: the probe")
        assert text.endswith("; 1/1 deployed")
        ok = build_verdict(config(), [deployed()], healthy(), True, NOW)
        assert build_unit_status(ok, "1/1 deployed") == "1/1 deployed"
        assert build_unit_status(ok) == "1/1 deployed, records published"


def chain_info(not_after: dt.datetime, matches: frozenset[str]) -> ChainInfo:
    return ChainInfo(
        fingerprint="f" * 64,
        serial="01",
        not_before=not_after - 90 * DAY,
        not_after=not_after,
        issuer="CN=x",
        key_algorithm="ecdsa",
        version=1,
        names=(MX,),
        leaf_spki="0" * 64,
        issuer_spki="ab" * 32,
        matches=matches,
        tlsa=(RECORD,),
    )


class TestFactsFromState:
    """The one reader of the state gives the facts the verdict needs."""

    def test_deployed_pending_failed_and_missing(self) -> None:
        info = chain_info(NOW + DAY, frozenset({RECORD.rdata}))
        other = TlsaRecord(NAME, 2, 1, 1, "cd" * 32)
        state = State(
            lineages={
                MX: LineageState(
                    deployed=info,
                    pending=info,
                    pending_since=NOW,
                    proceed_at=NOW + MINUTE,
                    failed_reason="no",
                )
            },
            names={NAME: NameHistory(NAME, servers={"127.0.0.1:53": RRset.of([other], 300)})},
        )
        (facts,) = facts_from_state(config(), state)
        assert facts.deployed_serial == "01" and facts.pending_serial == "01"
        assert facts.failed_reason == "no" and facts.proceed_at == NOW + MINUTE
        assert facts.missing_records == (RECORD.zone_line(300),)
        state.names[NAME] = NameHistory(
            NAME, servers={"127.0.0.1:53": RRset.of([other, RECORD], 300)}
        )
        assert facts_from_state(config(), state)[0].missing_records == ()
        assert published_from_state(state) == {NAME: 2}

    def test_empty_state(self) -> None:
        (facts,) = facts_from_state(config(), State())
        assert facts.deployed_serial is None

    def test_failures(self) -> None:
        state = State(
            failures={
                "deploy postfix x": Failure("deploy", "postfix", "reload failed", NOW, 2, MX),
                "observe dns ": Failure("observe", "dns", "timeout", NOW),
            }
        )
        failures = failures_from_state(state)
        result = build_verdict(config(), [deployed()], healthy(), True, NOW, failures)
        assert result.level is Level.CRITICAL
        assert [p.level for p in result.problems] == [Level.CRITICAL, Level.WARNING]
        assert "deploy failing (postfix): reload failed" in result.summary
        only_dns = [f for f in failures if f.step == "observe"]
        result = build_verdict(config(), [deployed()], healthy(), True, NOW, only_dns)
        assert result.level is Level.WARNING and "while nothing is at stake" in result.summary


class TestDaemonRunning:
    """The daemon's lock says whether it runs; status never keeps the lock."""

    def test_no_lock_file(self, tmp_path: Path) -> None:
        assert read_daemon_running(tmp_path) is None

    def test_lock_free_then_held(self, tmp_path: Path) -> None:
        lock = tmp_path / "lock"
        lock.touch()
        assert read_daemon_running(tmp_path) is False
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert read_daemon_running(tmp_path) is True
            assert read_daemon_running(tmp_path) is True  # asking took nothing away
        finally:
            os.close(fd)
        assert read_daemon_running(tmp_path) is False

    def test_without_a_lock_the_pid_decides(self, tmp_path: Path) -> None:
        import subprocess

        child = subprocess.Popen(["sleep", "30"])
        try:
            assert read_daemon_running(tmp_path, child.pid) is False  # alive, not danesync
        finally:
            child.kill()
            child.wait()
        assert read_daemon_running(tmp_path, child.pid) is False  # gone
        assert read_daemon_running(tmp_path, None) is None


class TestHealthRecorder:
    """Failures are counted from the log events, whichever module logs them."""

    def test_counts_errors_and_remembers_lineage_failures(self) -> None:
        recorder = HealthRecorder(pid=1, now=NOW)

        def log(level: str, event: str, **fields: str) -> None:
            # As structlog calls a processor (capture_logs takes none on structlog 22).
            recorder.processor(None, level, {"event": event, **fields})

        recorder.pass_started()
        log("error", "dns.failed", reason="timeout")
        log("error", "chain.rolled_back", lineage=MX, reason="probe")
        log("warning", "renewal.suggested", lineage=MX, reason="ARI window open")
        log("info", "tlsa.published")
        health = recorder.pass_finished(failed=False, now=NOW)
        assert health.failures == {"dns.failed": 1, "chain.rolled_back": 1}
        assert health.lineage_failures == {MX: "chain.rolled_back: probe"}
        assert health.lineage_warnings == {MX: "renewal.suggested: ARI window open"}
        assert health.dns_failure == "timeout"
        assert health.last_pass == NOW and health.last_success is None
        recorder.pass_started()
        log("info", "chain.deployed", lineage=MX)
        health = recorder.pass_finished(failed=False, now=NOW + MINUTE)
        assert health.lineage_failures == {} and health.lineage_warnings == {}
        assert health.last_success == NOW + MINUTE and health.dns_failure is None
        assert health.failures == {"dns.failed": 1, "chain.rolled_back": 1}

    def test_installed_first_in_structlog(self) -> None:
        recorder = HealthRecorder(pid=1, now=NOW)
        saved = structlog.get_config()
        try:
            structlog.configure(processors=[structlog.processors.JSONRenderer()])
            recorder.install()
            recorder.install()  # once only
            processors = structlog.get_config()["processors"]
            assert processors[0] == recorder.processor and len(processors) == 2
        finally:
            structlog.configure(**saved)

    def test_round_trip(self, tmp_path: Path) -> None:
        health = healthy(failures={"dns.failed": 2}, dane=(check("broken"),))
        write_health(tmp_path, health)
        assert read_health(tmp_path) == health
        assert oct((tmp_path / "health.json").stat().st_mode & 0o777) == "0o644"

    def test_unreadable_is_no_heartbeat(self, tmp_path: Path) -> None:
        (tmp_path / "health.json").write_text("{")
        assert read_health(tmp_path) is None


class TestRunStatus:
    """`danesync status`: the summary line first, the exit status its level."""

    def test_text_and_json(self, tmp_path: Path) -> None:
        cfg = Config(
            path=tmp_path / "danesync.toml",
            state=type(Config(path=tmp_path).state)(dir=tmp_path),
            certificates=config().certificates,
        )
        info = chain_info(dt.datetime.now(dt.UTC) + 60 * DAY, frozenset({RECORD.rdata}))
        StateStore(tmp_path).save(State(lineages={MX: LineageState(deployed=info)}))
        out = io.StringIO()
        assert run_status(cfg, as_json=False, out=out) == 2  # no daemon ever reported
        first = out.getvalue().splitlines()[0]
        assert first.startswith("DANESYNC CRITICAL - the daemon has never reported")
        now = dt.datetime.now(dt.UTC)
        write_health(tmp_path, Health(pid=None, last_pass=now, last_success=now))
        out = io.StringIO()
        assert run_status(cfg, as_json=True, out=out) == 0
        document = json.loads(out.getvalue())
        assert document["status"] == "OK" and document["exit_code"] == 0
        assert document["lineages"][MX]["deployed"]["serial"] == "01"
        assert document["daemon"]["running"] is None
