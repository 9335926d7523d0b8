"""The Prometheus textfile (danesync.metrics), checked by `promtool check metrics`."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from danesync.health import DaneCheck, Health
from danesync.metrics import build_metrics, write_metrics
from danesync.verdict import Level, LineageFacts, Verdict
from tests.conftest import require_program

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
NAME = "_25._tcp.mx.example.test."


def facts() -> list[LineageFacts]:
    return [
        LineageFacts("mx.example.test", "01AB", NOW + 60 * DAY),
        LineageFacts(
            'odd"name\\x',
            "02",
            NOW + 30 * DAY,
            pending_serial="03",
            pending_since=NOW - DAY,
            proceed_at=NOW + DAY,
        ),
        LineageFacts("never", failed_reason="probe failed"),
    ]


def health() -> Health:
    check = DaneCheck(
        lineage="mx.example.test",
        name=NAME,
        source="verify server 127.0.0.1:53",
        outcome="valid",
        reason="DANE-TA matches",
        checked_at=NOW,
        key_algorithm="ecdsa",
        serial="01AB",
        issuer="CN=x",
        published=("2 1 1 " + "ab" * 32, "2 1 1 " + "cd" * 32),
    )
    return Health(
        pid=1,
        last_pass=NOW,
        last_success=NOW - DAY,
        last_check=NOW,
        failures={"dns.failed": 3, "dane.broken": 1},
        dane=(check,),
    )


def text() -> str:
    return build_metrics(facts(), health(), Verdict(Level.WARNING, (), 2, 3))


class TestBuildMetrics:
    """Names, labels and values as Prometheus expects them."""

    def test_values(self) -> None:
        lines = text().splitlines()
        assert "danesync_status 1" in lines
        assert (
            'danesync_certificate_not_after_timestamp_seconds{lineage="mx.example.test"} '
            f"{int((NOW + 60 * DAY).timestamp())}"
        ) in lines
        assert 'danesync_failures_total{event="dns.failed"} 3' in lines
        assert f'danesync_tlsa_records{{name="{NAME}"}} 2' in lines
        assert 'danesync_rollover_state{lineage="never",state="failed"} 1' in lines
        assert 'danesync_rollover_state{lineage="never",state="none"} 0' in lines
        assert f"danesync_last_pass_timestamp_seconds {int(NOW.timestamp())}" in lines
        assert (
            'danesync_selfcheck_valid{lineage="mx.example.test",'
            f'name="{NAME}",key_algorithm="ecdsa"}} 1'
        ) in lines

    def test_label_values_are_escaped(self) -> None:
        assert 'lineage="odd\\"name\\\\x"' in text()

    def test_every_family_has_help_and_type(self) -> None:
        lines = text().splitlines()
        names = {line.split("{")[0].split(" ")[0] for line in lines if not line.startswith("#")}
        for name in names:
            assert f"# TYPE {name} " in text(), name
            assert f"# HELP {name} " in text(), name

    def test_without_a_daemon(self) -> None:
        out = build_metrics(facts(), None, Verdict(Level.CRITICAL, (), 2, 3))
        assert "danesync_status 2" in out and "danesync_failures_total" not in out
        assert "danesync_last_pass_timestamp_seconds" not in out

    def test_records_from_the_state_where_the_selfcheck_did_not_look(self) -> None:
        other = "_25._tcp.mx2.example.test."
        out = build_metrics(
            facts(), health(), Verdict(Level.OK, (), 2, 3), {NAME: 5, other: 1}
        ).splitlines()
        assert f'danesync_tlsa_records{{name="{NAME}"}} 2' in out  # the self-check's count
        assert f'danesync_tlsa_records{{name="{other}"}} 1' in out

    def test_promtool_accepts_it(self, tmp_path: Path) -> None:
        require_program("promtool")
        path = tmp_path / "danesync.prom"
        write_metrics(path, text())
        assert oct(path.stat().st_mode & 0o777) == "0o644"
        result = subprocess.run(
            ["promtool", "check", "metrics"],
            input=path.read_bytes(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        # promtool prints lint problems and exits non-zero on any of them.
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
        assert not result.stdout.strip() and not result.stderr.strip()

    def test_promtool_catches_a_bad_name(self) -> None:
        """The check is real: a counter without `_total` is refused."""
        require_program("promtool")
        bad = text().replace("danesync_failures_total", "danesync_failures")
        result = subprocess.run(
            ["promtool", "check", "metrics"], input=bad.encode(), capture_output=True, check=False
        )
        assert result.returncode != 0
