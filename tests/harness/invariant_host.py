"""One mail host for the invariant tests: certbot dir, danesync config, daemon.

Everything goes through danesync's user contract only (DESIGN.md): the
config file, ``danesync run|sync|status|check``, exit codes and the JSON log
events, so these tests do not depend on how the service is built inside.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.harness.bind import BindServer
from tests.harness.danesync import json_events, run_danesync, start_danesync, write_config
from tests.harness.postfix import PostfixInstance

MX = "mx.example.test"
NAME = f"_25._tcp.{MX}"

Event = dict[str, Any]


def names(events: list[Event]) -> list[str]:
    return [str(e.get("event")) for e in events]


class Daemon:
    """`danesync run --log-format json` in the background, its log in a file."""

    def __init__(self, config: Path, log: Path, env: Mapping[str, str] | None = None) -> None:
        self.log = log
        self.process: subprocess.Popen[str] = start_danesync(
            "run", "-c", str(config), "--log-format", "json", env=env, log=log
        )

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, name: str | None = None) -> list[Event]:
        events = json_events(self.text())
        return events if name is None else [e for e in events if e.get("event") == name]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, name: str, count: int = 1, timeout: float = 60) -> Event:
        self.wait_until(lambda: len(self.events(name)) >= count, f"{count} x {name}", timeout)
        return self.events(name)[count - 1]

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if not self.alive and not condition():
                raise AssertionError(
                    f"danesync exited ({self.process.returncode}) before {what}; log:\n"
                    f"{self.text()[-5000:]}"
                )
            if time.monotonic() > end:
                raise AssertionError(f"no {what} within {timeout} s; log:\n{self.text()[-5000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode


class Host:
    """A certbot config dir, a danesync config, deploy and state dirs for one test."""

    def __init__(
        self,
        root: Path,
        postfix: PostfixInstance,
        bind: BindServer | None = None,
        *,
        ttl: int = 2,
        rollover_wait: int = 2,
        mode: str | None = None,
        probe: str | None = None,
        deploy_dir: Path | None = None,
        settle: float = 0.1,
        reconcile_interval: int = 3600,
    ) -> None:
        self.root = root
        self.postfix = postfix
        self.bind = bind
        self.letsencrypt = root / "letsencrypt"
        self.deploy_dir = deploy_dir or root / "deploy"
        self.state_dir = root / "state"
        self.config = root / "danesync.toml"
        self.dns: dict[str, Any] = {"mode": mode or ("rfc2136" if bind else "off")}
        if bind is not None:
            self.dns.update(server=bind.address, zone=bind.zone, ttl=ttl)
            self.dns["rollover_wait"] = rollover_wait
            if self.dns["mode"] == "rfc2136":
                self.dns["tsig_key_file"] = bind.key_path
        self.probe = probe or f"{postfix.host}:{postfix.port}"
        self.daemon = {"settle": settle, "reconcile_interval": reconcile_interval}
        self.certificates: list[dict[str, Any]] = [{"lineage": MX}]
        self._daemons: list[Daemon] = []
        self.write()

    def write(self, certificates: list[dict[str, Any]] | None = None) -> Path:
        if certificates is not None:
            self.certificates = certificates
        return write_config(
            self.config,
            {
                "certbot": {"config_dir": self.letsencrypt},
                "postfix": {
                    "config_dir": self.postfix.config_dir,
                    "deploy_dir": self.deploy_dir,
                    "probe": self.probe,
                },
                "dns": self.dns,
                "state": {"dir": self.state_dir},
                "daemon": self.daemon,
            },
            self.certificates,
        )

    def chain_file(self, lineage: str = MX) -> Path:
        return self.deploy_dir / f"{lineage}.pem"

    def run(self, *arguments: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
        result = run_danesync(*arguments, "-c", str(self.config), env=env)
        return result.returncode, result.stdout, result.stderr

    def sync(self, env: Mapping[str, str] | None = None) -> tuple[int, list[Event], str]:
        """One `danesync sync`: exit status, its log events, its stderr."""
        code, stdout, stderr = self.run("sync", env=env)
        return code, json_events(stdout + "\n" + stderr), stderr

    def sync_until(self, event: str, limit: float = 60) -> list[Event]:
        # A deadline, not a measure: each `danesync sync` takes seconds on a loaded
        # machine, and a rollover waits out real TTLs between them.
        end = time.monotonic() + limit
        seen: list[str] = []
        while time.monotonic() < end:
            _code, events, stderr = self.sync()
            assert "Traceback" not in stderr, stderr
            seen += names(events)
            if event in names(events):
                return events
            time.sleep(0.5)
        raise AssertionError(f"no {event} within {limit}s; events: {seen}")

    def status(self) -> dict[str, Any]:
        code, stdout, stderr = self.run("status", "--json")
        assert code in (0, 1, 2), stderr
        return json.loads(stdout)  # type: ignore[no-any-return]

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())  # type: ignore[no-any-return]

    def start(self, env: Mapping[str, str] | None = None, name: str = "daemon") -> Daemon:
        daemon = Daemon(self.config, self.root / f"{name}.log", env)
        self._daemons.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self._daemons:
            daemon.stop()
