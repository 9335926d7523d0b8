"""A renewal pass looks only at what changed, and decides exactly what a walk
over every lineage decides (issue 15: one renewal among 10,000 lineages).

Each computation that skips the unchanged lineages is compared with the
same computation over all of them, on cases built so that leaving one of its
inputs out changes the answer (a lineage sharing the renewed one's TLSA
name, one dropped from the configuration, records added by the pass)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from danesync import snicerts
from danesync.actions import postfix
from danesync.actions.snitables import (
    build_shard_split,
    build_sni_shard,
    build_sni_shards,
    build_sni_table_names,
    write_sni_tables,
)
from danesync.chain import LineageFiles, validate_chain
from danesync.config import CertificateConfig, Config, build_config
from danesync.history import NameHistory, RRset, record_served
from danesync.plan import Observations, Plan, build_relevant_lineages, plan_pass, plan_pass_over
from danesync.sni import (
    SniCertificate,
    build_served_names,
    build_sni_table,
    build_sni_table_afresh,
)
from danesync.state import ChainInfo, State
from danesync.tlsa import TlsaRecord, Usage
from tests.harness.certs import NOW, Hierarchy

PRIMARY = "127.0.0.1:5353"
SHARED = "_25._tcp.mx.example.test."  # a, b and the dropped d publish here
OWN_C = "_25._tcp.c.example.test."
OWN_E = "_25._tcp.e.example.test."


def config_of(mode: str = "rfc2136") -> Config:
    dns: dict[str, Any] = {"mode": mode, "server": PRIMARY, "zone": "example.test", "ttl": 100}
    if mode == "rfc2136":
        dns["tsig_key_file"] = "/etc/danesync/tsig.key"
    certificates = [
        {"lineage": "a", "hostnames": ["mx.example.test"], "tlsa": [SHARED]},
        {"lineage": "b", "hostnames": ["mx.example.test"], "tlsa": [SHARED], "sni": True},
        {"lineage": "c", "hostnames": ["c.example.test"], "tlsa": [OWN_C], "sni": True},
        {"lineage": "e", "hostnames": ["e.example.test"], "tlsa": [OWN_E], "usages": ["3 1 1"]},
    ]
    return build_config({"dns": dns, "certificate": certificates}, Path("/test.toml"))


def chain_of(ca: Hierarchy, lineage: str, name: str, host: str) -> ChainInfo:
    leaf = ca.issue([host])
    files = LineageFiles(
        lineage, 1, leaf.key_pem, leaf.cert_pem, leaf.chain_pem, leaf.fullchain_pem
    )
    usages = (Usage.DANE_TA, Usage.DANE_EE)
    return ChainInfo.from_chain(validate_chain(files, (host,), (name,), usages, NOW))


@pytest.fixture(scope="module")
def chains() -> dict[str, ChainInfo]:
    old, new, other = Hierarchy("Incr old"), Hierarchy("Incr new"), Hierarchy("Incr other")
    return {
        "a": chain_of(old, "a", SHARED, "mx.example.test"),
        "a-renewed": chain_of(old, "a", SHARED, "mx.example.test"),
        "a-new-issuer": chain_of(new, "a", SHARED, "mx.example.test"),
        "b": chain_of(other, "b", SHARED, "mx.example.test"),
        "c": chain_of(old, "c", OWN_C, "c.example.test"),
        "d": chain_of(new, "d", SHARED, "mx.example.test"),
        "e": chain_of(other, "e", OWN_E, "e.example.test"),
    }


def state_of(chains: dict[str, ChainInfo]) -> State:
    """Everything deployed; d no longer configured; every record served and owned."""
    state = State()
    for lineage in "abcde":
        state.lineage(lineage).deployed = chains[lineage]
    at_name: dict[str, set[TlsaRecord]] = {}
    for lineage in "abcde":
        for record in chains[lineage].tlsa:
            at_name.setdefault(record.name, set()).add(record)
    for name, records in at_name.items():
        history = NameHistory(name)
        for moment in (NOW - dt.timedelta(days=30), NOW):
            history = record_served(history, PRIMARY, RRset.of(records, 100), moment)
        state.names[name] = NameHistory(name, history.seen, history.servers, frozenset(records))
    return state


def both(config: Config, state: State, obs: Observations) -> tuple[Plan, Plan]:
    """The renewal pass as planned, and planned over every lineage."""
    return plan_pass(config, state, obs, NOW), plan_pass_over(config, state, obs, NOW, None)


class TestRenewalPlan:
    """plan_pass over a few candidates equals the plan over every lineage."""

    @pytest.mark.parametrize("mode", ["rfc2136", "check", "off"])
    @pytest.mark.parametrize("candidate", ["a", "a-renewed", "a-new-issuer"])
    def test_same_plan_as_over_every_lineage(
        self, chains: dict[str, ChainInfo], mode: str, candidate: str
    ) -> None:
        config, state = config_of(mode), state_of(chains)
        obs = Observations({"a": chains[candidate]}, frozenset({SHARED}))
        relevant = build_relevant_lineages(config, obs)
        assert relevant is not None and "c" not in relevant  # c is not looked at
        renewal, every = both(config, state, obs)
        assert renewal == every

    def test_a_lineage_sharing_the_name_keeps_its_records(
        self, chains: dict[str, ChainInfo]
    ) -> None:
        """Without b (same TLSA name, not renewed) its record would be retired."""
        config, state = config_of(), state_of(chains)
        obs = Observations({"a": chains["a"]}, frozenset({SHARED}))
        renewal, every = both(config, state, obs)
        assert renewal == every
        only_a = plan_pass_over(config, state, obs, NOW, {"a"})
        assert only_a != every  # the case is sensitive to leaving b out

    def test_a_dropped_lineage_keeps_its_records(self, chains: dict[str, ChainInfo]) -> None:
        """d is gone from the config but still served until the next deploy."""
        config, state = config_of(), state_of(chains)
        obs = Observations({"a": chains["a"]}, frozenset({SHARED}))
        plan = plan_pass(config, state, obs, NOW)
        retired = {r for step in plan.steps for r in getattr(step, "delete", ())}
        assert not retired & set(chains["d"].tlsa)
        assert plan == plan_pass_over(config, state, obs, NOW, None)

    def test_names_observed_beyond_the_candidates(self, chains: dict[str, ChainInfo]) -> None:
        """A pass that looked at more names than its candidates' plans for them all."""
        config, state = config_of(), state_of(chains)
        obs = Observations({"a": chains["a"]}, frozenset({SHARED, OWN_E}))
        renewal, every = both(config, state, obs)
        assert renewal == every
        assert plan_pass_over(config, state, obs, NOW, {"a", "b"}) != every  # e's retired

    def test_extra_records_of_another_lineage(self, chains: dict[str, ChainInfo]) -> None:
        """Records handed to the pass for c, at a name c's config does not name."""
        config, state = config_of(), state_of(chains)
        extra = TlsaRecord(SHARED, 2, 1, 1, "ab" * 32)
        obs = Observations({"a": chains["a"]}, frozenset({SHARED}), extra_records={"c": (extra,)})
        renewal, every = both(config, state, obs)
        assert renewal == every
        assert any(extra in getattr(step, "add", ()) for step in renewal.steps)

    def test_a_full_pass_walks_everything(self, chains: dict[str, ChainInfo]) -> None:
        config = config_of()
        obs = Observations({n: chains[n] for n in "abce"}, frozenset({SHARED, OWN_C, OWN_E}))
        assert build_relevant_lineages(config, obs) is None


class TestSniCertificates:
    """The SNI lineages as the table sees them, kept up to date by what changed,
    equal to the list built afresh after every change of what it reads."""

    @staticmethod
    def afresh(
        configured: tuple[CertificateConfig, ...], chains: dict[str, ChainInfo], where: Path
    ) -> list[SniCertificate]:
        return [
            SniCertificate(
                c.lineage,
                chains[c.lineage].key_algorithm,
                build_served_names(c.hostnames, c.hostnames_set, chains[c.lineage].names),
                str(where / f"{c.lineage}.pem"),
            )
            for c in configured
            if c.sni and c.lineage in chains
        ]

    def test_after_each_change(self, chains: dict[str, ChainInfo]) -> None:
        ca = Hierarchy("Incr SNI")
        config = config_of()
        rsa = chain_of(ca, "b", SHARED, "mx.example.test")
        rsa = dataclasses.replace(rsa, key_algorithm="rsa")
        renamed = chain_of(ca, "c", OWN_C, "mail.example.test")
        narrowed = dataclasses.replace(
            config,
            certificates=tuple(
                dataclasses.replace(c, hostnames=("x.example.test",), hostnames_set=True)
                if c.lineage == "c"
                else c
                for c in config.certificates
            ),
        )
        deployed = {n: chains[n] for n in "abce"}
        one, other = Path("/d"), Path("/e")

        class Paths:
            def __init__(self, where: Path) -> None:
                self.where = where

            def chain_path(self, lineage: str) -> str:
                return str(self.where / f"{lineage}.pem")

        paths, moved = Paths(one), Paths(other)
        steps: list[tuple[Config, dict[str, ChainInfo], Paths]] = [
            (config, deployed, paths),
            (config, dict(deployed), paths),  # equal: the same answer
            (config, {**deployed, "c": renamed}, paths),  # a renewal with other names
            (config, {**deployed, "b": rsa}, paths),  # another key type
            (config, {n: deployed[n] for n in "abe"}, paths),  # c no longer deployed
            (config, {**deployed, "d": chains["d"]}, paths),  # one more (not configured)
            (narrowed, deployed, paths),  # SIGHUP: c's hostnames
            (narrowed, deployed, moved),  # another deploy_dir
        ]
        for configured, chains_now, where in steps:
            got = snicerts.build_sni_certificates(
                configured.certificates, chains_now, where.chain_path, where
            )
            assert list(got) == self.afresh(configured.certificates, chains_now, where.where)


class TestShardsWritten:
    """A renewal rewrites the tables that changed: those naming its file, and
    those an entry left; compared with the tables whose contents differ."""

    COUNT = 8

    def written(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, steps: list[Any]
    ) -> list[set[int]]:
        """Write each step's entries (with its changed files); the tables written each time."""
        names = build_sni_table_names(self.COUNT)
        seen: list[set[int]] = []

        def write(deploy_dir: Path, shard: Any, *, config_dir: Any, name: str) -> Path:
            seen[-1].add(names.index(name))
            (deploy_dir / f"{name}.db").touch()
            return deploy_dir / name

        monkeypatch.setattr(postfix, "write_sni_table", write)
        for entries, changed in steps:
            seen.append(set())
            write_sni_tables(tmp_path, entries, self.COUNT, changed)
        return seen

    def test_against_the_tables_that_differ(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        before = {f"h{i}.example.test": Path(f"/d/l{i}.pem") for i in range(40)}
        renamed = dict(before)
        del renamed["h3.example.test"]  # l3 renewed with another name
        renamed["n3.example.test"] = Path("/d/l3.pem")
        renewed = {Path("/d/l3.pem")}
        steps = [(before, None), (dict(before), {Path("/d/l5.pem")}), (renamed, renewed)]
        first, same, other = self.written(monkeypatch, tmp_path, steps)
        assert first == set(range(self.COUNT))
        old, new = build_sni_shards(before, self.COUNT), build_sni_shards(renamed, self.COUNT)
        assert same == {build_sni_shard("h5.example.test", self.COUNT)}
        differ = {i for i in range(self.COUNT) if old[i] != new[i]}
        assert other == differ | {build_sni_shard("n3.example.test", self.COUNT)}
        assert build_sni_shard("h3.example.test", self.COUNT) in other  # the entry it left


class TestSniTable:
    """The table updated for what changed equals the table built afresh, entry
    for entry and problem for problem, through renewals that change names,
    key types and files, with wildcards, conflicts and names that cannot be keys."""

    NAMES = (
        "a.example.test",
        "b.example.test",
        "*.example.test",
        "x.a.example.test",
        "*.a.example.test",
        "example.test",
        "A.Example.Test.",
        "bad name",
        "*.other.test",
        "m.other.test",
    )

    def test_against_the_table_built_afresh(self) -> None:
        rng = random.Random(15)
        lineages = [f"l{i}" for i in range(12)]

        def certificate(lineage: str) -> SniCertificate:
            names = tuple(rng.sample(self.NAMES, rng.randint(0, 3)))
            algorithm = rng.choice(("ecdsa", "rsa"))
            return SniCertificate(
                lineage, algorithm, names, Path(f"/d/{lineage}{rng.randint(0, 1)}")
            )

        current = [certificate(lineage) for lineage in lineages]
        checked = 0
        for _ in range(300):
            for place in rng.sample(range(len(current)), rng.randint(0, 3)):
                current[place] = certificate(current[place].lineage)
            if rng.random() < 0.05:  # now and then a lineage more or fewer: built again
                current = current[:-1] if rng.random() < 0.5 else [*current, certificate("new")]
            table = build_sni_table(current)
            afresh = build_sni_table_afresh(current)
            assert table == afresh
            assert table.by_key == afresh.by_key
            assert table.files() == afresh.files()
            checked += bool(afresh.problems) and len(afresh.entries) > 3
        assert checked > 100  # the cases had conflicts and entries to get wrong

    def test_split_against_the_split_afresh(self) -> None:
        """The tables' contents and files, updated from the last split, through
        entries that come, go and change files."""
        rng = random.Random(2136)
        count = 4
        entries = {f"h{i}.example.test": (Path(f"/d/l{i}.pem"),) for i in range(60)}
        for _ in range(200):
            for _ in range(rng.randint(0, 4)):
                key = f"h{rng.randrange(80)}.example.test"
                if key in entries and rng.random() < 0.3:
                    del entries[key]
                else:
                    entries[key] = (Path(f"/d/l{rng.randrange(80)}.pem"),)
            split = build_shard_split(MappingProxyType(dict(entries)), count)
            shards = build_sni_shards(entries, count)
            assert list(split.shards) == shards
            for path in {p for files in entries.values() for p in files}:
                assert split.holding(path) == [i for i in range(count) if path in _files(shards[i])]
            assert all(split.holding(Path(f"/d/l{i}.pem")) == [] for i in range(80, 90))


def _files(shard: dict[str, Any]) -> set[Path]:
    return {path for files in shard.values() for path in files}
