"""The one exception tree of danesync.

Every error the program expects to meet in operation derives from
`DanesyncError` and carries the data a log line or an exit message needs.
Third-party exceptions are wrapped with ``raise ... from``.
"""

from __future__ import annotations

from collections.abc import Sequence


class DanesyncError(Exception):
    """Something danesync cannot do; the message says what and why."""


class ConfigError(DanesyncError):
    """The configuration file is invalid; every problem is listed."""

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{path}: invalid configuration:\n{lines}")


class ChainError(DanesyncError):
    """A certificate lineage is invalid and must not be deployed."""

    def __init__(self, lineage: str, reason: str) -> None:
        self.lineage = lineage
        self.reason = reason
        super().__init__(f"{lineage}: {reason}")


class LineagePending(DanesyncError):
    """certbot is in the middle of updating the lineage; look again later."""

    def __init__(self, lineage: str, reason: str) -> None:
        self.lineage = lineage
        self.reason = reason
        super().__init__(f"{lineage}: not ready: {reason}")


class CommandError(DanesyncError):
    """An external program failed, timed out or is missing."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"{' '.join(self.argv)} exited {returncode}: {detail}")


class PostfixError(CommandError):
    """A Postfix command failed."""


class ProbeError(DanesyncError):
    """The STARTTLS probe did not see the expected certificate."""


class TsigKeyError(DanesyncError):
    """The TSIG key file is missing, unsafe or unreadable."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DnsError(DanesyncError):
    """A DNS query or update could not be completed."""


class DnsUpdateError(DnsError):
    """The primary refused or failed an RFC 2136 update."""

    def __init__(self, zone: str, rcode: str, detail: str = "") -> None:
        self.zone = zone
        self.rcode = rcode
        self.detail = detail
        super().__init__(
            f"update of zone {zone} failed: {rcode}" + (f": {detail}" if detail else "")
        )


class StateError(DanesyncError):
    """The state file cannot be read or written."""


class AriError(DanesyncError):
    """ACME Renewal Information (RFC 9773) could not be fetched or understood."""

    def __init__(self, url: str | None, reason: str, retry_after: str | None = None) -> None:
        self.url = url
        self.reason = reason
        self.retry_after = retry_after  # the server's Retry-After header, if it sent one
        source = f" from {url}" if url else ""
        super().__init__(f"renewal information{source}: {reason}")


class WatchError(DanesyncError):
    """The certbot directory cannot be watched (inotify limits, permissions)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot watch {path}: {reason}")
