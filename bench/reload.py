"""Does a change of the SNI table alone need `postfix reload`, and what does a reload cost?

Postfix's smtpd checks, before it accepts the next connection, whether a
lookup table it opened has changed ("table ... has changed -- restarting")
and exits if so; the master starts a fresh one, which opens the new table.
danesync compiles the SNI table with `postmap -F` into a new file renamed
over the old one, so the change is seen without a reload. A reload restarts
tlsmgr as well, and a handshake that meets the restart waits about a second.

Measured on one private Postfix with a default chain and one SNI chain:
- "table only": a new SNI chain, the table rebuilt, no reload;
- "table + reload": the same, then `postfix reload` (what danesync did);
for each round the time from the table's rename (or the reload's end) to the
first SNI client that got the new leaf, and every handshake made by four
clients (two asking for the SNI name, two for none) during the 2 s after the
change: the slowest one, and how many took over 0.5 s or failed.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness.certs import Hierarchy, Leaf
from tests.harness.postfix import PostfixInstance

from bench.common import (
    DEFAULT_HOSTNAME,
    Result,
    Row,
    der,
    issue,
    progress,
    seconds,
    served_der,
    sni_hostname,
    summarize,
    wait_served,
)
from danesync.actions import files, postfix
from danesync.actions.probe import probe_starttls
from danesync.errors import ProbeError

SNI = sni_hostname(0)
WINDOW = 2.0
STALL = 0.5
COOL_DOWN = 2.5


def _pem(leaf: Leaf) -> bytes:
    return leaf.key_pem + leaf.fullchain_pem


class _Handshakes:
    """Clients connecting back to back for `WINDOW` s; each handshake's duration."""

    def __init__(self, instance: PostfixInstance) -> None:
        self.durations: list[float] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = time.monotonic() + WINDOW
        names: list[str | None] = [SNI, SNI, None, None]
        self._threads = [
            threading.Thread(target=self._poll, args=(instance, name), daemon=True)
            for name in names
        ]
        for thread in self._threads:
            thread.start()

    def _poll(self, instance: PostfixInstance, servername: str | None) -> None:
        while time.monotonic() < self._stop:
            started = time.monotonic()
            try:
                probe_starttls(instance.host, instance.port, servername, timeout=5)
                ok = True
            except ProbeError:
                ok = False
            with self._lock:
                self.durations.append(time.monotonic() - started)
                self.failures += 0 if ok else 1
            time.sleep(0.005)

    def join(self) -> dict[str, Any]:
        for thread in self._threads:
            thread.join()
        return {
            "handshakes": len(self.durations),
            "max": max(self.durations, default=0.0),
            "median": statistics.median(self.durations) if self.durations else 0.0,
            "stalled": sum(1 for d in self.durations if d > STALL),
            "failed": self.failures,
        }


def _round(
    instance: PostfixInstance, deploy: Path, ca: Hierarchy, reload: bool
) -> tuple[float, dict[str, Any]]:
    leaf = issue(ca, SNI)
    path = files.install_chain_file(deploy, SNI, _pem(leaf))
    handshakes = _Handshakes(instance)
    postfix.write_sni_table(deploy, {SNI: path})
    changed = time.monotonic()
    if reload:
        postfix.reload_postfix(instance.config_dir)
    served = wait_served(instance, der(leaf), SNI, timeout=10) - changed
    return served, handshakes.join()


def run(workdir: Path, rounds: int) -> Result:
    ca = Hierarchy("Bench Reload")
    deploy = workdir / "deploy"
    default = files.install_chain_file(deploy, DEFAULT_HOSTNAME, _pem(issue(ca, DEFAULT_HOSTNAME)))
    table = postfix.write_sni_table(
        deploy, {SNI: files.install_chain_file(deploy, SNI, _pem(issue(ca, SNI)))}
    )
    parameters = {
        "smtpd_tls_chain_files": postfix.build_chain_files_value([default]),
        "tls_server_sni_maps": postfix.build_sni_maps_value(table),
    }
    figures: dict[str, dict[str, Any]] = {}
    with PostfixInstance(parameters=parameters) as instance:
        if served_der(instance, SNI) is None:
            raise RuntimeError("the private Postfix serves no SNI chain")
        for label, reload in (("table only", False), ("table + reload", True)):
            served: list[float] = []
            windows: list[dict[str, Any]] = []
            for _ in range(rounds):
                time.sleep(COOL_DOWN)
                took, window = _round(instance, deploy, ca, reload)
                served.append(took)
                windows.append(window)
            progress(
                f"reload: {label}: served after {', '.join(seconds(t) for t in served)};"
                f" stalled rounds {sum(1 for w in windows if w['stalled'])}/{rounds}"
            )
            figures[label] = {"served": summarize(served), "windows": windows}

    only, hook = figures["table only"], figures["table + reload"]

    def stalls(entry: dict[str, Any]) -> str:
        windows = entry["windows"]
        hit = sum(1 for w in windows if w["stalled"])
        worst = max(w["max"] for w in windows)
        failed = sum(w["failed"] for w in windows)
        return f"{hit}/{len(windows)} rounds, slowest {seconds(worst)}, {failed} failed"

    result = Result(
        name="reload",
        title="An SNI chain changed: reload or not",
        setup=(
            f"one private Postfix with a default chain and one SNI chain; {rounds} rounds each:"
            " a new SNI chain file, the table rebuilt with `postmap -F` (renamed over the old);"
            f" four clients (two with SNI, two without) handshaking back to back for {WINDOW:.0f} s"
        ),
        baseline="the same change followed by `postfix reload` (what a deploy hook does)",
    )
    result.rows += [
        Row(
            "new SNI leaf served, median (max), from the table's rename",
            f"{seconds(only['served']['median'])} ({seconds(only['served']['max'])})",
            f"{seconds(hook['served']['median'])} ({seconds(hook['served']['max'])})",
        ),
        Row(f"handshakes over {seconds(STALL)} in the window", stalls(only), stalls(hook)),
    ]
    result.notes.append(
        "smtpd checks its lookup tables before accepting a connection and exits when one"
        " changed (`table ... has changed -- restarting`), so a change of the SNI table alone"
        " is served without a reload; the reload restarts tlsmgr, and handshakes that meet"
        " the restart wait about a second."
    )
    result.data = figures
    return result
