"""A real Knot DNS 3.2 primary on loopback, for integration tests.

The same zone, keys and helpers as `BindServer` (tests/harness/bind.py): the
key files are BIND's format (what danesync reads), and the harness writes
their secrets into ``knot.conf``. The update ACL grants key ``danesync``
TLSA at `grant_names` only (``update-type: [TLSA]``, ``update-owner: name``,
``update-owner-match: equal``) and key ``admin`` everything. Every update is
flushed to the zone file at once (``zonefile-sync: 0``), so `stop()` and
`start()` keep the zone. Changes by hand go through ``nsupdate``, checks
through ``dig``, as for BIND.

Knot refuses an update its ACL denies with NOTAUTH and a TSIG error BADKEY
in the answer (not REFUSED): danesync must name the ACL, not the key.
"""

from __future__ import annotations

import re
import subprocess

from tests.harness.bind import HOST, BindServer

KNOTD = "/usr/sbin/knotd"
KNOTC = "/usr/sbin/knotc"
KEYMGR = "/usr/sbin/keymgr"


class KnotServer(BindServer):
    """A private knotd serving one zone; a context manager."""

    kind = "knot"
    port_taken_markers = ("Address already in use", "failed to bind")
    programs = (KNOTD, KNOTC, KEYMGR, "/usr/sbin/tsig-keygen", "nsupdate", "dig")

    @property
    def version(self) -> tuple[int, ...]:
        """knotd's version: 3.2 on Debian 12, 3.4 on Debian 13 (they answer some faults
        differently)."""
        output = subprocess.run([KNOTD, "-V"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"(\d+)\.(\d+)", output)
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    @property
    def config_path(self) -> str:
        return str(self._dir / "knot.conf")

    def _write_config(self) -> None:
        d = self._dir
        owners = ", ".join(f"{name.rstrip('.')}." for name in self.grant_names)
        config = f"""\
server:
    rundir: "{d}"
    pidfile: "{d}/knot.pid"
    listen: {HOST}@{self.port}
    background-workers: 1
    udp-workers: 1
    tcp-workers: 1

database:
    storage: "{d}/db"

log:
  - target: stderr
    any: info

key:
  - id: {self.key_name}
    algorithm: hmac-sha256
    secret: {self.secret_of(self.key_path)}
  - id: {self.admin_key_name}
    algorithm: hmac-sha256
    secret: {self.secret_of(self.admin_key_path)}

acl:
  - id: danesync_tlsa
    key: {self.key_name}
    action: update
    update-type: [TLSA]
    update-owner: name
    update-owner-match: equal
    update-owner-name: [{owners}]
  - id: admin_all
    key: {self.admin_key_name}
    action: update

template:
  - id: default
    storage: "{d}"
    file: "%s.zone"
    zonefile-sync: 0
    journal-content: none
    semantic-checks: off

zone:
  - domain: {self.zone}.
    acl: [danesync_tlsa, admin_all]
"""
        (d / "knot.conf").write_text(config)

    def _check_config(self) -> None:
        checked = subprocess.run(
            [KNOTC, "-c", self.config_path, "conf-check"],
            capture_output=True,
            text=True,
            check=False,
        )
        if checked.returncode != 0:
            raise RuntimeError(f"knotc conf-check: {checked.stdout}{checked.stderr}")

    def _command(self) -> list[str]:
        return [KNOTD, "-c", self.config_path]
