"""Monitoring of the deployed chain: expiry warnings and ACME Renewal Information.

ARI (RFC 9773) lets the CA say when a certificate should be renewed, earlier
than certbot's own 30-days-before-expiry rule when it has a reason (a mass
revocation, say). danesync does not renew: it tells the operator
(`renewal.suggested`) when the CA's window has opened and certbot has not
acted. The request goes through the `acme` library's client, which has ARI
from 4.1 on; with an older one (Debian 12 ships 2.1) the feature is off and
`ari_support` says why.

`build_renewal_identifier`, `plan_renewal_notice` and `plan_expiry_warnings`
are pure; `fetch_renewal_window` talks to the CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import functools
import importlib.metadata
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from danesync import __version__
from danesync.chain import format_time
from danesync.errors import AriError

ARI_MIN_ACME = (4, 1)
EXPIRY_ERROR_DAYS = 7
EXPIRY_WARNING_DAYS = 21
# RFC 9773 section 4.3.3: without a usable Retry-After, ask again in six hours.
DEFAULT_RETRY_AFTER = dt.timedelta(hours=6)
# Bounds on a server's Retry-After, so a broken header neither hammers the CA
# nor silences ARI for weeks.
_RETRY_AFTER_BOUNDS = (dt.timedelta(minutes=1), dt.timedelta(days=1))


@dataclass(frozen=True)
class RenewalWindow:
    """The CA's suggested renewal window for one certificate."""

    identifier: str  # RFC 9773 certificate identifier: base64url(AKI) "." base64url(serial)
    start: dt.datetime  # aware, UTC
    end: dt.datetime  # aware, UTC
    explanation_url: str | None
    next_check: dt.datetime  # when to ask again (Retry-After), aware, UTC


# -- pure ---------------------------------------------------------------------


def build_renewal_identifier(leaf: x509.Certificate) -> str:
    """RFC 9773 section 4.1: base64url(AKI keyIdentifier) "." base64url(DER serial)."""
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        aki = None
    if aki is None or aki.key_identifier is None:
        raise AriError(
            None, "the certificate has no Authority Key Identifier, so ARI cannot name it"
        )
    serial = leaf.serial_number
    # DER INTEGER contents: big-endian two's complement, so a set top bit gets a 0x00 first.
    serial_der = serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)
    return f"{_base64url(aki.key_identifier)}.{_base64url(serial_der)}"


def plan_renewal_notice(
    window: RenewalWindow,
    deployed_not_after: dt.datetime,
    candidate_serial_is_deployed: bool,
    now: dt.datetime,
) -> str | None:
    """The reason for a `renewal.suggested` notice, or None when none is due.

    Due when the CA's window has opened (`now >= window.start`) and certbot has
    not renewed (`candidate_serial_is_deployed`: the lineage's current
    certificate is still the one the window is for). An expired certificate
    gets no notice: `cert.expiring` already reports it at error level.
    """
    if not candidate_serial_is_deployed or now < window.start or now >= deployed_not_after:
        return None
    parts = [
        f"the CA's renewal window opened at {format_time(window.start)}"
        f" and ends at {format_time(window.end)}",
        "certbot has not renewed",
        f"the certificate expires at {format_time(deployed_not_after)}",
    ]
    if now > window.end:
        parts.append("the window has passed: renew now (certbot renew --force-renewal)")
    if window.explanation_url:
        parts.append(f"see {window.explanation_url}")
    return "; ".join(parts)


def plan_expiry_warnings(not_after: dt.datetime, now: dt.datetime) -> tuple[str, str] | None:
    """`(level, reason)` for `cert.expiring`: error within 7 days, warning within 21."""
    left = not_after - now
    if left > dt.timedelta(days=EXPIRY_WARNING_DAYS):
        return None
    level = "error" if left <= dt.timedelta(days=EXPIRY_ERROR_DAYS) else "warning"
    when = format_time(not_after)
    if left <= dt.timedelta(0):
        return level, f"expired at {when}"
    if left < dt.timedelta(days=1):
        hours = int(left.total_seconds() // 3600)
        return level, f"expires in {hours} hour{'s' if hours != 1 else ''}, at {when}"
    return level, f"expires in {left.days} day{'s' if left.days != 1 else ''}, at {when}"


def build_next_check(retry_after: str | None, now: dt.datetime) -> dt.datetime:
    """When to ask again, from a Retry-After header (seconds or HTTP date)."""
    delay = DEFAULT_RETRY_AFTER
    if retry_after:
        value = retry_after.strip()
        if value.isdigit():
            delay = dt.timedelta(seconds=int(value))
        else:
            try:
                moment = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                moment = None
            if moment is not None and moment.tzinfo is not None:
                delay = moment - now
    low, high = _RETRY_AFTER_BOUNDS
    return now + min(max(delay, low), high)


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _version_tuple(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None


def _not_after(cert: x509.Certificate) -> dt.datetime:
    # cryptography 38 has no not_valid_after_utc; newer ones deprecate the naive one.
    value: dt.datetime | None = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=dt.UTC)


# -- effects ------------------------------------------------------------------


@functools.cache
def ari_support() -> str | None:
    """None when the installed acme library can fetch ARI, else why not (one line)."""
    try:
        version: str | None = importlib.metadata.version("acme")
    except importlib.metadata.PackageNotFoundError:
        version = None
    try:
        from acme import client, messages
    except ImportError:
        return "the acme library is not installed; renewal.suggested is disabled"
    parsed = _version_tuple(version) if version else None
    has_api = hasattr(client.ClientV2, "renewal_time") and hasattr(messages, "RenewalInfo")
    if has_api and (parsed is None or parsed >= ARI_MIN_ACME):
        return None
    needed = ".".join(map(str, ARI_MIN_ACME))
    return (
        f"acme {version or '(unknown version)'} has no ARI support (needs >= {needed});"
        " renewal.suggested is disabled"
    )


def fetch_renewal_window(
    directory_url: str,
    leaf: x509.Certificate,
    issuer: x509.Certificate,
    timeout: int = 10,
) -> RenewalWindow | None:
    """Ask the CA at `directory_url` for the leaf's suggested renewal window.

    None when the CA's directory has no `renewalInfo` or the leaf has expired
    (RFC 9773 forbids asking then). `issuer` must be the leaf's issuer: a
    mismatched pair would name another certificate. Raises `AriError` when
    acme is too old, or on any network, HTTP or format error.
    Server certificates are verified (REQUESTS_CA_BUNDLE is honoured).
    """
    unsupported = ari_support()
    if unsupported is not None:
        raise AriError(directory_url, unsupported)
    try:
        identifier = build_renewal_identifier(leaf)
    except AriError as error:
        raise AriError(directory_url, error.reason) from None
    _check_issuer(directory_url, leaf, issuer)
    now = dt.datetime.now(dt.UTC)
    if _not_after(leaf) <= now:
        return None

    # Imported here, not at the top: acme pulls in requests and josepy, which a
    # daemon that never asks a CA need not load.
    import requests
    from acme import client, messages
    from acme import errors as acme_errors
    from josepy.errors import DeserializationError

    url = directory_url
    net = client.ClientNetwork(key=None, user_agent=f"danesync/{__version__}", timeout=timeout)
    try:
        ca = client.ClientV2(client.ClientV2.get_directory(directory_url, net), net)
        try:
            base: Any = ca.directory["renewalInfo"]
        except KeyError:
            return None
        if not isinstance(base, str):
            raise AriError(directory_url, "the directory's renewalInfo is not a URL")
        url = f"{base.rstrip('/')}/{identifier}"
        response = ca.net.get(url, content_type=client.ClientNetwork.JSON_CONTENT_TYPE)
        body = response.json()
        window = messages.RenewalInfo.from_json(body).suggested_window
    except requests.RequestException as error:
        raise AriError(url, f"request failed: {error}") from error
    except messages.Error as error:
        raise AriError(url, f"the CA answered with an error: {error}") from error
    except acme_errors.ClientError as error:
        raise AriError(url, _describe_client_error(error)) from error
    except (DeserializationError, ValueError) as error:
        raise AriError(url, f"malformed response: {error}") from error
    finally:
        net.session.close()  # the daemon asks again in hours: keep no idle connection
    start, end = window.start, window.end
    if start is None or end is None:
        raise AriError(url, "the suggested window lacks a start or an end")
    if end <= start:
        raise AriError(url, "the suggested window ends before it starts")
    explanation = body.get("explanationURL")
    return RenewalWindow(
        identifier=identifier,
        start=start.astimezone(dt.UTC),
        end=end.astimezone(dt.UTC),
        explanation_url=explanation if isinstance(explanation, str) else None,
        next_check=build_next_check(response.headers.get("Retry-After"), now),
    )


def _check_issuer(url: str, leaf: x509.Certificate, issuer: x509.Certificate) -> None:
    if leaf.issuer != issuer.subject:
        raise AriError(url, "the issuer given is not the certificate's issuer")
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return
    if ski.digest != aki.key_identifier:
        raise AriError(url, "the issuer's key identifier does not match the certificate's AKI")


def _describe_client_error(error: Exception) -> str:
    # acme raises ClientError(response) for an HTTP error without a problem document.
    response = error.args[0] if error.args else None
    status = getattr(response, "status_code", None)
    if status is not None:
        reason = getattr(response, "reason", "") or ""
        return f"HTTP {status} {reason}".rstrip()
    return str(error) or type(error).__name__
