"""SNI as mail hosts use it, against a real private Postfix (issue 16, findings 1-3).

The table is what `sni.build_sni_entries` makes of the lineages; Postfix reads
it, and two clients that share no code with it look at what is served:
``openssl s_client`` (restricted to one key algorithm with TLS 1.2 ciphers)
and danesync's own probe.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from danesync.actions import files, probe
from danesync.actions.postfix import (
    build_chain_files_value,
    build_sni_maps_value,
    reload_postfix,
    write_parameter_changes,
    write_sni_table,
)
from danesync.sni import (
    SniCertificate,
    build_probe_names,
    build_served_names,
    build_sni_entries,
    leaf_dns_names,
)
from tests.harness.certs import Hierarchy, KeyKind, Leaf
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = pytest.mark.integration

postfix = postfix_fixture(scope="function")

MX = "mx.example.test"
# TLS 1.2 ciphers make the server choose the chain of one key algorithm.
RSA_ONLY = ("-tls1_2", "-cipher", "aRSA")
ECDSA_ONLY = ("-tls1_2", "-cipher", "aECDSA")


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy("SNI hosts")


def issue(hierarchy: Hierarchy, names: list[str], key_kind: KeyKind = "ec256") -> Leaf:
    now = dt.datetime.now(dt.UTC)
    return hierarchy.issue(
        names,
        key_kind=key_kind,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=89),
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def eventually(check: Callable[[], bool], timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def deploy(
    server: PostfixInstance,
    default: Leaf,
    lineages: Sequence[tuple[str, Leaf, str, tuple[str, ...] | None]],
) -> list[SniCertificate]:
    """Chain files, the table from build_sni_entries, one postconf, one reload.

    `lineages`: (name, leaf, key algorithm, hostnames or None for "not set").
    """
    default_path = files.install_chain_file(
        server.deploy_dir, "default", default.key_pem + default.fullchain_pem
    )
    certificates = []
    for lineage, leaf, algorithm, hostnames in lineages:
        path = files.install_chain_file(
            server.deploy_dir, lineage, leaf.key_pem + leaf.fullchain_pem
        )
        names = build_served_names(
            hostnames or (lineage,), hostnames is not None, leaf_dns_names(leaf.cert)
        )
        certificates.append(SniCertificate(lineage, algorithm, names, path))
    table = write_sni_table(
        server.deploy_dir, build_sni_entries(certificates), config_dir=server.config_dir
    )
    write_parameter_changes(
        server.config_dir,
        {
            "smtpd_tls_chain_files": build_chain_files_value([default_path]),
            "tls_server_sni_maps": build_sni_maps_value(table),
        },
    )
    reload_postfix(server.config_dir)
    return certificates


def served(server: PostfixInstance, name: str, *options: str) -> x509.Certificate:
    return server.served_certificate("-servername", name, *options)


class TestWildcard:
    """A wildcard certificate is keyed by its parent domain and probed under a concrete name."""

    def test_concrete_names_under_the_wildcard_get_it(
        self, postfix: PostfixInstance, hierarchy: Hierarchy
    ) -> None:
        default = issue(hierarchy, [MX])
        wild = issue(hierarchy, ["*.hosted.test"])
        certificates = deploy(postfix, default, [("hosted.test", wild, "ecdsa", None)])
        assert eventually(lambda: served(postfix, "a.hosted.test") == wild.cert)
        assert served(postfix, "b.hosted.test") == wild.cert
        assert served(postfix, "other.test") == default.cert

        # The probe is given the configured wildcard and asks for a name under it.
        (name,) = build_probe_names(certificates).values()
        assert name == "danesync-probe.hosted.test"
        assert probe.probe_starttls(postfix.host, postfix.port, name) == der(wild.cert)
        assert probe.probe_starttls(postfix.host, postfix.port, "*.hosted.test") == der(wild.cert)
        assert "is invalid" not in postfix.maillog  # Postfix never saw "*.hosted.test"


class TestRsaAndEcdsaForOneName:
    """One entry lists both files: each client gets the chain of the algorithm it can use."""

    def test_each_algorithm_gets_its_chain(
        self, postfix: PostfixInstance, hierarchy: Hierarchy
    ) -> None:
        default = issue(hierarchy, [MX])
        rsa_leaf = issue(hierarchy, ["shared.hosted.test"], "rsa")
        ec_leaf = issue(hierarchy, ["shared.hosted.test"], "ec256")
        certificates = deploy(
            postfix,
            default,
            [
                ("shared-rsa", rsa_leaf, "rsa", ("shared.hosted.test",)),
                ("shared-ec", ec_leaf, "ecdsa", ("shared.hosted.test",)),
            ],
        )
        name = "shared.hosted.test"
        assert eventually(lambda: served(postfix, name, *RSA_ONLY) == rsa_leaf.cert)
        assert served(postfix, name, *ECDSA_ONLY) == ec_leaf.cert
        names = build_probe_names(certificates)
        assert names == {"shared-rsa": name, "shared-ec": name}
        for algorithm, leaf in (("rsa", rsa_leaf), ("ecdsa", ec_leaf)):
            assert probe.probe_starttls(
                postfix.host, postfix.port, name, key_algorithm=algorithm
            ) == der(leaf.cert)

    def test_rsa_wildcard_and_ecdsa_name_under_it(
        self, postfix: PostfixInstance, hierarchy: Hierarchy
    ) -> None:
        # The exact key hides the wildcard from Postfix: it must list the RSA file too.
        default = issue(hierarchy, [MX])
        wild_rsa = issue(hierarchy, ["*.hosted.test"], "rsa")
        a_ec = issue(hierarchy, ["a.hosted.test"], "ec256")
        deploy(
            postfix,
            default,
            [("wild-rsa", wild_rsa, "rsa", None), ("a-ec", a_ec, "ecdsa", None)],
        )
        assert eventually(lambda: served(postfix, "a.hosted.test", *RSA_ONLY) == wild_rsa.cert)
        assert served(postfix, "a.hosted.test", *ECDSA_ONLY) == a_ec.cert
        assert served(postfix, "b.hosted.test", *RSA_ONLY) == wild_rsa.cert


class TestManyNames:
    """Every DNS name of the leaf is served unless hostnames narrows the list."""

    def test_all_100_names_are_served(self, postfix: PostfixInstance, hierarchy: Hierarchy) -> None:
        names = [f"d{i:03}.hosted.test" for i in range(100)]
        default = issue(hierarchy, [MX])
        big = issue(hierarchy, names)
        deploy(postfix, default, [("d000.hosted.test", big, "ecdsa", None)])
        assert eventually(lambda: served(postfix, names[-1]) == big.cert)
        for name in names[::9]:  # an independent client on a sample
            assert served(postfix, name) == big.cert, name
        for name in names:  # danesync's own probe on all
            assert probe.probe_starttls(postfix.host, postfix.port, name) == der(big.cert), name

    def test_hostnames_narrow_the_names(
        self, postfix: PostfixInstance, hierarchy: Hierarchy, tmp_path: Path
    ) -> None:
        default = issue(hierarchy, [MX])
        big = issue(hierarchy, ["a.hosted.test", "b.hosted.test"])
        deploy(postfix, default, [("a.hosted.test", big, "ecdsa", ("a.hosted.test",))])
        assert eventually(lambda: served(postfix, "a.hosted.test") == big.cert)
        assert served(postfix, "b.hosted.test") == default.cert
