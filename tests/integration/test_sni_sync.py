"""`danesync sync` on Debian's stock Postfix with the SNI setups of issue 16.

One pass deploys a default lineage, a wildcard SNI lineage (`*.hosted.test`,
hostnames not set), an RSA and an ECDSA lineage for one SNI name and a
100-name certificate: the probe asks concrete names, nothing is rolled back,
the snakeoil parameters leave main.cf (logged), and an independent client
gets the right chain for each name and algorithm.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import require_program, require_root
from tests.harness.certs import Hierarchy
from tests.harness.danesync import json_events, run_danesync, write_config
from tests.harness.lineage import make_lineage
from tests.harness.stock_postfix import StockDebianPostfix

pytestmark = [pytest.mark.integration, pytest.mark.root]

MX = "mx.example.test"
RSA_ONLY = ("-tls1_2", "-cipher", "aRSA")
ECDSA_ONLY = ("-tls1_2", "-cipher", "aECDSA")


@pytest.fixture
def stock() -> Iterator[StockDebianPostfix]:
    require_root()
    require_program("postfix")
    require_program("openssl")
    with StockDebianPostfix() as instance:
        yield instance


def events_named(events: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in events if e.get("event") == name]


def test_one_pass_serves_every_name(tmp_path: Path, stock: StockDebianPostfix) -> None:
    ca = Hierarchy("SNI sync")
    letsencrypt = tmp_path / "letsencrypt"
    leaves = {
        MX: ca.issue([MX]),
        "hosted.test": ca.issue(["hosted.test", "*.hosted.test"]),
        "shared-rsa": ca.issue(["shared.hosted.test"], key_kind="rsa"),
        "shared-ec": ca.issue(["shared.hosted.test"]),
        "many.test": ca.issue(["many.test"] + [f"d{i:02}.many.test" for i in range(99)]),
    }
    for name, leaf in leaves.items():
        make_lineage(letsencrypt, name, leaf)
    config = write_config(
        tmp_path / "danesync.toml",
        {
            "certbot": {"config_dir": letsencrypt},
            "postfix": {
                "config_dir": stock.config_dir,
                "deploy_dir": tmp_path / "deploy",
                "probe": f"127.0.0.1:{stock.port}",
            },
            "dns": {"mode": "off"},
            "state": {"dir": tmp_path / "state"},
        },
        [
            {"lineage": MX},
            {"lineage": "hosted.test", "sni": True},
            {"lineage": "shared-rsa", "hostnames": ["shared.hosted.test"], "sni": True},
            {"lineage": "shared-ec", "hostnames": ["shared.hosted.test"], "sni": True},
            {"lineage": "many.test", "sni": True},
        ],
    )
    result = run_danesync("sync", "-c", str(config))
    events = json_events(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not events_named(events, "chain.rolled_back")
    assert len(events_named(events, "probe.ok")) == 5
    assert {e["lineage"] for e in events_named(events, "chain.deployed")} == set(leaves)
    (removed,) = events_named(events, "postfix.legacy_removed")
    assert str(stock.snakeoil_cert) in str(removed["reason"])
    assert "is invalid" not in stock.maillog  # no "*.hosted.test" ever asked for

    def served(name: str | None, *options: str) -> x509.Certificate:
        sni = ("-servername", name) if name else ()
        return stock.served_certificate(*sni, *options)

    assert served(None) == leaves[MX].cert
    assert served("a.hosted.test") == leaves["hosted.test"].cert
    assert served("hosted.test") == leaves["hosted.test"].cert
    assert served("shared.hosted.test", *RSA_ONLY) == leaves["shared-rsa"].cert
    assert served("shared.hosted.test", *ECDSA_ONLY) == leaves["shared-ec"].cert
    assert served("d98.many.test") == leaves["many.test"].cert
    settings = stock.postconf("-n")
    assert "smtpd_tls_cert_file" not in settings

    # A second pass changes nothing.
    again = run_danesync("sync", "-c", str(config))
    assert again.returncode == 0, again.stdout + again.stderr
    assert not events_named(json_events(again.stdout), "chain.deployed")


def test_a_failed_default_chain_leaves_main_cf_as_it_was(
    tmp_path: Path, stock: StockDebianPostfix
) -> None:
    """The default lineage's probe fails, the SNI lineage's succeeds: only the default
    is rolled back, and main.cf's default chain settings are Debian's again."""
    ca = Hierarchy("SNI partial")
    # The probed service serves a chain of its own to clients without SNI, so
    # the default lineage's probe cannot see its leaf; SNI still uses the table.
    other = ca.issue([MX])
    other_file = tmp_path / "other.pem"
    other_file.write_bytes(other.key_pem + other.fullchain_pem)
    other_file.chmod(0o600)
    stock.postconf("-P", f"127.0.0.1:{stock.port}/inet/smtpd_tls_chain_files={other_file}")
    stock.reload()
    letsencrypt = tmp_path / "letsencrypt"
    wild = ca.issue(["hosted.test", "*.hosted.test"])
    make_lineage(letsencrypt, MX, ca.issue([MX]))
    make_lineage(letsencrypt, "hosted.test", wild)
    config = write_config(
        tmp_path / "danesync.toml",
        {
            "certbot": {"config_dir": letsencrypt},
            "postfix": {
                "config_dir": stock.config_dir,
                "deploy_dir": tmp_path / "deploy",
                "probe": f"127.0.0.1:{stock.port}",
            },
            "dns": {"mode": "off"},
            "state": {"dir": tmp_path / "state"},
        },
        [{"lineage": MX}, {"lineage": "hosted.test", "sni": True}],
    )
    before = stock.postconf("-n")
    result = run_danesync("sync", "-c", str(config))
    events = json_events(result.stdout)
    assert result.returncode == 1
    assert [e["lineage"] for e in events_named(events, "chain.rolled_back")] == [MX]
    assert [e["lineage"] for e in events_named(events, "chain.deployed")] == ["hosted.test"]
    after = stock.postconf("-n")
    assert "smtpd_tls_chain_files" not in after
    for line in before.splitlines():
        if line.startswith(("smtpd_tls_cert_file", "smtpd_tls_key_file")):
            assert line in after.splitlines()
    assert "tls_server_sni_maps" in after
    assert stock.served_certificate("-servername", "a.hosted.test") == wild.cert
