"""What `danesync run` loads at start: not acme, josepy or requests (6.5 MiB resident;
ARI is one GET, done with the standard library; DNS is dns.message's wire form
over our own sockets) and not watchdog's unused observers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DAEMON = Path(__file__).resolve().parents[2] / "daemon"

CODE = """
import sys
import danesync.__main__, danesync.loop, danesync.service, danesync.watcher
import danesync.commands, danesync.status, danesync.selfcheck
# What the monitoring's self-check imports when it runs (no resolver listed: no network).
from danesync import published
published.read_validated("_25._tcp.mx.example.test.", resolv_conf="/nonexistent")
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _run(code: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(DAEMON), "PATH": "/usr/bin:/bin"},
    )
    return completed.stdout


def _loaded(code: str) -> set[str]:
    return set(_run(code).split())


def test_no_acme_or_requests_at_start() -> None:
    loaded = _loaded(CODE)
    assert "danesync" in loaded
    # Not even through dnspython: Debian 12's 2.3 imports requests, urllib3 and
    # chardet with dns.query (DNS over HTTPS), so danesync does not use dns.query.
    assert not loaded & {"acme", "josepy", "requests", "urllib3", "chardet", "OpenSSL"}


def test_no_dnspython_at_start() -> None:
    """dnspython (0.15 s of imports) loads where DNS is used, not before a
    daemon with DNS off starts (issue 15, coldtail)."""
    imports_only = CODE.split("# What the monitoring", maxsplit=1)[0] + "import danesync.adapters\n"
    imports_only += 'print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))\n'
    loaded = _loaded(imports_only)
    assert "danesync" in loaded
    assert "dns" not in loaded


def test_dns_port_by_mode() -> None:
    """dns.mode "off" gets a port that never asks, without dnspython; any other
    mode the real one (realdns.RealDns)."""
    code = """
import sys
from pathlib import Path
from danesync import adapters
from danesync.config import Config, DnsConfig, DnsMode, Endpoint
off = DnsConfig(mode=DnsMode.OFF, server=Endpoint("192.0.2.53", 53))
port = adapters.open_dns(Config(path=Path("/x"), dns=off))
print(type(port).__name__, port.primary, "dns" in sys.modules)
port = adapters.open_dns(Config(path=Path("/x"), dns=DnsConfig(server=Endpoint("192.0.2.53", 53))))
print(type(port).__name__, port.primary, "dns" in sys.modules)
"""
    assert _run(code).splitlines() == [
        "NoDns 192.0.2.53:53 False",
        "RealDns 192.0.2.53:53 True",
    ]
