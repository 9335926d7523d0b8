"""MatchSet: the compact match set of a ChainInfo is, to every reader, the
frozenset it stands for (issue 15, mem)."""

from __future__ import annotations

import pytest

from danesync.chaininfo import ChainInfo, MatchSet
from danesync.matching import build_match_set, rrset_accepts
from danesync.tlsa import TlsaRecord
from tests.harness.certs import Hierarchy, Leaf

NAME = "_25._tcp.mx.example.test."


@pytest.fixture(scope="module")
def ca() -> Hierarchy:
    return Hierarchy("Matchset")


@pytest.fixture(scope="module")
def leaves(ca: Hierarchy) -> list[Leaf]:
    return [ca.issue([f"mx{i}.example.test"]) for i in range(2)]


def rdata_of(leaf: Leaf) -> frozenset[str]:
    return build_match_set(leaf.cert, leaf.chain)


def test_it_is_the_frozenset_it_stands_for(leaves: list[Leaf]) -> None:
    plain = rdata_of(leaves[0])
    compact = MatchSet.of(plain)
    assert isinstance(compact, MatchSet)
    assert compact == plain and plain == compact
    assert hash(compact) == hash(plain)
    assert frozenset(compact) == plain and len(compact) == len(plain)
    assert all(rdata in compact for rdata in plain)
    served = {next(iter(plain)), "3 1 1 " + "00" * 32}
    assert compact & served == plain & served


def test_another_chains_rdata_is_not_in_it(leaves: list[Leaf]) -> None:
    mine, other = rdata_of(leaves[0]), rdata_of(leaves[1])
    compact = MatchSet.of(mine)
    for rdata in other - mine:  # the other leaf's DANE-EE rdata
        assert rdata not in compact
    for rdata in mine:
        assert rdata.upper() not in compact or rdata.upper() == rdata
        assert rdata + "00" not in compact
    for bad in ("3 1 1", "3 1 9 ab", "3 2 1 ab", "", "3", "2 1 1 zz"):
        assert bad not in compact


def test_the_planner_answers_the_same(leaves: list[Leaf]) -> None:
    mine, other = rdata_of(leaves[0]), rdata_of(leaves[1])
    compact = MatchSet.of(mine)
    for rdata in sorted(mine | other):
        usage, selector, matching, data = rdata.split(" ")
        record = TlsaRecord(NAME, int(usage), int(selector), int(matching), data)
        assert rrset_accepts([record], compact) == rrset_accepts([record], mine)


def test_chains_of_one_issuer_share_its_part(leaves: list[Leaf]) -> None:
    a, b = (MatchSet.of(rdata_of(leaf)) for leaf in leaves)
    assert isinstance(a, MatchSet) and isinstance(b, MatchSet)
    assert a._issuer is b._issuer


@pytest.mark.parametrize(
    "rdata",
    [
        frozenset(),
        frozenset({"3 1 1 " + "ab" * 32}),  # not the four digests of a leaf
        frozenset({"3 1 1 " + "AB" * 32, "3 0 1 " + "ab" * 32}),
        frozenset({"1 1 1 " + "ab" * 32}),
    ],
)
def test_any_other_shape_stays_a_frozenset(rdata: frozenset[str]) -> None:
    assert MatchSet.of(rdata) is not None and type(MatchSet.of(rdata)) is frozenset
    assert MatchSet.of(rdata) == rdata


def test_uppercase_digests_stay_a_frozenset(leaves: list[Leaf]) -> None:
    upper = frozenset(r.upper() for r in rdata_of(leaves[0]))
    assert type(MatchSet.of(upper)) is frozenset


def test_chain_info_round_trip(leaves: list[Leaf]) -> None:
    plain = rdata_of(leaves[0])
    info = ChainInfo.from_json(
        {
            "fingerprint": "ab" * 32,
            "serial": "01",
            "not_before": "2026-11-01T00:00:00+00:00",
            "not_after": "2027-01-01T00:00:00+00:00",
            "issuer": "CN=CA",
            "key_algorithm": "ecdsa",
            "version": 1,
            "names": ["mx.example.test"],
            "leaf_spki": "ab" * 32,
            "issuer_spki": None,
            "matches": sorted(plain),
        }
    )
    assert isinstance(info.matches, MatchSet)
    assert info.to_json()["matches"] == sorted(plain)
    assert info == ChainInfo.from_json(info.to_json())
