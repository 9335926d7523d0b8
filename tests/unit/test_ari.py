"""Expiry warnings, the ARI notice decision and the RFC 9773 certificate identifier."""

from __future__ import annotations

import base64
import datetime as dt
import importlib.metadata

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st

from danesync.ari import (
    RenewalWindow,
    ari_support,
    build_next_check,
    build_renewal_identifier,
    plan_expiry_warnings,
    plan_renewal_notice,
)
from danesync.errors import AriError
from tests.harness.certs import NOW, Hierarchy, make_key

DAY = dt.timedelta(days=1)
SECOND = dt.timedelta(seconds=1)


def _window(start: dt.datetime, end: dt.datetime, url: str | None = None) -> RenewalWindow:
    return RenewalWindow(
        identifier="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE",
        start=start,
        end=end,
        explanation_url=url,
        next_check=start,
    )


def _unpad(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy("ARI")


class TestExpiryWarnings:
    """plan_expiry_warnings: error within 7 days, warning within 21, else nothing."""

    NOT_AFTER = NOW + 60 * DAY

    def _at(self, left: dt.timedelta) -> tuple[str, str] | None:
        return plan_expiry_warnings(self.NOT_AFTER, self.NOT_AFTER - left)

    def test_far_from_expiry(self) -> None:
        assert self._at(60 * DAY) is None

    def test_just_outside_21_days(self) -> None:
        assert self._at(21 * DAY + SECOND) is None

    def test_exactly_21_days_warns(self) -> None:
        assert self._at(21 * DAY) == ("warning", "expires in 21 days, at 2027-01-22T12:00:00Z")

    def test_just_outside_7_days_warns(self) -> None:
        result = self._at(7 * DAY + SECOND)
        assert result is not None and result[0] == "warning"

    def test_exactly_7_days_is_an_error(self) -> None:
        assert self._at(7 * DAY) == ("error", "expires in 7 days, at 2027-01-22T12:00:00Z")

    def test_one_day(self) -> None:
        assert self._at(DAY) == ("error", "expires in 1 day, at 2027-01-22T12:00:00Z")

    def test_hours_left(self) -> None:
        assert self._at(dt.timedelta(hours=5, minutes=59)) == (
            "error",
            "expires in 5 hours, at 2027-01-22T12:00:00Z",
        )

    def test_at_expiry_and_after(self) -> None:
        expired = ("error", "expired at 2027-01-22T12:00:00Z")
        assert self._at(dt.timedelta(0)) == expired
        assert self._at(-3 * DAY) == expired

    def test_time_zone_of_now_does_not_matter(self) -> None:
        paris = dt.timezone(dt.timedelta(hours=1))
        now = (self.NOT_AFTER - 21 * DAY).astimezone(paris)
        assert plan_expiry_warnings(self.NOT_AFTER, now) == self._at(21 * DAY)


class TestRenewalNotice:
    """plan_renewal_notice: due once the CA's window opened and certbot has not renewed."""

    START = NOW + 50 * DAY
    END = NOW + 52 * DAY
    NOT_AFTER = NOW + 80 * DAY

    def _plan(self, now: dt.datetime, deployed: bool = True, url: str | None = None) -> str | None:
        window = _window(self.START, self.END, url)
        return plan_renewal_notice(window, self.NOT_AFTER, deployed, now)

    def test_before_the_window(self) -> None:
        assert self._plan(NOW) is None
        assert self._plan(self.START - SECOND) is None

    def test_window_opens_exactly_at_start(self) -> None:
        reason = self._plan(self.START)
        assert reason == (
            "the CA's renewal window opened at 2027-01-12T12:00:00Z and ends at"
            " 2027-01-14T12:00:00Z; certbot has not renewed;"
            " the certificate expires at 2027-02-11T12:00:00Z"
        )

    def test_inside_the_window(self) -> None:
        assert self._plan(self.START + DAY) == self._plan(self.START)

    def test_at_the_end_is_still_inside(self) -> None:
        reason = self._plan(self.END)
        assert reason is not None and "renew now" not in reason

    def test_window_passed_says_renew_now(self) -> None:
        reason = self._plan(self.END + SECOND)
        assert reason is not None
        assert reason.endswith("the window has passed: renew now (certbot renew --force-renewal)")

    def test_certbot_has_renewed(self) -> None:
        assert self._plan(self.START + DAY, deployed=False) is None
        assert self._plan(self.END + DAY, deployed=False) is None

    def test_explanation_url_is_cited(self) -> None:
        reason = self._plan(self.START, url="https://ca.example/incident")
        assert reason is not None and reason.endswith("; see https://ca.example/incident")

    def test_expired_certificate_gets_no_notice(self) -> None:
        # cert.expiring reports it at error level already.
        assert self._plan(self.NOT_AFTER) is None
        assert self._plan(self.NOT_AFTER + DAY) is None


class TestRenewalIdentifier:
    """build_renewal_identifier follows RFC 9773 section 4.1."""

    def test_rfc_9773_example(self, hierarchy: Hierarchy) -> None:
        # RFC 9773 section 4.1: keyIdentifier 69:88:5B:..:C8:D4, serial 0x87654321.
        key_id = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
        leaf = (
            x509.CertificateBuilder()
            .subject_name(hierarchy.intermediate.subject)
            .issuer_name(hierarchy.intermediate.subject)
            .public_key(make_key("ec256", slot=1).public_key())
            .serial_number(0x87654321)
            .not_valid_before(NOW)
            .not_valid_after(NOW + DAY)
            .add_extension(x509.AuthorityKeyIdentifier(key_id, None, None), False)
            .sign(hierarchy.intermediate_key, hashes.SHA256())
        )
        assert build_renewal_identifier(leaf) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"

    def test_key_identifier_is_the_leafs_aki(self, hierarchy: Hierarchy) -> None:
        leaf = hierarchy.issue(authority_key_id=True).cert
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        key_part, _, _ = build_renewal_identifier(leaf).partition(".")
        assert _unpad(key_part) == aki.key_identifier

    def test_without_aki(self, hierarchy: Hierarchy) -> None:
        with pytest.raises(AriError, match="no Authority Key Identifier"):
            build_renewal_identifier(hierarchy.issue().cert)

    @settings(max_examples=60, deadline=None)
    @given(serial=st.integers(min_value=1, max_value=2**159 - 1))
    def test_serial_is_minimal_der_integer(self, hierarchy: Hierarchy, serial: int) -> None:
        leaf = hierarchy.issue(serial=serial, authority_key_id=True).cert
        identifier = build_renewal_identifier(leaf)
        assert "=" not in identifier and "+" not in identifier and "/" not in identifier
        _, _, serial_part = identifier.partition(".")
        encoded = _unpad(serial_part)
        assert int.from_bytes(encoded, "big", signed=True) == serial
        # Minimal: a leading 0x00 only where the next byte's top bit would make it negative.
        if len(encoded) > 1 and encoded[0] == 0:
            assert encoded[1] & 0x80

    @pytest.mark.parametrize(
        ("serial", "der"),
        [(1, "01"), (0x7F, "7f"), (0x80, "0080"), (0xFF, "00ff"), (0x0100, "0100")],
    )
    def test_serial_boundaries(self, hierarchy: Hierarchy, serial: int, der: str) -> None:
        leaf = hierarchy.issue(serial=serial, authority_key_id=True).cert
        assert _unpad(build_renewal_identifier(leaf).partition(".")[2]).hex() == der


class TestNextCheck:
    """build_next_check reads Retry-After, within sane bounds."""

    def test_default_is_six_hours(self) -> None:
        assert build_next_check(None, NOW) == NOW + dt.timedelta(hours=6)
        assert build_next_check("soon", NOW) == NOW + dt.timedelta(hours=6)

    def test_seconds(self) -> None:
        assert build_next_check("3600", NOW) == NOW + dt.timedelta(hours=1)

    def test_http_date(self) -> None:
        assert build_next_check("Mon, 23 Nov 2026 14:00:00 GMT", NOW) == NOW + 2 * 3600 * SECOND

    def test_bounds(self) -> None:
        assert build_next_check("0", NOW) == NOW + dt.timedelta(minutes=1)
        assert build_next_check(str(30 * 86400), NOW) == NOW + DAY


class TestAriSupport:
    """ari_support tells whether the installed acme library can do ARI."""

    def test_matches_installed_acme(self) -> None:
        version = importlib.metadata.version("acme")
        major, minor = (int(part) for part in version.split(".")[:2])
        reason = ari_support()
        if (major, minor) >= (4, 1):
            assert reason is None
        else:
            assert reason == (
                f"acme {version} has no ARI support (needs >= 4.1); renewal.suggested is disabled"
            )
