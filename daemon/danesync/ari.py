"""ACME Renewal Information (RFC 9773) for the deployed chain.

Expiry warnings are judged in danesync.expiry (the certificate's lifetime
and certbot's renewal; the ARI window moves that renewal forward).

ARI (RFC 9773) lets the CA say when a certificate should be renewed, earlier
than certbot's own rule when it has a reason (a mass revocation, say).
danesync does not renew: it tells the operator (`renewal.suggested`) when the
CA's window has opened and certbot has not acted. renewalInfo is one GET of a
small JSON document named by the certificate's ID, so it is done here with
the standard library (urllib, the system CA store or certbot's
REQUESTS_CA_BUNDLE): it works with what every Debian release ships, and the
daemon does not load acme, josepy and requests for it.

`build_*` and `plan_*` are pure; `fetch_renewal_window` talks to the CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import http.client
import json
import os
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from danesync import __version__
from danesync.chain import format_time
from danesync.errors import AriError

# RFC 9773 section 4.3.3: without a usable Retry-After, ask again in six hours.
DEFAULT_RETRY_AFTER = dt.timedelta(hours=6)
# Bounds on a server's Retry-After, so a broken header neither hammers the CA
# nor silences ARI for weeks.
_RETRY_AFTER_BOUNDS = (dt.timedelta(minutes=1), dt.timedelta(days=1))
_MAX_BODY = 64 * 1024  # renewalInfo and directories are a few hundred bytes
_JSON_TYPES = ("application/json", "application/problem+json")
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)"
)


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


def build_validity(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    """(notBefore, notAfter), aware UTC, on every cryptography version."""
    value: dt.datetime | None = getattr(cert, "not_valid_before_utc", None)
    not_before = value if value is not None else cert.not_valid_before.replace(tzinfo=dt.UTC)
    return not_before, _not_after(cert)


def _not_after(cert: x509.Certificate) -> dt.datetime:
    # cryptography 38 has no not_valid_after_utc; newer ones deprecate the naive one.
    value: dt.datetime | None = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=dt.UTC)


def parse_rfc3339(text: Any) -> dt.datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime; None if it is not one."""
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    microsecond = int((match[7] or "0")[:6].ljust(6, "0"))
    offset = match[8]
    if offset in ("Z", "z"):
        zone = dt.UTC
    else:
        sign = 1 if offset[0] == "+" else -1
        zone = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    try:
        moment = dt.datetime(year, month, day, hour, minute, second, microsecond, zone)
    except ValueError:
        return None
    return moment.astimezone(dt.UTC)


def build_renewal_window(
    identifier: str, body: Any, retry_after: str | None, now: dt.datetime, url: str
) -> RenewalWindow:
    """The window from a renewalInfo JSON document; AriError naming `url` if malformed."""
    window = body.get("suggestedWindow") if isinstance(body, dict) else None
    if not isinstance(window, dict):
        raise AriError(url, "malformed response: no suggestedWindow object")
    start, end = parse_rfc3339(window.get("start")), parse_rfc3339(window.get("end"))
    if start is None or end is None:
        raise AriError(url, "the suggested window lacks a start or an end (RFC 3339 times)")
    if end <= start:
        raise AriError(url, "the suggested window ends before it starts")
    explanation = body.get("explanationURL")
    return RenewalWindow(
        identifier=identifier,
        start=start,
        end=end,
        explanation_url=explanation if isinstance(explanation, str) else None,
        next_check=build_next_check(retry_after, now),
    )


# -- effects ------------------------------------------------------------------


def ari_support() -> str | None:
    """None: ARI needs only the standard library now (kept for callers that ask)."""
    return None


def fetch_renewal_window(
    directory_url: str,
    leaf: x509.Certificate,
    issuer: x509.Certificate,
    timeout: float = 10,
    now: dt.datetime | None = None,
) -> RenewalWindow | None:
    """Ask the CA at `directory_url` for the leaf's suggested renewal window.

    Two GETs: the ACME directory (for its `renewalInfo` URL), then
    `<renewalInfo>/<certificate ID>`. None when the directory has no
    `renewalInfo` or the leaf has expired (RFC 9773 forbids asking then).
    `issuer` must be the leaf's issuer: a mismatched pair would name another
    certificate. Raises `AriError` on any network, TLS, HTTP or format error.
    Server certificates are verified against the system's CA store, or
    REQUESTS_CA_BUNDLE when set (certbot honours it too); proxies from the
    environment are used as certbot would.
    """
    try:
        identifier = build_renewal_identifier(leaf)
    except AriError as error:
        raise AriError(directory_url, error.reason) from None
    _check_issuer(directory_url, leaf, issuer)
    return fetch_renewal_window_by_id(directory_url, identifier, _not_after(leaf), timeout, now)


def build_ari_identifier(leaf: x509.Certificate, issuer: x509.Certificate) -> str:
    """The leaf's RFC 9773 identifier, checked against its issuer; AriError if none.

    Computed once when a chain is validated, so that monitoring needs no
    parsed certificate between passes."""
    identifier = build_renewal_identifier(leaf)
    _check_issuer(None, leaf, issuer)
    return identifier


def fetch_renewal_window_by_id(
    directory_url: str,
    identifier: str,
    not_after: dt.datetime,
    timeout: float = 10,
    now: dt.datetime | None = None,
) -> RenewalWindow | None:
    """`fetch_renewal_window` for a leaf known by its identifier and not_after."""
    now = now or dt.datetime.now(dt.UTC)
    if not_after <= now:
        return None
    opener = _opener()
    directory, _ = _get_json(opener, directory_url, timeout)
    base = directory.get("renewalInfo") if isinstance(directory, dict) else None
    if base is None:
        return None
    if not isinstance(base, str) or not base.startswith(("https://", "http://")):
        raise AriError(directory_url, "the directory's renewalInfo is not a URL")
    url = f"{base.rstrip('/')}/{identifier}"
    body, retry_after = _get_json(opener, url, timeout)
    return build_renewal_window(identifier, body, retry_after, now, url)


def _opener() -> urllib.request.OpenerDirector:
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or None
    try:
        context = ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError) as error:
        raise AriError(None, f"cannot load REQUESTS_CA_BUNDLE {bundle}: {error}") from error
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))


def _get_json(
    opener: urllib.request.OpenerDirector, url: str, timeout: float
) -> tuple[Any, str | None]:
    """The JSON document at `url` and its Retry-After header."""
    if not url.startswith(("https://", "http://")):
        raise AriError(url, "not an http(s) URL")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url, headers={"User-Agent": f"danesync/{__version__}", "Accept": "application/json"}
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            content_type = response.headers.get_content_type()
            data = response.read(_MAX_BODY + 1)
            retry_after = response.headers.get("Retry-After")
    except urllib.error.HTTPError as error:
        retry_after = error.headers.get("Retry-After") if error.headers else None
        raise AriError(url, _describe_http_error(error), retry_after) from None
    except urllib.error.URLError as error:
        raise AriError(url, f"request failed: {error.reason}") from error
    except (OSError, http.client.HTTPException) as error:
        raise AriError(url, f"request failed: {error or type(error).__name__}") from error
    if content_type not in _JSON_TYPES:
        raise AriError(url, f"malformed response: Content-Type {content_type}, not JSON")
    if len(data) > _MAX_BODY:
        raise AriError(url, f"malformed response: larger than {_MAX_BODY} bytes")
    try:
        return json.loads(data), retry_after
    except (ValueError, UnicodeDecodeError) as error:
        raise AriError(url, f"malformed response: {error}") from error


def _describe_http_error(error: urllib.error.HTTPError) -> str:
    # An ACME error comes as a problem document (RFC 7807) saying what is wrong.
    try:
        problem = json.loads(error.read(_MAX_BODY))
    except (OSError, ValueError, http.client.HTTPException):
        problem = None
    finally:
        error.close()
    if isinstance(problem, dict) and ("type" in problem or "detail" in problem):
        detail = problem.get("detail") or problem.get("type")
        return f"the CA answered with an error: HTTP {error.code}: {detail}"
    return f"HTTP {error.code} {error.reason}".rstrip()


def _check_issuer(url: str | None, leaf: x509.Certificate, issuer: x509.Certificate) -> None:
    if leaf.issuer != issuer.subject:
        raise AriError(url, "the issuer given is not the certificate's issuer")
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return
    if ski.digest != aki.key_identifier:
        raise AriError(url, "the issuer's key identifier does not match the certificate's AKI")
