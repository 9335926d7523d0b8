"""How long a renewal waits with and without an issuer family (simulated time).

`python -m bench.families [--renewals 20] [--seed 1]`

Twenty renewals, each from an intermediate picked at random among the
family's active ones (as Let's Encrypt does: YE1/YE2), then the same with the
backup taking over. Each renewal runs through the real pure planner
(danesync.plan.plan_pass) with real chains made by the test CA, and a
minimal executor of its steps over a simulated clock and a simulated DNS
(one authoritative server, the primary: a published record is served at
once; passes every `PASS_INTERVAL` seconds, or at the moment the planner
asks for).
The figures are simulated time, not wall-clock time; dns.ttl = 3600 and
rollover_wait = 7200, the defaults.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.harness.certs import NOW
from tests.harness.families import CaFamily, CaMember, family_toml, make_test_family

from danesync.chain import LineageFiles, validate_chain
from danesync.config import Config, build_config
from danesync.families import build_families, read_shipped_families
from danesync.history import RRset, record_owned, record_served
from danesync.plan import Deploy, Observations, Plan, Publish, Retire, plan_pass
from danesync.state import ChainInfo, State
from danesync.tlsa import TlsaRecord, Usage

MX = "mx.example.test"
NAME = f"_25._tcp.{MX}."
PASS_INTERVAL = dt.timedelta(seconds=30)
PRIMARY = "127.0.0.1:53"
RENEWAL_SPACING = dt.timedelta(days=1)  # simulated time between renewals
RESULTS = Path(__file__).resolve().parent / "results"


def make_config(family: CaFamily, with_family: bool) -> Config:
    certificate: dict[str, object] = {"lineage": MX}
    if with_family:
        certificate["issuers"] = family.name
    families = {
        **read_shipped_families(),
        **build_families(tomllib.loads(family_toml(family)), "bench"),
    }
    document = {
        "dns": {
            "mode": "rfc2136",
            "server": "127.0.0.1",
            "zone": "example.test",
            "tsig_key_file": "/etc/danesync/tsig.key",
        },
        "certificate": [certificate],
    }
    return build_config(document, Path("/bench.toml"), families)


def make_chain(member: CaMember, index: int) -> ChainInfo:
    # Every renewal expires a little later than the last: never a downgrade.
    leaf = member.hierarchy.issue(
        [MX],
        not_before=NOW - dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=80, hours=index),
    )
    files = LineageFiles(MX, index, leaf.key_pem, leaf.cert_pem, leaf.chain_pem, leaf.fullchain_pem)
    return ChainInfo.from_chain(validate_chain(files, (MX,), (NAME,), (Usage.DANE_TA,), NOW))


class SimulatedHost:
    """State, one DNS server (the primary) and a clock; executes the planner's steps
    as danesync.steps does (publish, retire, deploy), with no failures."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = State()
        self.primary: set[TlsaRecord] = set()
        self.now = NOW
        self.peak = 0  # the most records at the name at any moment

    def look(self) -> None:
        """A pass asks the server: it serves what it has, with dns.ttl."""
        history = self.state.name(NAME)
        rrset = RRset.of(self.primary, self.config.dns.ttl)
        self.state.names[NAME] = record_served(history, PRIMARY, rrset, self.now)

    def execute(self, plan: Plan) -> None:
        """The steps, as danesync.steps runs them when nothing fails."""
        for step in plan.steps:
            history = self.state.name(NAME)
            if isinstance(step, Publish):
                self.primary |= set(step.add)
                self.state.names[NAME] = record_owned(history, step.add, ())
            elif isinstance(step, Retire):
                self.primary -= set(step.delete)
                self.state.names[NAME] = record_owned(history, (), step.delete)
            elif isinstance(step, Deploy):
                for item in step.items:
                    self.state.lineage(item.lineage).deployed = item.chain
            self.look()
            self.peak = max(self.peak, len(self.primary))

    def bring_in(self, chain: ChainInfo) -> tuple[dt.timedelta, bool]:
        """Passes until `chain` is served: the wait, and whether it was ever held."""
        arrived, held = self.now, False
        while True:
            self.look()
            plan = plan_pass(
                self.config, self.state, Observations({MX: chain}, frozenset({NAME})), self.now
            )
            self.execute(plan)
            lineage = self.state.lineages.get(MX)
            if lineage is not None and lineage.deployed == chain:
                return self.now - arrived, held
            held = True
            wake = plan.wake_at
            step_to = self.now + PASS_INTERVAL
            self.now = wake if wake is not None and self.now < wake < step_to else step_to

    def settle(self) -> None:
        """Passes with nothing new until no step is left (records published, retired)."""
        for _ in range(1000):
            self.look()
            chain = self.state.lineages[MX].deployed
            plan = plan_pass(
                self.config, self.state, Observations({MX: chain}, frozenset({NAME})), self.now
            )
            if not plan.steps:
                return
            self.execute(plan)
            self.now += PASS_INTERVAL


@dataclass(frozen=True)
class Run:
    label: str
    waits: tuple[float, ...]  # seconds, one per renewal after the first deploy
    switches: int
    held: int
    max_records: int

    def row(self) -> str:
        total = sum(self.waits)
        return (
            f"| {self.label} | {len(self.waits)} | {self.switches} | {self.held} | "
            f"{statistics.median(self.waits):.0f} s | {statistics.fmean(self.waits):.0f} s | "
            f"{max(self.waits):.0f} s | {total / 3600:.1f} h | {self.max_records} |"
        )


def simulate(family: CaFamily, picks: list[CaMember], with_family: bool, label: str) -> Run:
    host = SimulatedHost(make_config(family, with_family))
    host.bring_in(make_chain(picks[0], 0))  # the first deploy: not counted
    host.settle()
    waits: list[float] = []
    held = switches = 0
    for index, member in enumerate(picks[1:], start=1):
        switches += member is not picks[index - 1]
        host.now += RENEWAL_SPACING
        wait, was_held = host.bring_in(make_chain(member, index))
        waits.append(wait.total_seconds())
        held += was_held
        host.settle()
    return Run(label, tuple(waits), switches, held, host.peak)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.families", description=__doc__)
    parser.add_argument("--renewals", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    family = make_test_family("testca", ecdsa=("E1", "E2", "E3"), rsa=(), backups=("E3",))
    e1, e2, e3 = family.members
    # The first pick is the chain already deployed; then `renewals` renewals.
    random_picks = [rng.choice((e1, e2)) for _ in range(args.renewals + 1)]
    backup_picks = [rng.choice((e1, e2)) for _ in range(args.renewals // 2 + 1)]
    backup_picks += [e3] * (args.renewals - len(backup_picks) + 1)
    runs = [
        simulate(family, random_picks, False, "random active, no family"),
        simulate(family, random_picks, True, 'random active, issuers = "testca"'),
        simulate(family, backup_picks, False, "backup takes over, no family"),
        simulate(family, backup_picks, True, 'backup takes over, issuers = "testca"'),
    ]
    lines = [
        f"Simulated time through the pure planner; {args.renewals} renewals, seed {args.seed}, "
        "dns.ttl 3600 s, rollover_wait 7200 s, passes every 30 s, one server.",
        "",
        "| scenario | renewals | intermediate changed | held | median wait | mean wait "
        "| max wait | total wait | TLSA records at most |",
        "|---|---|---|---|---|---|---|---|---|",
        *(run.row() for run in runs),
    ]
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "families.json").write_text(
        json.dumps([run.__dict__ for run in runs], indent=1, default=list) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
