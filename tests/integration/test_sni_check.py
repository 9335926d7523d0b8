"""`danesync check` and `tlsa` for mail hosts as they are (issue 16, findings 2, 3, 5, 7).

Real certbot trees; check lists which SNI name gets which chain (RSA and
ECDSA sharing a name, a wildcard, a 100-name certificate narrowed by
hostnames), warns about a rollover_wait too long for a 160-hour certificate,
and tlsa prints the records for submission and smtps ports.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from danesync.commands import run_check, run_tlsa
from danesync.config import load_config
from tests.harness.certs import Hierarchy
from tests.harness.lineage import make_lineage

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)
MX = "mx.example.test"


@dataclass(frozen=True)
class Output:
    status: int
    lines: list[str]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sni-check")
    letsencrypt = base / "letsencrypt"
    hierarchy = Hierarchy("SNI check")

    def lineage(name: str, names: list[str], key_kind: str = "ec256", hours: int = 90 * 24) -> None:
        leaf = hierarchy.issue(
            names,
            key_kind=key_kind,  # type: ignore[arg-type]
            not_before=NOW - dt.timedelta(hours=1),
            not_after=NOW + dt.timedelta(hours=hours - 1),
        )
        make_lineage(letsencrypt, name, leaf)

    lineage(MX, [MX], hours=160)
    lineage("shared-rsa", ["shared.hosted.test"], "rsa")
    lineage("shared-ec", ["shared.hosted.test"])
    lineage("hosted.test", ["hosted.test", "*.hosted.test"])
    lineage("big.hosted.test", ["big.hosted.test"] + [f"d{i:03}.hosted.test" for i in range(99)])
    config = base / "danesync.toml"
    config.write_text(
        f'[certbot]\nconfig_dir = "{letsencrypt}"\n'
        f'[postfix]\nconfig_dir = "{base / "no-postfix"}"\ndeploy_dir = "/etc/postfix/danesync"\n'
        '[dns]\nmode = "off"\nttl = 600\nrollover_wait = 86400\n'
        f'[[certificate]]\nlineage = "{MX}"\n'
        f'tlsa = ["_25._tcp.{MX}", "_465._tcp.{MX}", "_587._tcp.{MX}"]\n'
        '[[certificate]]\nlineage = "shared-rsa"\nhostnames = ["shared.hosted.test"]\nsni = true\n'
        '[[certificate]]\nlineage = "shared-ec"\nhostnames = ["shared.hosted.test"]\nsni = true\n'
        '[[certificate]]\nlineage = "hosted.test"\nsni = true\n'
        '[[certificate]]\nlineage = "big.hosted.test"\n'
        'hostnames = ["big.hosted.test", "d001.hosted.test"]\nsni = true\n'
    )
    return config


def check(config_path: Path) -> Output:
    out = io.StringIO()
    status = run_check(load_config(config_path), [], NOW, out=out)
    return Output(status, out.getvalue().splitlines())


class TestSniListing:
    """check says which names get which chain and from which lineage."""

    def test_table(self, config_path: Path) -> None:
        result = check(config_path)
        assert result.status == 0, result.lines
        start = result.lines.index("sni table: 5 name(s)")
        table = result.lines[start + 1 : start + 6]
        assert table == [
            "  .hosted.test (any name under hosted.test): hosted.test (ecdsa)",
            "  big.hosted.test: big.hosted.test (ecdsa)",
            "  d001.hosted.test: big.hosted.test (ecdsa)",  # the exact key wins
            "  hosted.test: hosted.test (ecdsa)",
            "  shared.hosted.test: shared-ec (ecdsa), shared-rsa (rsa)"
            " (one entry: a chain per key algorithm)",
        ]

    def test_served_and_left_out_names(self, config_path: Path) -> None:
        lines = check(config_path).lines
        assert "  sni       2 name(s), every DNS name of the leaf: hosted.test, *.hosted.test" in (
            lines
        )
        big = [line for line in lines if line.startswith("  sni       not served by SNI")]
        assert len(big) == 1
        assert big[0].endswith(
            "d000.hosted.test, d002.hosted.test, "
            + ", ".join(f"d{i:03}.hosted.test" for i in range(3, 99))
        )


class TestShortLived:
    """A rollover_wait of a day is 15% of a 160-hour certificate's lifetime."""

    def test_warning(self, config_path: Path) -> None:
        lines = check(config_path).lines
        index = lines.index(f"{MX}: valid")
        warnings = [line for line in lines[index:] if line.startswith("  warning")]
        assert (
            warnings
            and "dns.rollover_wait (1 day) is 15% of the certificate's 6 days" in (warnings[0])
        )


class TestOtherPorts:
    """TLSA names for submission (587) and smtps (465) come out of tlsa."""

    def test_tlsa(self, config_path: Path) -> None:
        out = io.StringIO()
        assert run_tlsa(load_config(config_path), [MX], NOW, out=out) == 0
        owners = [line.split()[0] for line in out.getvalue().splitlines()]
        assert owners == [f"_25._tcp.{MX}.", f"_465._tcp.{MX}.", f"_587._tcp.{MX}."]
