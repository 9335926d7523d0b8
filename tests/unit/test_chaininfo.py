"""MatchSet: the compact match set of a ChainInfo is, to every reader, the
frozenset it stands for (issue 15, mem)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from danesync.chaininfo import _DERIVED, ChainInfo, MatchSet
from danesync.matching import build_match_set, rrset_accepts
from danesync.tlsa import TlsaRecord, spki_sha256
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


def _info(leaf: Leaf, fingerprint: str, leaf_spki: str) -> ChainInfo:
    return ChainInfo(
        fingerprint,
        "01",
        dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
        dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
        "CN=CA",
        "ecdsa",
        1,
        ("mx.example.test",),
        leaf_spki,
        None,
        MatchSet.of(rdata_of(leaf)),
    )


def test_a_leafs_digests_are_kept_once(leaves: list[Leaf]) -> None:
    """The fingerprint and leaf SPKI of a real leaf are read from the MatchSet
    (issue 15, memplan); what the state writes and equality stay as they were."""
    leaf = leaves[0]
    fingerprint = hashlib.sha256(leaf.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    info = _info(leaf, fingerprint, spki_sha256(leaf.cert))
    assert [slot.__get__(info) for slot, _ in _DERIVED] == [None, None]  # no strings of its own
    assert info.fingerprint == fingerprint and info.leaf_spki == spki_sha256(leaf.cert)
    document = info.to_json()
    assert document["fingerprint"] == fingerprint
    assert document["leaf_spki"] == spki_sha256(leaf.cert)
    again = ChainInfo.from_json(document)
    assert again == info and hash(again) == hash(info)
    assert again.to_json() == document


def test_digests_the_matches_do_not_hold_are_kept(leaves: list[Leaf]) -> None:
    leaf = leaves[0]
    fingerprint = hashlib.sha256(leaf.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    held = _info(leaf, fingerprint, spki_sha256(leaf.cert))
    other_fingerprint = _info(leaf, "cd" * 32, spki_sha256(leaf.cert))
    other_spki = _info(leaf, fingerprint, "cd" * 32)
    for info, (fp, spki) in (
        (other_fingerprint, ("cd" * 32, spki_sha256(leaf.cert))),
        (other_spki, (fingerprint, "cd" * 32)),
    ):
        assert info.fingerprint == fp and info.leaf_spki == spki
        assert None in [slot.__get__(info) for slot, _ in _DERIVED]  # the one derivable
        assert info != held and held != info
        assert info.to_json()["fingerprint"] == fp and info.to_json()["leaf_spki"] == spki
        assert ChainInfo.from_json(info.to_json()) == info
    assert other_fingerprint != other_spki
    copied = dataclasses.replace(other_fingerprint, serial="02")
    assert copied.fingerprint == "cd" * 32 and copied != other_fingerprint
    assert dataclasses.replace(held, serial="01") == held
