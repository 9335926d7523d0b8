"""Expiry warnings, the ARI notice decision and the RFC 9773 certificate identifier."""

from __future__ import annotations

import base64
import datetime as dt

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
    build_renewal_window,
    parse_rfc3339,
    plan_renewal_notice,
)
from danesync.chain import format_time
from danesync.errors import AriError
from danesync.expiry import (
    build_little_left,
    build_renewal_due,
    build_rollover_wait_warning,
    plan_expiry_warnings,
)
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


HOUR = dt.timedelta(hours=1)
LIFETIMES = {
    "shortlived 160 h": 160 * HOUR,
    "tlsserver 45 days": 45 * DAY,
    "classic 64 days": 64 * DAY,
    "classic 90 days": 90 * DAY,
}
ROLLOVER_WAIT = 2 * HOUR  # the default: 2 x dns.ttl of 3600


def _expiry(
    lifetime: dt.timedelta, age: dt.timedelta, held: bool = False
) -> tuple[str, str] | None:
    return plan_expiry_warnings(
        NOW + lifetime, NOW + age, not_before=NOW, held=held, rollover_wait=ROLLOVER_WAIT
    )


class TestExpiryWarnings:
    """plan_expiry_warnings: relative to the lifetime and to when certbot renews."""

    @pytest.mark.parametrize("lifetime", LIFETIMES.values(), ids=LIFETIMES.keys())
    def test_quiet_until_the_renewal_is_overdue(self, lifetime: dt.timedelta) -> None:
        due = build_renewal_due(NOW, NOW + lifetime)
        overdue = due + min(DAY, lifetime / 10)
        age = dt.timedelta(0)
        while NOW + age < overdue:
            assert _expiry(lifetime, age) is None, age
            age += HOUR
        warning = _expiry(lifetime, overdue - NOW)
        assert warning is not None and warning[0] == "warning"
        assert f"certbot should have renewed it by {format_time(due)}" in warning[1]

    @pytest.mark.parametrize("lifetime", LIFETIMES.values(), ids=LIFETIMES.keys())
    def test_error_when_little_is_left(self, lifetime: dt.timedelta) -> None:
        little = build_little_left(lifetime, ROLLOVER_WAIT)
        assert little == max(lifetime / 10, ROLLOVER_WAIT + DAY)
        before = _expiry(lifetime, lifetime - little - SECOND)
        assert before is not None and before[0] == "warning"
        error = _expiry(lifetime, lifetime - little)
        assert error is not None and error[0] == "error"
        assert "of its" in error[1] and "lifetime left" in error[1]
        due = format_time(build_renewal_due(NOW, NOW + lifetime))
        assert _expiry(lifetime, lifetime) == (
            "error",
            f"expired at {format_time(NOW + lifetime)};"
            f" certbot should have renewed it by {due} and has not",
        )

    def test_renewal_points(self) -> None:
        # certbot >= 4: a third of the lifetime left, half under 10 days.
        assert build_renewal_due(NOW, NOW + 90 * DAY) == NOW + 60 * DAY
        assert build_renewal_due(NOW, NOW + 45 * DAY) == NOW + 30 * DAY
        assert build_renewal_due(NOW, NOW + 160 * HOUR) == NOW + 80 * HOUR
        # An ARI window that ends earlier moves it forward.
        assert build_renewal_due(NOW, NOW + 90 * DAY, NOW + 20 * DAY) == NOW + 20 * DAY

    def test_healthy_six_day_certificates_never_warn(self) -> None:
        # certbot renews at 80 h of 160; danesync deploys the new one within
        # rollover_wait; each certificate is then deployed at most 82 h.
        lifetime = 160 * HOUR
        for minutes in range(0, 82 * 60 + 1, 10):
            assert _expiry(lifetime, dt.timedelta(minutes=minutes)) is None, minutes

    def test_held_renewal_is_said(self) -> None:
        warning = _expiry(45 * DAY, 31 * DAY, held=True)
        assert warning is not None and warning[0] == "warning"
        assert "certbot has renewed it, but danesync holds the new certificate" in warning[1]
        assert "should have renewed" not in warning[1]

    def test_message_names_the_time_left(self) -> None:
        warning = _expiry(90 * DAY, 62 * DAY)
        assert warning == (
            "warning",
            f"expires in 28 days, at {format_time(NOW + 90 * DAY)};"
            f" certbot should have renewed it by {format_time(NOW + 60 * DAY)} and has not",
        )
        error = _expiry(160 * HOUR, 150 * HOUR)
        assert error is not None
        assert error[1].startswith(f"expires in 10 hours, at {format_time(NOW + 160 * HOUR)};")
        assert "less than 1 day of its 6 days lifetime left" in error[1]

    def test_unknown_lifetime_keeps_the_fixed_thresholds(self) -> None:
        # A state saved before the lifetime was kept: 21 and 7 days, as before.
        not_after = NOW + 90 * DAY
        assert plan_expiry_warnings(not_after, not_after - 21 * DAY - SECOND) is None
        assert plan_expiry_warnings(not_after, not_after - 21 * DAY) == (
            "warning",
            f"expires in 21 days, at {format_time(not_after)}",
        )
        assert plan_expiry_warnings(not_after, not_after - 7 * DAY) == (
            "error",
            f"expires in 7 days, at {format_time(not_after)}",
        )
        assert plan_expiry_warnings(not_after, not_after) == (
            "error",
            f"expired at {format_time(not_after)}",
        )

    def test_time_zone_of_now_does_not_matter(self) -> None:
        paris = dt.timezone(dt.timedelta(hours=1))
        now = (NOW + 70 * DAY).astimezone(paris)
        assert plan_expiry_warnings(
            NOW + 90 * DAY, now, not_before=NOW, rollover_wait=ROLLOVER_WAIT
        ) == _expiry(90 * DAY, 70 * DAY)


class TestRolloverWaitShare:
    """check warns when rollover_wait is a large share of the lifetime."""

    def test_default_wait_is_fine_even_for_160_hours(self) -> None:
        assert build_rollover_wait_warning(ROLLOVER_WAIT, NOW, NOW + 160 * HOUR) is None

    def test_a_day_of_a_6_day_certificate_is_too_much(self) -> None:
        warning = build_rollover_wait_warning(DAY, NOW, NOW + 160 * HOUR)
        assert warning is not None
        assert warning.startswith("dns.rollover_wait (1 day) is 15% of the certificate's 6 days")


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


class TestRenewalInfoDocument:
    """build_renewal_window reads RFC 9773's JSON; parse_rfc3339 its times."""

    @pytest.mark.parametrize(
        ("text", "moment"),
        [
            ("2027-01-02T03:04:05Z", dt.datetime(2027, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
            ("2027-01-02t03:04:05z", dt.datetime(2027, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
            (
                "2027-01-02T03:04:05.123456789Z",
                dt.datetime(2027, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
            ),
            ("2027-01-02T05:04:05+02:00", dt.datetime(2027, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ],
    )
    def test_times(self, text: str, moment: dt.datetime) -> None:
        assert parse_rfc3339(text) == moment

    @pytest.mark.parametrize("text", ["2027-01-02", "2027-13-02T00:00:00Z", 5, None, "now"])
    def test_not_times(self, text: object) -> None:
        assert parse_rfc3339(text) is None

    def test_window(self) -> None:
        body = {
            "suggestedWindow": {"start": "2027-01-02T00:00:00Z", "end": "2027-01-03T00:00:00Z"},
            "explanationURL": "https://ca.example/why",
        }
        window = build_renewal_window("id", body, "3600", NOW, "https://ca.example/ri/id")
        assert window.start == dt.datetime(2027, 1, 2, tzinfo=dt.UTC)
        assert window.explanation_url == "https://ca.example/why"
        assert window.next_check == NOW + HOUR

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            ([], "no suggestedWindow"),
            ({"suggestedWindow": "soon"}, "no suggestedWindow"),
            ({"suggestedWindow": {"start": "2027-01-02T00:00:00Z"}}, "lacks a start or an end"),
        ],
    )
    def test_malformed(self, body: object, reason: str) -> None:
        with pytest.raises(AriError, match=reason):
            build_renewal_window("id", body, None, NOW, "https://ca.example/ri/id")

    def test_ari_needs_no_library(self) -> None:
        assert ari_support() is None
