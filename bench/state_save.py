"""The state store alone, in this process: what a cold start, a warm start and one
renewal cost it at N lineages (issue 15, shard). Synthetic state (one deployed
chain per lineage, one owner name per lineage with one record), no Postfix.

`PYTHONPATH=DAEMON_DIR python -m bench.state_save [--count 10000]` prints JSON:
the first save into an empty directory (a cold start's intents: every file
new), a second save with every lineage changed (its confirmations: every file
replaced), a restart's load, one lineage changed (a renewal: median of five),
nothing changed; with the renames and files written for each. Run each code
by its PYTHONPATH (e.g. a `git archive` of the baseline's daemon/), under
`flock /tmp/danesync-bench.lock`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def build(count: int) -> Any:
    from danesync.history import NameHistory, RRset, record_served
    from danesync.state import ChainInfo, State
    from danesync.tlsa import TlsaRecord

    state = State(last_wall=NOW)
    for n in range(count):
        lineage = f"mx{n}.example.test"
        fp = f"{n:064x}"
        state.lineage(lineage).deployed = ChainInfo(
            fp, f"{n:X}", NOW, NOW + dt.timedelta(days=90), "CN=CA", "ecdsa", n,
            (lineage,), fp, fp, frozenset({f"3 1 1 {fp}", f"2 1 1 {fp}"}),
        )  # fmt: skip
        owner = f"_25._tcp.{lineage}."
        record = TlsaRecord(owner, 3, 1, 1, fp)
        seen = record_served(NameHistory(owner), "192.0.2.1:53", RRset.of({record}, 300), NOW)
        state.names[owner] = NameHistory(owner, seen.seen, seen.servers, frozenset({record}))
    return state


def counted(action: Callable[[], object]) -> tuple[float, int]:
    """Seconds and renames (os.replace) of one call."""
    renames = [0]
    real = os.replace

    def replace(source: Any, target: Any) -> None:
        renames[0] += 1
        real(source, target)

    os.replace = replace
    try:
        started = time.perf_counter()
        action()
        return time.perf_counter() - started, renames[0]
    finally:
        os.replace = real


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.state_save", description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default /tmp)")
    arguments = parser.parse_args()
    import dataclasses

    import danesync.state
    from danesync.state import StateStore

    figures: dict[str, Any] = {"code": str(Path(danesync.state.__file__).parent)}
    figures["load_before"] = Path("/proc/loadavg").read_text().split()[0]
    with tempfile.TemporaryDirectory(dir=arguments.dir) as temporary:
        directory = Path(temporary) / "state"
        state = build(arguments.count)
        store = StateStore(directory)
        figures["cold_first_save"] = counted(lambda: store.save(state))
        for lineage in state.lineages.values():
            lineage.failed_reason = "changed"
        figures["cold_second_save"] = counted(lambda: store.save(state))
        files = [p for p in directory.rglob("*.json")]
        figures["files"] = len(files)
        figures["bytes"] = sum(p.stat().st_size for p in files)
        store = StateStore(directory)
        figures["warm_load"] = counted(lambda: store.load())
        state = store.load().state
        store.save(state)
        one = []
        for n in range(5):
            lineage = state.lineages[f"mx{n * 1000 % arguments.count}.example.test"]
            assert lineage.deployed is not None
            lineage.deployed = dataclasses.replace(lineage.deployed, serial=f"R{n}")
            one.append(counted(lambda: store.save(state)))
        figures["one_renewal_save"] = (statistics.median(s for s, _ in one), one[0][1])
        figures["nothing_changed_save"] = counted(lambda: store.save(state))
    figures["load_after"] = Path("/proc/loadavg").read_text().split()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
