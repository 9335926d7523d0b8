"""One ChainInfo per chain, found through the state (issue 15, memplan): the
read cache's entries are the state's equal objects, after a restart and after
a fresh read, without a registry of every chain in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from danesync.adapters import CertbotLineages, open_read_cache
from danesync.config import Config
from danesync.plan import Problem
from danesync.ports import Offer, OfferPems
from danesync.readcache import ReadCache
from danesync.state import ChainInfo, LineageState, State
from tests.harness.certs import NOW, Hierarchy
from tests.harness.lineage import build_dns_off_config, make_lineage

NAMES = [f"mx{i}.example.test" for i in range(3)]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    ca = Hierarchy("Sharing")
    config_dir = tmp_path / "letsencrypt"
    for name in NAMES:
        make_lineage(config_dir, name, ca.issue([name]))
    return build_dns_off_config(tmp_path, NAMES)


def infos(config: Config, lineages: CertbotLineages) -> dict[str, ChainInfo]:
    found: dict[str, Offer | Problem] = {
        c.lineage: lineages.read_candidate(c, NOW) for c in config.certificates
    }
    lineages.flush()
    result = {}
    for name, offer in found.items():
        assert isinstance(offer, Offer), offer
        result[name] = offer.info
    return result


def state_of(chains: dict[str, ChainInfo]) -> State:
    """A state as loaded: equal objects, not the same ones."""
    state = State()
    for name, info in chains.items():
        state.lineage(name).deployed = ChainInfo.from_json(info.to_json())
        assert state.lineage(name).deployed is not info
    return state


def test_a_restart_reads_the_states_own_objects(config: Config) -> None:
    first = infos(config, CertbotLineages(config))  # the cache written
    state = state_of(first)
    other = state_of({NAMES[0]: first[NAMES[1]]})  # not its chain: never taken
    state.lineage(NAMES[0]).deployed = other.lineage(NAMES[0]).deployed
    again = infos(config, CertbotLineages(config, open_read_cache(config, state.chains_of)))
    assert again == first
    for name in NAMES[1:]:
        assert again[name] is state.lineage(name).deployed
    assert again[NAMES[0]] is not state.lineage(NAMES[0]).deployed


def test_a_fresh_read_keeps_the_states_object(config: Config) -> None:
    first = infos(config, CertbotLineages(config, ReadCache(None)))  # nothing written
    state = state_of(first)
    lineages = CertbotLineages(config, open_read_cache(config, state.chains_of))
    fresh = infos(config, lineages)  # validated again: no entry on disk
    for name in NAMES:
        assert fresh[name] is state.lineage(name).deployed
        cached = lineages.cache.get(name)
        assert cached is not None and cached.info is state.lineage(name).deployed


def test_a_pending_equal_to_the_deployed_is_one_object(config: Config) -> None:
    info = infos(config, CertbotLineages(config, ReadCache(None)))[NAMES[0]]
    held = LineageState(deployed=info, pending=info, inflight=info)
    loaded = LineageState.from_json(held.to_json())
    assert loaded.pending is loaded.deployed and loaded.inflight is loaded.deployed
    assert loaded.to_json() == held.to_json()


def test_offer_pems_are_indexed_only_when_looked_at(config: Config) -> None:
    chains = infos(config, CertbotLineages(config, ReadCache(None)))
    offers = [Offer(info, info.serial.encode()) for info in chains.values()]
    pems = OfferPems(offers)
    assert pems._given is not None  # a pass that deploys nothing makes no fingerprints
    first = chains[NAMES[0]]
    assert first.fingerprint in pems and pems[first.fingerprint] == first.serial.encode()
    assert pems._given is None and len(pems) == len(NAMES)
    assert set(pems) == {info.fingerprint for info in chains.values()}
    assert "00" * 32 not in pems
