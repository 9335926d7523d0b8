"""danesync's Postfix actions on Debian's stock main.cf and master.cf (issue 16, 4 and 7).

The instance is `StockDebianPostfix`: main.cf as the package's postinst
writes it (snakeoil in smtpd_tls_cert_file/key_file), master.cf as shipped
(smtpd chrooted), plus submission and smtps as the TLS guides add them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from danesync.actions import files, probe
from danesync.actions.execute import run_command_full
from danesync.actions.postfix import (
    build_chain_files_value,
    build_legacy_removals,
    build_removed_parameters_notice,
    reload_postfix,
    write_parameter_changes,
    write_parameters,
)
from danesync.actions.postfix_audit import read_service_tls_notices, read_tls_audit
from tests.conftest import require_program, require_root
from tests.harness.certs import Hierarchy
from tests.harness.stock_postfix import StockDebianPostfix

pytestmark = pytest.mark.integration

MX = "mx.example.test"
LEGACY_WARNING = "Both smtpd_tls_chain_files and one or more of the legacy"


@pytest.fixture
def stock() -> Iterator[StockDebianPostfix]:
    require_root()
    require_program("postfix")
    require_program("openssl")
    with StockDebianPostfix() as instance:
        yield instance


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def eventually(check: Callable[[], bool], timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def explicit(server: StockDebianPostfix) -> str:
    """main.cf as Postfix reads it: every parameter it sets.

    Without config_directory: Postfix 3.10's `postconf -c DIR -n` lists it
    (DIR) for a main.cf last changed more than a few seconds ago, not for one
    just edited (measured on Debian 13); main.cf does not set it.
    """
    lines = server.postconf("-n").splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("config_directory ="))


class TestStockMainCf:
    """The first deploy takes the snakeoil parameters out; a rollback puts them back."""

    def test_it_is_debians(self, stock: StockDebianPostfix) -> None:
        # The instance's own settings replace Debian's in place: a parameter set
        # twice makes every Postfix program warn at each start, enough warnings
        # to block postlogd and all of Postfix (see stock_postfix._set_in_place).
        postconf = run_command_full(["postconf", "-c", str(stock.config_dir), "-n"])
        assert "overriding earlier entry" not in postconf.stderr, postconf.stderr
        assert stock.postconf("-h", "smtpd_tls_cert_file").strip() == str(stock.snakeoil_cert)
        smtpd = stock.postconf("-M", f"127.0.0.1:{stock.port}/inet").split()
        assert smtpd[4] == "y"  # chrooted, as shipped
        assert stock.served_certificate().subject.rfc4514_string() == "CN=snakeoil"

    def test_first_deploy_and_rollback(self, stock: StockDebianPostfix) -> None:
        before = explicit(stock)
        leaf = Hierarchy("Stock").issue([MX])
        path = files.install_chain_file(stock.deploy_dir, "mx", leaf.key_pem + leaf.fullchain_pem)
        wanted: dict[str, str | None] = {"smtpd_tls_chain_files": build_chain_files_value([path])}
        wanted |= build_legacy_removals(wanted)
        previous = write_parameter_changes(stock.config_dir, wanted)
        assert previous == {
            "smtpd_tls_chain_files": None,
            "smtpd_tls_cert_file": str(stock.snakeoil_cert),
            "smtpd_tls_key_file": str(stock.snakeoil_key),
        }
        notice = build_removed_parameters_notice(previous)
        assert notice is not None and str(stock.snakeoil_cert) in notice
        settings = explicit(stock)
        assert "smtpd_tls_cert_file" not in settings and "smtpd_tls_key_file" not in settings
        mark = len(stock.maillog)
        reload_postfix(stock.config_dir)
        assert probe.wait_for_leaf(stock.host, stock.port, der(leaf.cert))
        assert stock.served_certificate() == leaf.cert
        assert stock.wait_for_log("disconnect from", mark)
        assert LEGACY_WARNING not in stock.maillog[mark:]

        # A second pass changes nothing.
        assert write_parameter_changes(stock.config_dir, wanted) == {}

        # Rollback: main.cf is as Debian wrote it again, the snakeoil served.
        write_parameters(stock.config_dir, previous)
        assert explicit(stock) == before
        reload_postfix(stock.config_dir)
        assert eventually(
            lambda: stock.served_certificate().subject.rfc4514_string() == "CN=snakeoil"
        )

    def test_legacy_parameters_left_beside_chain_files_warn(
        self, stock: StockDebianPostfix
    ) -> None:
        # What happens without the removal: Postfix warns at every smtpd start.
        leaf = Hierarchy("Stock").issue([MX])
        path = files.install_chain_file(stock.deploy_dir, "mx", leaf.key_pem + leaf.fullchain_pem)
        write_parameter_changes(stock.config_dir, {"smtpd_tls_chain_files": str(path)})
        mark = len(stock.maillog)
        reload_postfix(stock.config_dir)
        assert probe.wait_for_leaf(stock.host, stock.port, der(leaf.cert))
        assert stock.wait_for_log(LEGACY_WARNING, mark)
        warnings = read_tls_audit(stock.config_dir, stock.deploy_dir)
        assert any("ignores them" in w for w in warnings)


class TestStockAudit:
    """check's audit on a stock host: no noise, and the guide-style services named."""

    def test_no_mandatory_protocols_warning_and_the_submission_service(
        self, stock: StockDebianPostfix
    ) -> None:
        # Postfix's default smtpd_tls_mandatory_protocols (>=TLSv1) applies to the
        # submission service (encrypt) only; port 25 is at `may`.
        assert stock.postconf("-h", "smtpd_tls_mandatory_protocols").strip() == ">=TLSv1"
        warnings = read_tls_audit(stock.config_dir, stock.deploy_dir)
        assert not any(f"'127.0.0.1:{stock.port}'" in w for w in warnings), warnings
        # Before danesync sets smtpd_tls_chain_files, submission serves its own.
        (notice,) = read_service_tls_notices(stock.config_dir, stock.deploy_dir)
        guide = str(stock.guide_cert)
        assert notice.startswith(
            f"master.cf service 127.0.0.1:{stock.submission_port}/inet serves a certificate"
            f" of its own (-o smtpd_tls_cert_file={guide}, -o smtpd_tls_key_file={guide})"
        )
        assert notice in warnings
        own = probe.probe_starttls(stock.host, stock.submission_port)
        assert x509.load_der_x509_certificate(own).subject.rfc4514_string() == "CN=submission"


class TestSmtps:
    """smtps (implicit TLS, port 465) serves main.cf's chain and is probed on its port."""

    def test_probe_on_the_smtps_port(self, stock: StockDebianPostfix) -> None:
        hierarchy = Hierarchy("Stock")
        rsa = hierarchy.issue([MX], key_kind="rsa")
        ecdsa = hierarchy.issue([MX], key_kind="ec256")
        paths = [
            files.install_chain_file(stock.deploy_dir, name, leaf.key_pem + leaf.fullchain_pem)
            for name, leaf in (("mx-rsa", rsa), ("mx-ec", ecdsa))
        ]
        wanted: dict[str, str | None] = {"smtpd_tls_chain_files": build_chain_files_value(paths)}
        write_parameter_changes(stock.config_dir, wanted | build_legacy_removals(wanted))
        reload_postfix(stock.config_dir)
        assert eventually(
            lambda: (
                probe.probe_implicit_tls(stock.host, stock.smtps_port, key_algorithm="rsa")
                == der(rsa.cert)
            )
        )
        assert probe.probe_implicit_tls(
            stock.host, stock.smtps_port, MX, key_algorithm="ecdsa"
        ) == der(ecdsa.cert)
        with pytest.raises(probe.ProbeError):  # no STARTTLS there
            probe.probe_starttls(stock.host, stock.smtps_port, timeout=2)
        # Measured: with smtpd_tls_chain_files in main.cf, Postfix ignores the
        # submission service's -o smtpd_tls_cert_file; it serves danesync's chains.
        assert probe.probe_starttls(stock.host, stock.submission_port, key_algorithm="rsa") == der(
            rsa.cert
        )
        (notice,) = read_service_tls_notices(stock.config_dir, stock.deploy_dir)
        assert "Postfix ignores them because smtpd_tls_chain_files is set" in notice
