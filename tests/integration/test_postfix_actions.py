"""danesync's Postfix actions against a real, private Postfix.

Every served chain is looked at by two clients that share no code with the
deploy: danesync's own probe, and ``openssl s_client`` (which also verifies
DANE). Postfix itself reads the files, the parameters and the SNI table.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from danesync.actions import files, probe
from danesync.actions.postfix import (
    build_chain_files_value,
    build_sni_maps_value,
    read_parameters,
    reload_postfix,
    write_parameter_changes,
    write_parameters,
    write_sni_table,
)
from danesync.actions.postfix_audit import read_tls_audit
from danesync.errors import PostfixError, ProbeError
from danesync.tlsa import spki_sha256
from tests.harness.certs import Hierarchy, KeyKind, Leaf
from tests.harness.postfix import PostfixInstance, free_port, postfix_fixture

pytestmark = pytest.mark.integration

postfix_server = postfix_fixture("postfix_server")
fresh_postfix = postfix_fixture("fresh_postfix", scope="function")

MX = "mx.example.test"


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy("Postfix test")


def issue(hierarchy: Hierarchy, hostnames: list[str], key_kind: KeyKind = "ec256") -> Leaf:
    """A leaf valid now (the harness's fixed NOW is for the pure tests)."""
    now = dt.datetime.now(dt.UTC)
    return hierarchy.issue(
        hostnames,
        key_kind=key_kind,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=89),
    )


def chain_pem(leaf: Leaf) -> bytes:
    """Postfix's race-free form: key, leaf, intermediates."""
    return leaf.key_pem + leaf.fullchain_pem


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def eventually(check: Callable[[], bool], timeout: float = 10) -> bool:
    """A reload is asynchronous: poll `check` for a while."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def deploy_default(
    server: PostfixInstance, chains: Mapping[str, Leaf], sni_maps: str = ""
) -> dict[str, str]:
    """One pass as `sync` does it: files, one postconf -e (if needed), one reload."""
    paths = [
        files.install_chain_file(server.deploy_dir, lineage, chain_pem(leaf))
        for lineage, leaf in chains.items()
    ]
    previous = write_parameter_changes(
        server.config_dir,
        {
            "smtpd_tls_chain_files": build_chain_files_value(paths),
            "tls_server_sni_maps": sni_maps,
        },
    )
    reload_postfix(server.config_dir)
    return previous


def served_by_probe(server: PostfixInstance, servername: str | None = None) -> bytes:
    return probe.probe_starttls(server.host, server.port, servername=servername)


class TestDeploy:
    """First deploy and renewal: the new leaf is served after one reload."""

    def test_first_deploy_then_renewal(
        self, fresh_postfix: PostfixInstance, hierarchy: Hierarchy
    ) -> None:
        server = fresh_postfix
        # Nothing deployed: Postfix offers STARTTLS but cannot do it.
        with pytest.raises(ProbeError, match="STARTTLS refused: 454"):
            served_by_probe(server)

        first = issue(hierarchy, [MX])
        previous = deploy_default(server, {"mx": first})
        assert previous == {"smtpd_tls_chain_files": None}  # only what changed: it was absent
        assert probe.wait_for_leaf(server.host, server.port, der(first.cert))
        assert server.served_certificate() == first.cert  # an independent client agrees

        # Renewal with a new key: same file name, so no main.cf change at all.
        main_cf = server.config_dir / "main.cf"
        before = main_cf.stat()
        second = issue(hierarchy, [MX])
        assert deploy_default(server, {"mx": second}) == {}
        after = main_cf.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert probe.wait_for_leaf(server.host, server.port, der(second.cert))
        assert eventually(lambda: server.served_certificate() == second.cert)
        assert (server.deploy_dir / "mx.pem.prev").read_bytes() == chain_pem(first)

    def test_missing_chain_file_breaks_every_handshake(
        self, postfix_server: PostfixInstance
    ) -> None:
        """Why danesync never leaves the configured path missing (DESIGN.md)."""
        server = postfix_server
        write_parameter_changes(
            server.config_dir, {"smtpd_tls_chain_files": str(server.deploy_dir / "none.pem")}
        )
        reload_postfix(server.config_dir)
        with pytest.raises(ProbeError, match="TLS handshake failed"):
            served_by_probe(server)
        assert eventually(lambda: "error opening chain file" in server.maillog)


class TestRollback:
    """A failed reload: restoring the file (and parameters) keeps the old leaf served."""

    def test_broken_main_cf(self, postfix_server: PostfixInstance, hierarchy: Hierarchy) -> None:
        server = postfix_server
        good = issue(hierarchy, [MX])
        mark = len(server.maillog)
        deploy_default(server, {"mx": good})
        assert probe.wait_for_leaf(server.host, server.port, der(good.cert))
        # The master re-reads main.cf after `postfix reload` returned: let it
        # finish before main.cf breaks, or the master itself reads the typo.
        assert server.wait_for_log("reload --", mark)

        main_cf = server.config_dir / "main.cf"
        healthy = main_cf.read_text()
        candidate = issue(hierarchy, [MX])
        files.install_chain_file(server.deploy_dir, "mx", chain_pem(candidate))
        main_cf.write_text(healthy + "an operator's typo\n")
        try:
            with pytest.raises(PostfixError) as caught:
                reload_postfix(server.config_dir)
            # The reason Postfix gives only on a terminal reaches the error.
            assert "missing '=' after attribute name" in str(caught.value)
            assert files.restore_chain_file(server.deploy_dir, "mx")
        finally:
            main_cf.write_text(healthy)
        assert (server.deploy_dir / "mx.pem").read_bytes() == chain_pem(good)

        # Whatever reloads Postfix next (the operator, a restart) serves the old chain.
        reload_postfix(server.config_dir)
        assert probe.wait_for_leaf(server.host, server.port, der(good.cert))
        assert eventually(lambda: server.served_certificate() == good.cert)
        assert served_by_probe(server) != der(candidate.cert)

    def test_postfix_not_running(
        self, postfix_server: PostfixInstance, hierarchy: Hierarchy
    ) -> None:
        server = postfix_server
        old = issue(hierarchy, [MX])
        deploy_default(server, {"mx": old})
        old_value = read_parameters(server.config_dir, ["smtpd_tls_chain_files"])
        with server.stopped():
            new = issue(hierarchy, [MX])
            with pytest.raises(PostfixError, match="not running"):
                deploy_default(server, {"new-lineage": new})
            # Roll back: a first deploy has no .prev; the parameter goes back.
            assert not files.restore_chain_file(server.deploy_dir, "new-lineage")
            write_parameters(server.config_dir, old_value)
        assert read_parameters(server.config_dir, ["smtpd_tls_chain_files"]) == old_value
        assert probe.wait_for_leaf(server.host, server.port, der(old.cert))
        assert server.served_certificate() == old.cert


class TestTwoAlgorithms:
    """An RSA and an ECDSA lineage for one host: each served to a client that wants it."""

    def test_rsa_and_ecdsa(self, postfix_server: PostfixInstance, hierarchy: Hierarchy) -> None:
        server = postfix_server
        rsa = issue(hierarchy, [MX], key_kind="rsa")
        ecdsa = issue(hierarchy, [MX], key_kind="ec256")
        deploy_default(server, {"mx-rsa": rsa, "mx-ecdsa": ecdsa})
        value = read_parameters(server.config_dir, ["smtpd_tls_chain_files"])
        assert value["smtpd_tls_chain_files"] == (
            f"{server.deploy_dir}/mx-rsa.pem, {server.deploy_dir}/mx-ecdsa.pem"
        )
        clients = {
            # TLS 1.3: the signature algorithms choose the certificate.
            ("-sigalgs", "ecdsa_secp256r1_sha256"): ecdsa,
            ("-sigalgs", "rsa_pss_rsae_sha256:rsa_pkcs1_sha256"): rsa,
            # TLS 1.2: the cipher suite does.
            ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"): ecdsa,
            ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"): rsa,
        }
        for options, leaf in clients.items():
            assert eventually(lambda o=options, c=leaf.cert: server.served_certificate(*o) == c), (
                options
            )


class TestSni:
    """tls_server_sni_maps: each name gets its chain, clients without SNI the default."""

    def test_two_names_and_default(
        self, postfix_server: PostfixInstance, hierarchy: Hierarchy
    ) -> None:
        server = postfix_server
        default = issue(hierarchy, [MX])
        one = issue(hierarchy, ["one.example.test"])
        two = issue(hierarchy, ["two.example.test", "*.two.example.test"])
        one_path = files.install_chain_file(server.deploy_dir, "one", chain_pem(one))
        two_path = files.install_chain_file(server.deploy_dir, "two", chain_pem(two))
        table = write_sni_table(
            server.deploy_dir,
            {
                "one.example.test": one_path,
                "two.example.test": two_path,
                "*.two.example.test": two_path,
            },
            config_dir=server.config_dir,
        )
        assert table == server.deploy_dir / "sni"
        deploy_default(server, {"mx": default}, sni_maps=build_sni_maps_value(table))

        expected = {
            "one.example.test": one,
            "two.example.test": two,
            "mail.two.example.test": two,  # through the ".two.example.test" key
            "unknown.example.test": default,
        }
        for name, leaf in expected.items():
            assert eventually(
                lambda n=name, c=leaf.cert: server.served_certificate("-servername", n) == c
            ), name
            assert served_by_probe(server, servername=name) == der(leaf.cert)
        assert server.served_certificate() == default.cert  # no SNI at all
        assert served_by_probe(server) == der(default.cert)

    def test_rebuilt_table_serves_the_renewed_chain(
        self, postfix_server: PostfixInstance, hierarchy: Hierarchy
    ) -> None:
        server = postfix_server
        first = issue(hierarchy, ["renew.example.test"])
        path = files.install_chain_file(server.deploy_dir, "renew", chain_pem(first))
        table = write_sni_table(
            server.deploy_dir, {"renew.example.test": path}, config_dir=server.config_dir
        )
        deploy_default(server, {"mx": issue(hierarchy, [MX])}, build_sni_maps_value(table))
        assert probe.wait_for_leaf(
            server.host, server.port, der(first.cert), servername="renew.example.test"
        )

        database = server.deploy_dir / "sni.db"
        before = database.stat()
        second = issue(hierarchy, ["renew.example.test"])
        files.install_chain_file(server.deploy_dir, "renew", chain_pem(second))
        write_sni_table(
            server.deploy_dir, {"renew.example.test": path}, config_dir=server.config_dir
        )
        after = database.stat()
        assert after.st_ino != before.st_ino  # a new file renamed in, not rewritten in place
        assert after.st_mode & 0o777 == 0o600  # it holds private keys
        # postmap -F stored the file's contents: the new chain needs the rebuild.
        # Same table path: the parameter stays; one reload makes smtpd use the new table.
        wanted = {"tls_server_sni_maps": build_sni_maps_value(table)}
        assert write_parameter_changes(server.config_dir, wanted) == {}
        reload_postfix(server.config_dir)
        assert probe.wait_for_leaf(
            server.host, server.port, der(second.cert), servername="renew.example.test"
        )
        leftovers = {
            p.name for p in server.deploy_dir.iterdir() if ".new" in p.name or ".tmp" in p.name
        }
        assert leftovers == set()

    def test_unreadable_chain_keeps_the_old_table(
        self, postfix_server: PostfixInstance, hierarchy: Hierarchy, tmp_path: Path
    ) -> None:
        server = postfix_server
        deploy = tmp_path / "deploy"
        good = files.install_chain_file(deploy, "good", chain_pem(issue(hierarchy, [MX])))
        write_sni_table(deploy, {"good.example.test": good}, config_dir=server.config_dir)
        before = (deploy / "sni.db").read_bytes()
        # postmap itself only warns and skips the entry, exiting 0.
        with pytest.raises(PostfixError, match="No such file"):
            write_sni_table(
                deploy,
                {"good.example.test": good, "gone.example.test": deploy / "gone.pem"},
                config_dir=server.config_dir,
            )
        assert (deploy / "sni.db").read_bytes() == before
        assert sorted(p.name for p in deploy.iterdir()) == ["good.pem", "sni", "sni.db"]


class TestDane:
    """OpenSSL's own DANE code accepts the served chain against the computed records."""

    def test_dane_ta_and_ee(self, postfix_server: PostfixInstance, hierarchy: Hierarchy) -> None:
        server = postfix_server
        leaf = issue(hierarchy, [MX])
        deploy_default(server, {"mx": leaf})
        assert probe.wait_for_leaf(server.host, server.port, der(leaf.cert))

        ta = f"2 1 1 {spki_sha256(hierarchy.intermediate)}"
        ok, output = server.dane_verify(MX, ta)
        assert ok, output
        # OpenSSL 3.5 (Debian 13) says "matched the TA certificate"
        assert re.search(r"matched (the )?TA certificate at depth 1", output), output

        ee = f"3 1 1 {spki_sha256(leaf.cert)}"
        ok, output = server.dane_verify(MX, ee)
        assert ok, output

    def test_wrong_record_fails(
        self, postfix_server: PostfixInstance, hierarchy: Hierarchy
    ) -> None:
        server = postfix_server
        leaf = issue(hierarchy, [MX])
        deploy_default(server, {"mx": leaf})
        assert probe.wait_for_leaf(server.host, server.port, der(leaf.cert))
        digest = spki_sha256(hierarchy.intermediate)
        wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
        ok, output = server.dane_verify(MX, f"2 1 1 {wrong}")
        assert not ok
        assert "no matching DANE TLSA records" in output
        # The right record for another name fails too: DANE-TA checks the name.
        ok, output = server.dane_verify("other.example.test", f"2 1 1 {digest}")
        assert not ok


class TestParametersAndAudit:
    """postconf batching, "only when needed", and the TLS audit on a real main.cf."""

    def test_one_call_sets_everything_and_nothing_changes_twice(
        self, postfix_server: PostfixInstance
    ) -> None:
        server = postfix_server
        wanted = {
            "smtpd_tls_loglevel": "2",
            "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
            "smtpd_banner": "$myhostname ESMTP = batched",
        }
        write_parameters(server.config_dir, wanted)
        assert read_parameters(server.config_dir, [*wanted, "no_such_parameter"]) == wanted
        main_cf = server.config_dir / "main.cf"
        before = main_cf.stat()
        assert write_parameter_changes(server.config_dir, wanted) == {}
        after = main_cf.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        with pytest.raises(ValueError, match="spans lines"):
            write_parameters(server.config_dir, {"smtpd_banner": "a\nb = c"})

    def test_audit(self, postfix_server: PostfixInstance, hierarchy: Hierarchy) -> None:
        server = postfix_server
        chain = files.install_chain_file(
            server.deploy_dir, "audit", chain_pem(issue(hierarchy, [MX]))
        )
        gone = server.deploy_dir / "gone.pem"
        write_parameters(
            server.config_dir,
            {
                "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
                "smtpd_tls_chain_files": str(chain),
                "smtpd_tls_cert_file": "",
            },
        )
        assert read_tls_audit(server.config_dir) == []

        write_parameters(
            server.config_dir,
            {
                "smtpd_tls_mandatory_protocols": "!SSLv2, !SSLv3",
                "smtpd_tls_cert_file": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
                "smtpd_tls_chain_files": f"{chain}, {gone}",
            },
        )
        try:
            warnings = read_tls_audit(server.config_dir)
        finally:
            write_parameters(server.config_dir, {"smtpd_tls_cert_file": ""})
        # The weak mandatory protocols do not apply: this smtpd is at `may`.
        assert len(warnings) == 2, warnings
        # smtpd_tls_key_file defaults to $smtpd_tls_cert_file: both are in effect.
        assert warnings[0].startswith(
            "smtpd_tls_cert_file, smtpd_tls_key_file are set but Postfix ignores them"
        )
        assert warnings[1] == (
            f"smtpd_tls_chain_files: {gone}: cannot be read: No such file or directory"
        )


class TestProbe:
    """probe_starttls says which step failed; wait_for_leaf gives up after its deadline."""

    def test_nothing_listening(self) -> None:
        with pytest.raises(ProbeError, match="cannot connect"):
            probe.probe_starttls("127.0.0.1", free_port(), timeout=2)

    def test_starttls_not_offered(self, postfix_server: PostfixInstance) -> None:
        server = postfix_server
        write_parameters(server.config_dir, {"smtpd_tls_security_level": "none"})
        try:
            reload_postfix(server.config_dir)
            assert eventually(lambda: _probe_reason(server) == "STARTTLS is not offered")
        finally:
            write_parameters(server.config_dir, {"smtpd_tls_security_level": "may"})
            reload_postfix(server.config_dir)

    def test_wait_for_leaf_false_for_another_leaf(
        self, postfix_server: PostfixInstance, hierarchy: Hierarchy
    ) -> None:
        server = postfix_server
        served = issue(hierarchy, [MX])
        deploy_default(server, {"mx": served})
        assert probe.wait_for_leaf(server.host, server.port, der(served.cert))
        other = issue(hierarchy, [MX])
        started = time.monotonic()
        assert not probe.wait_for_leaf(
            server.host, server.port, der(other.cert), deadline=1, interval=0.2
        )
        assert time.monotonic() - started < 3


def _probe_reason(server: PostfixInstance) -> str:
    try:
        served_by_probe(server)
    except ProbeError as error:
        return str(error).split(": ", 1)[1]
    return "served"
