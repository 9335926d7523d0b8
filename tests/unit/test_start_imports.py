"""What `danesync run` loads at start: not acme, josepy or requests (6.5 MiB resident;
ARI is one GET, done with the standard library) and not watchdog's unused observers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DAEMON = Path(__file__).resolve().parents[2] / "daemon"

CODE = """
import sys
import danesync.__main__, danesync.loop, danesync.service, danesync.watcher
import danesync.commands, danesync.status
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _loaded(code: str) -> set[str]:
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(DAEMON), "PATH": "/usr/bin:/bin"},
    )
    return set(completed.stdout.split())


def test_no_acme_or_requests_at_start() -> None:
    loaded = _loaded(CODE)
    assert "danesync" in loaded
    # dnspython 2.3 (Debian 12) imports requests itself for DNS over HTTPS.
    by_dnspython = _loaded(
        CODE.replace("import danesync.commands, danesync.status", "").replace(
            "import danesync.__main__, danesync.loop, danesync.service, danesync.watcher",
            "import dns.query",
        )
    )
    assert not (loaded - by_dnspython) & {"acme", "josepy", "requests", "urllib3", "OpenSSL"}


def test_no_dnspython_at_start() -> None:
    """dnspython (0.15 s of imports; with Debian 12's 2.3 also requests) loads
    where DNS is used, not before a daemon with DNS off starts (issue 15, coldtail)."""
    loaded = _loaded(CODE.replace("danesync.status", "danesync.status, danesync.adapters"))
    assert "danesync" in loaded
    assert "dns" not in loaded
