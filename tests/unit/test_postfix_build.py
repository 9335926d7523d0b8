"""The pure side of danesync.actions.postfix: parameter values, the SNI table, the audit."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from danesync.actions.postfix import (
    build_chain_files_value,
    build_legacy_removals,
    build_parameter_changes,
    build_parameters_from_output,
    build_removed_parameters_notice,
    build_sni_maps_value,
    build_sni_table_source,
)
from danesync.actions.postfix_audit import (
    Service,
    ServiceOverride,
    build_protocols_allowed,
    build_service_overrides_from_output,
    build_service_tls_notices,
    build_services_from_output,
    build_tls_audit,
)
from danesync.sni import build_sni_key

# What a sound Postfix 3.7 setup for danesync looks like, as postconf -x shows it.
GOOD = {
    "inet_interfaces": "all",
    "smtpd_use_tls": "no",
    "smtpd_enforce_tls": "no",
    "smtpd_tls_security_level": "may",
    "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
    "smtpd_tls_chain_files": "/etc/postfix/danesync/mx.pem",
    "smtpd_tls_cert_file": "",
    "smtpd_tls_key_file": "",
    "smtpd_tls_eccert_file": "",
    "smtpd_tls_eckey_file": "",
    "smtpd_tls_dcert_file": "",
    "smtpd_tls_dkey_file": "",
}
SMTP = Service("smtp", "inet", "smtpd")
SUBMISSION_ENCRYPT = Service(
    "submission", "inet", "smtpd", (("smtpd_tls_security_level", "encrypt"),)
)


class TestParameters:
    """Reading postconf output and deciding what must change."""

    def test_parse_postconf_output(self) -> None:
        output = (
            "smtpd_tls_chain_files = /a.pem, /b.pem\n"
            "relayhost =\n"
            "smtpd_banner = $myhostname ESMTP = odd\n"
        )
        assert build_parameters_from_output(output) == {
            "smtpd_tls_chain_files": "/a.pem, /b.pem",
            "relayhost": "",
            "smtpd_banner": "$myhostname ESMTP = odd",
        }

    def test_same_list_with_other_separators_is_no_change(self) -> None:
        current = {"smtpd_tls_chain_files": "/a.pem,/b.pem"}
        assert build_parameter_changes(current, {"smtpd_tls_chain_files": "/a.pem, /b.pem"}) == {}

    def test_changed_missing_and_reordered_values_change(self) -> None:
        current = {"a": "1", "c": "/x /y"}
        wanted = {"a": "2", "b": "", "c": "/y /x"}
        assert build_parameter_changes(current, wanted) == wanted

    def test_unchanged_values_are_left_out(self) -> None:
        current = {"a": "1", "b": "2"}
        assert build_parameter_changes(current, {"a": "1", "b": "3"}) == {"b": "3"}

    def test_none_removes_only_what_main_cf_sets(self) -> None:
        current = {"a": "1", "b": "", "c": "3"}
        wanted: dict[str, str | None] = {"a": None, "b": None, "c": "3"}
        assert build_parameter_changes(current, wanted, explicit={"a"}) == {"a": None}
        assert build_parameter_changes(current, wanted) == {}

    def test_legacy_removals_come_with_chain_files(self) -> None:
        removals = build_legacy_removals({"smtpd_tls_chain_files": "/d/mx.pem"})
        assert removals == {
            "smtpd_tls_cert_file": None,
            "smtpd_tls_key_file": None,
            "smtpd_tls_eccert_file": None,
            "smtpd_tls_eckey_file": None,
            "smtpd_tls_dcert_file": None,
            "smtpd_tls_dkey_file": None,
        }
        # SNI only: the legacy files still serve clients without SNI.
        assert build_legacy_removals({"tls_server_sni_maps": "hash:/d/sni"}) == {}

    def test_removed_parameters_notice(self) -> None:
        previous = {
            "smtpd_tls_chain_files": None,
            "smtpd_tls_key_file": "/etc/ssl/private/ssl-cert-snakeoil.key",
            "smtpd_tls_cert_file": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
        }
        notice = build_removed_parameters_notice(previous)
        assert notice is not None
        assert notice.startswith(
            "removed from main.cf: smtpd_tls_cert_file = /etc/ssl/certs/ssl-cert-snakeoil.pem;"
            " smtpd_tls_key_file = /etc/ssl/private/ssl-cert-snakeoil.key"
        )
        assert "a rollback restores them" in notice
        assert build_removed_parameters_notice({"smtpd_tls_chain_files": "/x"}) is None

    @given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.text()))
    def test_applying_the_changes_leaves_nothing_to_change(self, wanted: dict[str, str]) -> None:
        current = dict(build_parameter_changes({}, wanted))
        assert build_parameter_changes(current, wanted) == {}

    def test_chain_files_value(self) -> None:
        paths = [Path("/d/rsa.pem"), "/d/ecdsa.pem", Path("/d/rsa.pem")]
        assert build_chain_files_value(paths) == "/d/rsa.pem, /d/ecdsa.pem"
        assert build_chain_files_value([]) == ""

    @pytest.mark.parametrize("path", ["relative.pem", "/with space.pem", "/a,b.pem"])
    def test_chain_files_value_rejects_what_postfix_would_split(self, path: str) -> None:
        with pytest.raises(ValueError, match="absolute path"):
            build_chain_files_value([path])


class TestSniTable:
    """The postmap -F source that tls_server_sni_maps is compiled from."""

    @pytest.mark.parametrize(
        ("hostname", "key"),
        [
            ("mx.example.test", "mx.example.test"),
            ("MX.Example.TEST.", "mx.example.test"),
            ("*.example.test", ".example.test"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ],
    )
    def test_keys(self, hostname: str, key: str) -> None:
        assert build_sni_key(hostname) == key

    @pytest.mark.parametrize("hostname", ["", "bücher.example", "a b", "#x", 'a"b'])
    def test_bad_keys(self, hostname: str) -> None:
        with pytest.raises(ValueError, match="SNI name"):
            build_sni_key(hostname)

    def test_source_is_sorted_with_one_line_per_name(self) -> None:
        source = build_sni_table_source(
            {
                "two.example.test": Path("/d/two.pem"),
                "One.example.test": [Path("/d/one-rsa.pem"), Path("/d/one-ecdsa.pem")],
            }
        ).decode()
        lines = [line for line in source.splitlines() if not line.startswith("#")]
        assert lines == [
            "one.example.test /d/one-rsa.pem, /d/one-ecdsa.pem",
            "two.example.test /d/two.pem",
        ]

    def test_duplicate_names_and_empty_values_are_errors(self) -> None:
        with pytest.raises(ValueError, match="twice"):
            build_sni_table_source({"a.test": Path("/1"), "A.test": Path("/2")})
        with pytest.raises(ValueError, match="no chain file"):
            build_sni_table_source({"a.test": []})

    def test_maps_value(self) -> None:
        assert build_sni_maps_value(Path("/etc/postfix/danesync/sni")) == (
            "hash:/etc/postfix/danesync/sni"
        )


class TestProtocols:
    """Postfix protocol lists, as smtpd_tls_mandatory_protocols takes them."""

    @pytest.mark.parametrize(
        ("value", "allowed"),
        [
            (">=TLSv1.2", ("TLSv1.2", "TLSv1.3")),
            (">=TLSv1", ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")),
            ("!SSLv2, !SSLv3", ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")),
            ("!SSLv2:!SSLv3:!TLSv1:!TLSv1.1", ("TLSv1.2", "TLSv1.3")),
            ("TLSv1.2 TLSv1.3", ("TLSv1.2", "TLSv1.3")),
            (">=TLSv1.1 <=TLSv1.2 !TLSv1.1", ("TLSv1.2",)),
            ("", ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")),
            (">=tlsv1.3", ("TLSv1.3",)),
        ],
    )
    def test_allowed(self, value: str, allowed: tuple[str, ...]) -> None:
        assert build_protocols_allowed(value) == allowed


class TestServices:
    """Parsing `postconf -M`."""

    def test_parse(self) -> None:
        output = (
            "smtp       inet  n       -       y       -       -       smtpd\n"
            "submission inet  n       -       y       -       -       smtpd"
            " -o syslog_name=postfix/submission -o smtpd_tls_security_level=encrypt\n"
            "127.0.0.1:2525 inet n - n - - smtpd -o { smtpd_banner = a b c }\n"
            "pickup     unix  n       -       y       60      1       pickup\n"
        )
        services = build_services_from_output(output)
        assert [s.name for s in services] == ["smtp", "submission", "127.0.0.1:2525", "pickup"]
        assert services[0] == SMTP
        assert services[1].parameter("smtpd_tls_security_level") == "encrypt"
        assert services[1].parameter("smtpd_tls_cert_file") is None
        assert services[2].parameter("smtpd_banner") == "a b c"
        assert (services[2].host, services[2].port) == ("127.0.0.1", "2525")
        assert (services[0].host, services[0].port) == (None, "smtp")
        assert Service("[::1]:25", "inet", "smtpd").host == "::1"


class TestTlsAudit:
    """build_tls_audit warns about what mail operators commonly get wrong."""

    def audit(self, services: list[Service] | None = None, **changes: str) -> list[str]:
        return build_tls_audit({**GOOD, **changes}, services)

    def test_sound_setup_has_no_warnings(self) -> None:
        assert self.audit() == []
        assert self.audit([SMTP, SUBMISSION_ENCRYPT]) == []

    def test_deprecated_parameters(self) -> None:
        (warning,) = self.audit(smtpd_use_tls="yes")
        assert "smtpd_use_tls is deprecated" in warning
        (warning,) = self.audit(smtpd_enforce_tls="yes")
        assert "smtpd_enforce_tls is deprecated" in warning

    def test_encrypt_on_public_port_25(self) -> None:
        (warning,) = self.audit(smtpd_tls_security_level="encrypt")
        assert "RFC 3207" in warning
        assert "'smtp'" in warning

    def test_encrypt_only_on_submission_is_fine(self) -> None:
        assert self.audit([SMTP, SUBMISSION_ENCRYPT]) == []

    def test_encrypt_override_on_the_port_25_service(self) -> None:
        smtp = Service("smtp", "inet", "smtpd", (("smtpd_tls_security_level", "encrypt"),))
        (warning,) = self.audit([smtp])
        assert "RFC 3207" in warning

    def test_encrypt_on_postscreen(self) -> None:
        postscreen = Service(
            "0.0.0.0:25", "inet", "postscreen", (("postscreen_tls_security_level", "encrypt"),)
        )
        assert len(self.audit([postscreen])) == 1

    def test_encrypt_on_loopback_is_not_public(self) -> None:
        assert self.audit(smtpd_tls_security_level="encrypt", inet_interfaces="loopback-only") == []
        local = Service("127.0.0.1:smtp", "inet", "smtpd")
        assert self.audit([local], smtpd_tls_security_level="encrypt") == []

    def test_encrypt_in_main_cf_without_a_port_25_service(self) -> None:
        high = Service("127.0.0.1:2526", "inet", "smtpd")
        assert self.audit([high], smtpd_tls_security_level="encrypt") == []

    def test_deprecated_enforce_tls_counts_as_encrypt(self) -> None:
        warnings = self.audit(smtpd_tls_security_level="", smtpd_enforce_tls="yes")
        assert any("RFC 3207" in w for w in warnings)

    def test_no_starttls_on_port_25(self) -> None:
        (warning,) = self.audit(smtpd_tls_security_level="")
        assert "does not offer STARTTLS" in warning

    @pytest.mark.parametrize(
        ("value", "weak"),
        [
            (">=TLSv1", "TLSv1, TLSv1.1"),
            ("!SSLv2, !SSLv3", "TLSv1, TLSv1.1"),
            ("", "SSLv2, SSLv3, TLSv1, TLSv1.1"),
            ("SSLv3 TLSv1.2", "SSLv3"),
        ],
    )
    def test_weak_mandatory_protocols(self, value: str, weak: str) -> None:
        (warning,) = self.audit([SMTP, SUBMISSION_ENCRYPT], smtpd_tls_mandatory_protocols=value)
        assert f"allows {weak} on 'submission', which requires TLS:" in warning

    def test_mandatory_protocols_on_smtps_and_per_service(self) -> None:
        smtps = Service(
            "smtps",
            "inet",
            "smtpd",
            (("smtpd_tls_wrappermode", "yes"), ("smtpd_tls_mandatory_protocols", ">=TLSv1.1")),
        )
        (warning,) = self.audit([SMTP, smtps])
        assert warning.startswith("smtpd_tls_mandatory_protocols = >=TLSv1.1 allows TLSv1.1 on")

    def test_stock_debian_port_25_at_may_is_not_flagged(self) -> None:
        # Postfix's own default (>=TLSv1) applies only where TLS is required.
        assert self.audit([SMTP], smtpd_tls_mandatory_protocols=">=TLSv1") == []
        assert self.audit(smtpd_tls_mandatory_protocols=">=TLSv1") == []

    def test_legacy_certificate_files_beside_chain_files(self) -> None:
        (warning,) = self.audit(
            smtpd_tls_cert_file="/etc/ssl/certs/ssl-cert-snakeoil.pem",
            smtpd_tls_key_file="/etc/ssl/private/ssl-cert-snakeoil.key",
        )
        assert warning.startswith("smtpd_tls_cert_file, smtpd_tls_key_file are set")
        assert "ignores them" in warning

    def test_legacy_certificate_files_alone_are_not_flagged(self) -> None:
        assert self.audit(smtpd_tls_chain_files="", smtpd_tls_cert_file="/c.pem") == []

    def test_missing_parameters_are_read_as_defaults(self) -> None:
        assert build_tls_audit({"smtpd_tls_security_level": "may"}) == []
        warnings = build_tls_audit({"smtpd_tls_security_level": "encrypt"})
        # An absent smtpd_tls_mandatory_protocols here is empty: everything allowed, flagged.
        assert len(warnings) == 2
        assert "smtpd_tls_mandatory_protocols = (empty)" in warnings[1]


class TestServiceCertificates:
    """master.cf services that serve a certificate of their own are reported."""

    OUTPUT = (
        "submission/inet/smtpd_tls_cert_file = /etc/letsencrypt/live/mx/fullchain.pem\n"
        "submission/inet/smtpd_tls_key_file = /etc/letsencrypt/live/mx/privkey.pem\n"
        "submission/inet/smtpd_tls_security_level = encrypt\n"
        "127.0.0.1:465/inet/smtpd_tls_chain_files = /etc/postfix/danesync/mx.pem\n"
        "127.0.0.1:465/inet/smtpd_tls_wrappermode = yes\n"
        "[::1]:587/inet/smtpd_tls_chain_files = /etc/postfix/danesync/mx.pem,/etc/x.pem\n"
        "relay/unix/smtp_tls_cert_file = /etc/client.pem\n"
        "smtps/inet/smtpd_tls_cert_file =\n"
    )

    def test_parse(self) -> None:
        overrides = build_service_overrides_from_output(self.OUTPUT)
        assert len(overrides) == 8
        assert overrides[3] == ServiceOverride(
            "127.0.0.1:465", "inet", "smtpd_tls_chain_files", "/etc/postfix/danesync/mx.pem"
        )
        assert overrides[5].where == "[::1]:587/inet"
        assert overrides[7].value == ""

    def test_notices_with_danesync_chain_files_in_main_cf(self) -> None:
        overrides = build_service_overrides_from_output(self.OUTPUT)
        notices = build_service_tls_notices(overrides, Path("/etc/postfix/danesync"))
        # 465 uses danesync's file; relay's is a client certificate; smtps's is empty.
        assert len(notices) == 2
        assert notices[0] == (
            "master.cf service submission/inet sets"
            " -o smtpd_tls_cert_file=/etc/letsencrypt/live/mx/fullchain.pem,"
            " -o smtpd_tls_key_file=/etc/letsencrypt/live/mx/privkey.pem: Postfix ignores them"
            " because smtpd_tls_chain_files is set (the service serves those chains and warns"
            " at every smtpd start); remove these overrides"
        )
        assert notices[1].startswith(
            "master.cf service [::1]:587/inet serves a certificate of its own"
            " (-o smtpd_tls_chain_files=/etc/postfix/danesync/mx.pem,/etc/x.pem):"
            " danesync does not update it"
        )
        assert "_587._tcp" in notices[1]

    def test_notices_without_chain_files_in_main_cf(self) -> None:
        overrides = build_service_overrides_from_output(self.OUTPUT)
        notices = build_service_tls_notices(
            overrides, Path("/etc/postfix/danesync"), chain_files_in_main=False
        )
        assert notices[0].startswith(
            "master.cf service submission/inet serves a certificate of its own"
            " (-o smtpd_tls_cert_file=/etc/letsencrypt/live/mx/fullchain.pem,"
        )

    def test_reference_to_main_cf_is_managed(self) -> None:
        overrides = [
            ServiceOverride("smtps", "inet", "smtpd_tls_chain_files", "$smtpd_tls_chain_files")
        ]
        assert build_service_tls_notices(overrides) == []
