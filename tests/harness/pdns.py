"""A real PowerDNS Authoritative 4.7 primary on loopback, for integration tests.

The same zone, keys and helpers as `BindServer` (tests/harness/bind.py):
gsqlite3 backend in the temporary directory, the zone loaded with ``pdnsutil
load-zone``, both keys imported with ``pdnsutil import-tsig-key``,
``dnsupdate=yes`` from 127.0.0.0/8 and zone metadata ``TSIG-ALLOW-DNSUPDATE``
listing both. PowerDNS has no per-name update policy of its own: a Lua
``updatepolicy`` (``lua-dnsupdate-policy-script``) grants key ``danesync``
TLSA at `grant_names` only and key ``admin`` everything. Caches are off, so a
query right after an update sees it.

PowerDNS answers an update signed with a wrong secret with NOTAUTH and no
TSIG record at all (RFC 8945 wants BADSIG, signed-unsigned): danesync must say
"bad signature or unknown key", not "not authoritative".
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from tests.harness.bind import HOST, BindServer

PDNS_SERVER = "/usr/sbin/pdns_server"
PDNSUTIL = "/usr/bin/pdnsutil"
SCHEMA = Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")


class PdnsServer(BindServer):
    """A private pdns_server serving one zone; a context manager."""

    kind = "pdns"
    port_taken_markers = ("Address already in use", "Unable to bind")
    programs = (PDNS_SERVER, PDNSUTIL, "/usr/sbin/tsig-keygen", "nsupdate", "dig")

    @property
    def database(self) -> Path:
        return self._dir / "pdns.sqlite3"

    def pdnsutil(self, *arguments: str) -> str:
        """``pdnsutil --config-dir DIR ARGS``, its stdout; raises on failure."""
        result = subprocess.run(
            [PDNSUTIL, f"--config-dir={self._dir}", *arguments],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pdnsutil {' '.join(arguments)}: {result.stdout}{result.stderr}")
        return result.stdout

    def _set_up(self) -> None:
        super()._set_up()
        with sqlite3.connect(self.database) as db:
            db.executescript(SCHEMA.read_text())
        self.pdnsutil("load-zone", self.zone, str(self._dir / f"{self.zone}.zone"))
        for name, path in (
            (self.key_name, self.key_path),
            (self.admin_key_name, self.admin_key_path),
        ):
            self.pdnsutil("import-tsig-key", name, "hmac-sha256", self.secret_of(path))
        self.pdnsutil(
            "set-meta", self.zone, "TSIG-ALLOW-DNSUPDATE", self.key_name, self.admin_key_name
        )

    def _write_config(self) -> None:
        d = self._dir
        grants = ", ".join(f'["{name.rstrip(".").lower()}."] = true' for name in self.grant_names)
        policy = f"""\
-- Written by the danesync test harness: BIND's update-policy, in Lua.
local granted = {{ {grants} }}
function updatepolicy(request)
  -- An unsigned update has no key name: refuse it without a Lua error.
  local ok, key = pcall(function() return request:getTsigName():toString():lower() end)
  if not ok then
    return false
  end
  if key == "{self.admin_key_name}." then
    return true
  end
  if key ~= "{self.key_name}." then
    return false
  end
  local name = request:getQName():toString():lower()
  return granted[name] == true and request:getQType() == pdns.TLSA
end
"""
        (d / "policy.lua").write_text(policy)
        config = f"""\
launch=gsqlite3
gsqlite3-database={self.database}
local-address={HOST}
local-port={self.port}
socket-dir={d}
config-dir={d}
guardian=no
daemon=no
disable-syslog=yes
write-pid=no
security-poll-suffix=
loglevel=6
dnsupdate=yes
allow-dnsupdate-from=127.0.0.0/8
lua-dnsupdate-policy-script={d}/policy.lua
cache-ttl=0
query-cache-ttl=0
negquery-cache-ttl=0
zone-metadata-cache-ttl=0
consistent-backends=yes
receiver-threads=1
distributor-threads=1
"""
        (d / "pdns.conf").write_text(config)

    def _check_config(self) -> None:
        pass  # pdns_server checks its own config at start; errors go to the log

    def _command(self) -> list[str]:
        return [PDNS_SERVER, f"--config-dir={self._dir}"]
