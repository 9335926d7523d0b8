"""One danesync per state directory (issue 10, finding 7), and the config
checks that refuse what would fail later (finding 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from danesync.__main__ import EX_TEMPFAIL, main
from danesync.config import build_config
from danesync.errors import ConfigError
from danesync.lock import LockHeld, acquire_lock


class TestLock:
    """`run` and `sync` hold an exclusive lock; readers take none."""

    def test_second_holder_is_refused(self, tmp_path: Path) -> None:
        first = acquire_lock(tmp_path)
        try:
            with pytest.raises(LockHeld, match="daemon is running"):
                acquire_lock(tmp_path)
        finally:
            first.release()
        acquire_lock(tmp_path).release()  # released: free again

    def test_sync_while_the_daemon_runs_exits_75(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`status` configures no logging, and sync fails before it does."""
        config = tmp_path / "danesync.toml"
        state = tmp_path / "state"
        config.write_text(f'[dns]\nmode = "off"\n[state]\ndir = "{state}"\n')
        held = acquire_lock(state)
        try:
            assert main(["sync", "-c", str(config)]) == EX_TEMPFAIL
            err = capsys.readouterr().err
            assert "holds" in err and "lock" in err and "Traceback" not in err
            # Readers need no lock: status answers by the monitoring convention.
            assert main(["status", "-c", str(config)]) in (0, 1, 2)
            assert capsys.readouterr().out.startswith("DANESYNC ")
        finally:
            held.release()


class TestConfigRefusesWhatFailsLater:
    def test_deploy_dir_postconf_cannot_take(self) -> None:
        for bad in ("/etc/postfix/dane sync", "/etc/postfix/a,b"):
            with pytest.raises(ConfigError) as error:
                build_config({"postfix": {"deploy_dir": bad}}, Path("/t.toml"))
            assert any(p.startswith("postfix.deploy_dir:") for p in error.value.problems)

    def test_check_mode_with_server_only_is_valid(self) -> None:
        config = build_config(
            {"dns": {"server": "192.0.2.53"}, "certificate": [{"lineage": "mx.example.com"}]},
            Path("/t.toml"),
        )
        assert config.dns.zone is None  # found by an SOA query at run time
