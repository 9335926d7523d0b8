"""Expiry warnings, relative to the certificate's lifetime and to certbot's renewal.

Expiry is judged against the certificate's own lifetime and against when
certbot renews it (certbot >= 4: when a third of the lifetime is left, half
for lifetimes under 10 days, or in the CA's ARI window, which
danesync.ari fetches), so a healthy 160-hour certificate is as quiet as a
healthy 90-day one. All pure.
"""

from __future__ import annotations

import datetime as dt

from danesync.chain import format_time

# certbot >= 4 renews with a third of the lifetime left, half under 10 days.
SHORT_LIFETIME = dt.timedelta(days=10)
# certbot.timer runs twice a day with up to 12 h of random delay: a renewal is
# overdue once it is a day late (or a tenth of a short lifetime).
RENEWAL_GRACE = dt.timedelta(days=1)
# "Little left" (error level): a tenth of the lifetime, and never less than
# rollover_wait plus this, the time a renewed chain needs to be served safely.
ERROR_MARGIN = dt.timedelta(days=1)
# `check` warns when rollover_wait is more than this share of the lifetime.
ROLLOVER_WAIT_SHARE = 0.10
# Without the lifetime (a state written before it was kept): the old fixed
# thresholds, error within 7 days and warning within 21.
LEGACY_ERROR_LEFT = dt.timedelta(days=7)
LEGACY_WARNING_LEFT = dt.timedelta(days=21)


def build_renewal_due(
    not_before: dt.datetime, not_after: dt.datetime, window_end: dt.datetime | None = None
) -> dt.datetime:
    """When certbot (>= 4) renews: a third of the lifetime left, half under 10 days.

    An ARI window that ends earlier moves it forward (certbot renews in it).
    """
    lifetime = not_after - not_before
    share = 2 if lifetime < SHORT_LIFETIME else 3
    due = not_after - lifetime / share
    return min(due, window_end) if window_end is not None else due


def build_little_left(lifetime: dt.timedelta, rollover_wait: dt.timedelta) -> dt.timedelta:
    """What is "little left" (error level): a tenth of the lifetime, or rollover_wait + a day."""
    return max(lifetime / 10, rollover_wait + ERROR_MARGIN)


def plan_expiry_warnings(
    not_after: dt.datetime,
    now: dt.datetime,
    *,
    not_before: dt.datetime | None = None,
    held: bool = False,
    rollover_wait: dt.timedelta = dt.timedelta(0),
    window_end: dt.datetime | None = None,
) -> tuple[str, str] | None:
    """`(level, reason)` for `cert.expiring`, or None while all is well.

    Nothing until certbot's renewal is overdue (`build_renewal_due` plus a
    day, or a tenth of a short lifetime); a warning from then on; an error
    once little is left (`build_little_left`) or it has expired. `held`: certbot
    has renewed but danesync holds the new chain (it waits for its TLSA
    records), which the reason then says. Without `not_before` (lifetime
    unknown) the old fixed thresholds apply: error within 7 days, warning
    within 21.
    """
    left = not_after - now
    if not_before is None:
        return _plan_legacy_expiry_warning(not_after, left)
    lifetime = not_after - not_before
    due = build_renewal_due(not_before, not_after, window_end)
    overdue_at = due + min(RENEWAL_GRACE, lifetime / 10)
    little = build_little_left(lifetime, rollover_wait)
    if now < overdue_at and left > little:
        return None
    when = format_time(not_after)
    if left <= dt.timedelta(0):
        parts = [f"expired at {when}"]
    else:
        parts = [f"expires in {_duration(left)}, at {when}"]
    if left <= little:
        level = "error"
        if left > dt.timedelta(0):
            parts.append(
                f"less than {_duration(little)} of its {_duration(lifetime)} lifetime left"
                " (a tenth of it, or rollover_wait + 1 day)"
            )
    else:
        level = "warning"
    if held:
        parts.append("certbot has renewed it, but danesync holds the new certificate (chain.held)")
    else:
        parts.append(f"certbot should have renewed it by {format_time(due)} and has not")
    return level, "; ".join(parts)


def _plan_legacy_expiry_warning(
    not_after: dt.datetime, left: dt.timedelta
) -> tuple[str, str] | None:
    if left > LEGACY_WARNING_LEFT:
        return None
    level = "error" if left <= LEGACY_ERROR_LEFT else "warning"
    when = format_time(not_after)
    if left <= dt.timedelta(0):
        return level, f"expired at {when}"
    return level, f"expires in {_duration(left)}, at {when}"


def build_rollover_wait_warning(
    rollover_wait: dt.timedelta, not_before: dt.datetime, not_after: dt.datetime
) -> str | None:
    """A warning for `check` when rollover_wait is a large share of the lifetime."""
    lifetime = not_after - not_before
    if lifetime <= dt.timedelta(0) or rollover_wait <= lifetime * ROLLOVER_WAIT_SHARE:
        return None
    share = rollover_wait / lifetime
    return (
        f"dns.rollover_wait ({_duration(rollover_wait)}) is {share:.0%} of the certificate's"
        f" {_duration(lifetime)} lifetime: every renewal waits that long before it is served,"
        " and cert.expiring reports an error with less than rollover_wait + 1 day left;"
        " lower dns.ttl and rollover_wait"
    )


def _duration(delta: dt.timedelta) -> str:
    """ "3 days", "5 hours", "40 minutes": the largest whole unit."""
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"
