"""`danesync sync` with DNS off, against a real private Postfix.

Every check of what is served goes through `openssl s_client`, independent of
danesync's own probe.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from danesync.tlsa import spki_sha256
from tests.harness.certs import Hierarchy, Leaf
from tests.harness.danesync import json_events, run_danesync, write_config
from tests.harness.lineage import make_lineage, renew
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root]

postfix = postfix_fixture()
MX = "mx.example.test"


def der(leaf: Leaf) -> bytes:
    return leaf.cert.public_bytes(serialization.Encoding.DER)


def served(postfix: PostfixInstance, *options: str) -> bytes:
    return postfix.served_certificate(*options).public_bytes(serialization.Encoding.DER)


class Host:
    """A certbot config dir, a danesync config and state for one test."""

    def __init__(self, root: Path, postfix: PostfixInstance, certificates: list[dict[str, object]]):
        self.letsencrypt = root / "letsencrypt"
        self.postfix = postfix
        self.config = write_config(
            root / "danesync.toml",
            {
                "certbot": {"config_dir": self.letsencrypt},
                "postfix": {
                    "config_dir": postfix.config_dir,
                    "deploy_dir": root / "deploy",
                    "probe": f"127.0.0.1:{postfix.port}",
                },
                "dns": {"mode": "off"},
                "state": {"dir": root / "state"},
            },
            certificates,
        )
        self.deploy_dir = root / "deploy"

    def sync(self) -> tuple[int, list[dict[str, object]], str]:
        result = run_danesync("sync", "-c", str(self.config))
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, json_events(result.stdout), result.stderr


def events_named(events: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in events if e.get("event") == name]


class TestDeployWithDnsOff:
    """First deploy, renewals, a bad renewal, and a failed reload."""

    def test_first_deploy_renewal_and_bad_key(
        self, tmp_path: Path, postfix: PostfixInstance
    ) -> None:
        ca = Hierarchy("Sync")
        host = Host(tmp_path, postfix, [{"lineage": MX}])
        first = ca.issue([MX])
        make_lineage(host.letsencrypt, MX, first)

        code, events, _ = host.sync()
        assert code == 0
        assert events_named(events, "chain.deployed")
        assert served(postfix) == der(first)
        chain_file = host.deploy_dir / f"{MX}.pem"
        assert chain_file.stat().st_mode & 0o777 == 0o600
        assert postfix.postconf("-h", "smtpd_tls_chain_files").strip() == str(chain_file)
        ok, output = postfix.dane_verify(MX, f"2 1 1 {spki_sha256(ca.intermediate)}")
        assert ok, output

        # A renewal with a new key (same intermediate: the 2 1 1 record still matches).
        second = ca.issue([MX])
        renew(host.letsencrypt, MX, second)
        code, events, _ = host.sync()
        assert code == 0
        assert served(postfix) == der(second)
        assert events_named(events, "probe.ok")

        # A renewal whose key does not match the leaf: held, nothing touched.
        before = chain_file.read_bytes()
        broken = ca.issue([MX])
        broken.key = ca.issue([MX]).key
        renew(host.letsencrypt, MX, broken)
        code, events, _ = host.sync()
        assert code == 1
        (invalid,) = events_named(events, "lineage.invalid")
        assert invalid["lineage"] == MX
        assert "does not match" in str(invalid["reason"])
        assert chain_file.read_bytes() == before
        assert served(postfix) == der(second)

        # Nothing to do: a second pass changes nothing and says so with exit 1 still.
        code, events, _ = host.sync()
        assert code == 1
        assert not events_named(events, "chain.deployed")

    def test_failed_reload_rolls_back(self, tmp_path: Path, postfix: PostfixInstance) -> None:
        ca = Hierarchy("Rollback")
        host = Host(tmp_path, postfix, [{"lineage": MX}])
        first = ca.issue([MX])
        make_lineage(host.letsencrypt, MX, first)
        assert host.sync()[0] == 0
        chain_file = host.deploy_dir / f"{MX}.pem"
        before = chain_file.read_bytes()

        renew(host.letsencrypt, MX, ca.issue([MX]))
        with postfix.stopped():  # `postfix reload` fails: the mail system is not running
            code, events, _ = host.sync()
            assert code == 1
            assert events_named(events, "chain.rolled_back")
            assert chain_file.read_bytes() == before
        assert served(postfix) == der(first)


class TestSeveralCertificates:
    def test_rsa_and_ecdsa_both_served(self, tmp_path: Path, postfix: PostfixInstance) -> None:
        ca = Hierarchy("Dual")
        host = Host(
            tmp_path,
            postfix,
            [
                {"lineage": f"{MX}-rsa", "hostnames": [MX]},
                {"lineage": f"{MX}-ecdsa", "hostnames": [MX]},
            ],
        )
        rsa_leaf = ca.issue([MX], key_kind="rsa")
        ec_leaf = ca.issue([MX], key_kind="ec256")
        make_lineage(host.letsencrypt, f"{MX}-rsa", rsa_leaf)
        make_lineage(host.letsencrypt, f"{MX}-ecdsa", ec_leaf)
        code, _, stderr = host.sync()
        assert code == 0, stderr
        tls12 = ("-tls1_2", "-cipher")
        assert served(postfix, *tls12, "ECDHE-ECDSA-AES128-GCM-SHA256") == der(ec_leaf)
        assert served(postfix, *tls12, "ECDHE-RSA-AES128-GCM-SHA256") == der(rsa_leaf)

    def test_two_default_chains_of_one_algorithm_are_refused(
        self, tmp_path: Path, postfix: PostfixInstance
    ) -> None:
        ca = Hierarchy("Twice")
        host = Host(
            tmp_path, postfix, [{"lineage": "a.example.test"}, {"lineage": "b.example.test"}]
        )
        make_lineage(host.letsencrypt, "a.example.test", ca.issue(["a.example.test"]))
        make_lineage(host.letsencrypt, "b.example.test", ca.issue(["b.example.test"]))
        code, events, _ = host.sync()
        assert code == 1
        (invalid,) = events_named(events, "lineage.invalid")
        assert "a.example.test and b.example.test" in str(invalid["reason"])

    def test_sni_certificates(self, tmp_path: Path, postfix: PostfixInstance) -> None:
        ca = Hierarchy("Sni")
        names = ["one.example.test", "two.example.test"]
        host = Host(
            tmp_path,
            postfix,
            [{"lineage": MX}] + [{"lineage": n, "sni": True} for n in names],
        )
        leaves = {n: ca.issue([n]) for n in [MX, *names]}
        for name, leaf in leaves.items():
            make_lineage(host.letsencrypt, name, leaf)
        code, _, stderr = host.sync()
        assert code == 0, stderr
        for name in names:
            assert served(postfix, "-servername", name) == der(leaves[name])
        assert served(postfix, "-noservername") == der(leaves[MX])

        # A renewal of one SNI certificate rebuilds the table (postmap -F copies contents).
        renewed = ca.issue([names[0]])
        renew(host.letsencrypt, names[0], renewed)
        assert host.sync()[0] == 0
        assert served(postfix, "-servername", names[0]) == der(renewed)
        assert served(postfix, "-servername", names[1]) == der(leaves[names[1]])
