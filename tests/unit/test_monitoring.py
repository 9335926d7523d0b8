"""Monitor.warn_expiring with the state's lifetime, a held renewal and rollover_wait."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from structlog.testing import capture_logs

from danesync.config import build_config
from danesync.monitoring import RenewalNotices as Monitor
from danesync.ports import AriTarget
from danesync.state import ChainInfo, State
from tests.harness.certs import NOW

HOUR = dt.timedelta(hours=1)
LIFETIME = 160 * HOUR


def info(fingerprint: str, not_before: dt.datetime) -> ChainInfo:
    return ChainInfo(
        fingerprint=fingerprint,
        serial="01",
        not_before=not_before,
        not_after=not_before + LIFETIME,
        issuer="CN=Test",
        key_algorithm="ecdsa",
        version=1,
        names=("mx.example.test",),
        leaf_spki="00",
        issuer_spki=None,
        matches=frozenset(),
    )


def expiring(state: State, now: dt.datetime) -> list[dict[str, object]]:
    config = build_config({"dns": {"mode": "off"}}, Path("/etc/danesync/danesync.toml"))
    with capture_logs() as logs:
        Monitor(config).warn_expiring(state, now)
    return [e for e in logs if e["event"] == "cert.expiring"]


class TestShortLived:
    """A 160-hour certificate is judged by its own lifetime, not by fixed days."""

    def test_healthy_until_the_renewal_is_late(self) -> None:
        state = State()
        state.lineage("mx").deployed = info("a" * 64, NOW)
        assert expiring(state, NOW + 90 * HOUR) == []
        (late,) = expiring(state, NOW + 100 * HOUR)
        assert late["log_level"] == "warning"
        assert "certbot should have renewed it" in str(late["reason"])
        (error,) = expiring(state, NOW + 150 * HOUR)
        assert error["log_level"] == "error"

    def test_held_renewal_is_said(self) -> None:
        state = State()
        lineage = state.lineage("mx")
        lineage.deployed = info("a" * 64, NOW)
        lineage.pending = info("b" * 64, NOW + 80 * HOUR)
        (held,) = expiring(state, NOW + 100 * HOUR)
        assert "danesync holds the new certificate" in str(held["reason"])


class TestRenewalInfoWithoutIdentifier:
    """A leaf without an Authority Key Identifier cannot be asked about (RFC 9773 4.1)."""

    def notices(
        self, monitor: Monitor, state: State, fingerprint: str, later: dt.timedelta = HOUR * 0
    ) -> list[str]:
        target = AriTarget(
            chain=info(fingerprint, NOW),
            identifier=None,
            problem="the leaf has no Authority Key Identifier",
        )
        with capture_logs() as logs:
            monitor.check_renewal_info(state, {"mx": target}, NOW + LIFETIME / 2 + later)
        return [str(e["reason"]) for e in logs if e["event"] == "renewal.unknown"]

    def test_said_once_per_leaf_not_at_every_pass(self, tmp_path: Path) -> None:
        (tmp_path / "renewal").mkdir()
        (tmp_path / "renewal" / "mx.conf").write_text("server = https://acme.test/dir\n")
        config = build_config(
            {"dns": {"mode": "off"}, "certbot": {"config_dir": str(tmp_path)}},
            tmp_path / "danesync.toml",
        )
        monitor = Monitor(config)
        state = State()
        state.lineage("mx").deployed = info("a" * 64, NOW)
        (first,) = self.notices(monitor, state, "a" * 64)
        assert "Authority Key Identifier" in first
        for hours in (1, 2, 30):  # the next passes: silent
            assert self.notices(monitor, state, "a" * 64, HOUR * hours) == []
        state.lineage("mx").deployed = info("b" * 64, NOW + HOUR)
        assert len(self.notices(monitor, state, "b" * 64, HOUR * 30)) == 1  # a renewed leaf
