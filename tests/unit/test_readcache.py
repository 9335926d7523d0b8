"""The read cache across restarts: kept in the state directory, trusted only
while every file a validation came from is unchanged; no parsed certificate
or key material held between passes (issue 15)."""

from __future__ import annotations

import gc
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from structlog.testing import capture_logs

from danesync import ari, certbot, readcache
from danesync.adapters import CertbotLineages
from danesync.chain import LineageFiles
from danesync.config import Config
from danesync.monitoring import RenewalNotices
from danesync.plan import Problem
from danesync.ports import Offer
from danesync.readcache import DIRECTORY
from danesync.state import State
from tests.harness.certs import NOW, Hierarchy, Leaf
from tests.harness.lineage import build_dns_off_config, make_lineage, renew, write_version

NAMES = [f"mx{i}.example.test" for i in range(6)]


@pytest.fixture(scope="module")
def ca() -> Hierarchy:
    return Hierarchy("Readcache")


@pytest.fixture(scope="module")
def leaves(ca: Hierarchy) -> dict[str, list[Leaf]]:
    return {name: [ca.issue([name]) for _ in range(2)] for name in NAMES}


@pytest.fixture
def config(tmp_path: Path, leaves: dict[str, list[Leaf]]) -> Config:
    config_dir = tmp_path / "letsencrypt"
    for name in NAMES:
        make_lineage(config_dir, name, leaves[name][0])
    return build_dns_off_config(tmp_path, NAMES)


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = certbot.validate_chain

    def counting(files: LineageFiles, *args: object, **kwargs: object) -> object:
        calls.append(files.lineage)
        return original(files, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(certbot, "validate_chain", counting)
    return calls


def one_pass(config: Config, lineages: CertbotLineages) -> dict[str, Offer | Problem]:
    """What a pass of the service does with the lineages: read every one, then flush."""
    offers = {c.lineage: lineages.read_candidate(c, NOW) for c in config.certificates}
    lineages.flush()
    return offers


def offer(found: Offer | Problem) -> Offer:
    assert isinstance(found, Offer), found
    return found


def test_restart_with_unchanged_lineages_validates_nothing(
    config: Config, validations: list[str]
) -> None:
    first = one_pass(config, CertbotLineages(config))
    assert sorted(validations) == sorted(NAMES)
    validations.clear()
    second = one_pass(config, CertbotLineages(config))  # a restart: a new process
    assert validations == []
    assert {n: offer(o).info for n, o in second.items()} == {
        n: offer(o).info for n, o in first.items()
    }
    # The deploy bytes are read (and validated) only when a deploy asks for them.
    name = NAMES[1]
    assert offer(second[name]).pem == offer(first[name]).pem
    assert validations == [name]


def test_renewed_while_down_is_validated_again(
    config: Config, leaves: dict[str, list[Leaf]], validations: list[str]
) -> None:
    one_pass(config, CertbotLineages(config))
    validations.clear()
    name = NAMES[2]
    renew(config.certbot.config_dir, name, leaves[name][1])  # new archive files, same links
    second = one_pass(config, CertbotLineages(config))
    assert validations == [name]
    assert offer(second[name]).info.version == 2
    assert (
        offer(second[name]).info.fingerprint
        == hashlib.sha256(leaves[name][1].cert.public_bytes(x509_der())).hexdigest()
    )


def x509_der() -> object:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def test_file_rewritten_in_place_with_the_same_size_is_validated_again(
    config: Config, leaves: dict[str, list[Leaf]], validations: list[str]
) -> None:
    one_pass(config, CertbotLineages(config))
    validations.clear()
    name = NAMES[3]
    key_file = config.certbot.config_dir / "archive" / name / "privkey1.pem"
    other_key = leaves[NAMES[4]][0].key_pem  # a key that does not match the leaf
    assert len(other_key) == key_file.stat().st_size  # same size: only the times say it
    stat_before = key_file.stat()
    with key_file.open("r+b") as file:  # same inode, same name, same size
        file.write(other_key)
    os.utime(key_file, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))  # mtime put back
    second = one_pass(config, CertbotLineages(config))
    assert validations == [name]  # the ctime changed
    assert isinstance(second[name], Problem)
    assert "key" in second[name].reason


def test_bad_new_chain_after_restart_is_refused(
    config: Config, ca: Hierarchy, validations: list[str]
) -> None:
    one_pass(config, CertbotLineages(config))
    validations.clear()
    name = NAMES[0]
    wrong = ca.issue(["somewhere-else.example.test"])
    renew(config.certbot.config_dir, name, wrong)
    second = one_pass(config, CertbotLineages(config))
    assert validations == [name]
    assert isinstance(second[name], Problem)


def test_deploy_bytes_changed_after_the_read_are_not_deployed(
    config: Config, leaves: dict[str, list[Leaf]]
) -> None:
    one_pass(config, CertbotLineages(config))
    offers = one_pass(config, CertbotLineages(config))  # every offer from the cache
    name = NAMES[5]
    # Rewritten between the read and the deploy, stats and all.
    write_version(config.certbot.config_dir, name, leaves[name][1], 1)
    with pytest.raises(ValueError, match="changed since it was validated"):
        assert offer(offers[name]).pem is None


def test_deploy_bytes_that_differ_drop_the_entry(
    config: Config, leaves: dict[str, list[Leaf]], validations: list[str]
) -> None:
    """Changed with the very same stats (a rewrite within the time granularity):
    the deploy refuses, and the next pass validates again instead of trusting."""
    lineages = CertbotLineages(config)
    one_pass(config, lineages)
    name = NAMES[5]
    key_file = config.certbot.config_dir / "archive" / name / "privkey1.pem"
    cert_file = config.certbot.config_dir / "archive" / name / "cert1.pem"

    def stats() -> list[tuple[int, ...]]:
        return [
            (s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
            for s in (key_file.stat(), cert_file.stat())
        ]

    saved = stats()
    entry = lineages.cache.get(name)
    assert entry is not None
    # Stand-in for an unseen change: the entry claims other deploy bytes.
    lineages.cache.put(name, replace(entry, pem_sha256=b"\0" * 32))
    offers = one_pass(config, lineages)
    validations.clear()
    with pytest.raises(ValueError, match="changed since it was validated"):
        assert offer(offers[name]).pem is None
    assert lineages.cache.get(name) is None
    one_pass(config, lineages)
    assert validations == [name, name]  # the deploy's check, then the next pass
    assert stats() == saved  # nothing on disk changed: only the entry was doubted


def older_schema(data: bytes) -> bytes:
    """The shard as the previous schema wrote it: whole, its checksum right."""
    body = json.loads(data.partition(b"\n")[2])
    body["schema"] = readcache.SCHEMA - 1
    text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(text).hexdigest().encode() + b"\n" + text + b"\n"


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(path.read_bytes()[:-40]),  # torn
        lambda path: path.write_bytes(b"\x00" * 100),
        lambda path: path.write_bytes(older_schema(path.read_bytes())),
        lambda path: path.unlink(),
    ],
    ids=["torn", "zeros", "old-schema", "missing"],
)
def test_damaged_cache_means_validate_again(
    config: Config, validations: list[str], damage: object
) -> None:
    one_pass(config, CertbotLineages(config))
    validations.clear()
    files = sorted((config.state.dir / DIRECTORY).glob("*.json"))
    assert files
    for path in files:
        damage(path)  # type: ignore[operator]
    second = one_pass(config, CertbotLineages(config))
    assert sorted(validations) == sorted(NAMES)
    assert all(isinstance(o, Offer) for o in second.values())


def test_edited_entry_is_not_trusted(config: Config, validations: list[str]) -> None:
    """An entry whose text was changed (checksum no longer matches) is dropped."""
    one_pass(config, CertbotLineages(config))
    validations.clear()
    for path in (config.state.dir / DIRECTORY).glob("*.json"):
        path.write_text(path.read_text().replace('"version":1', '"version":7'))
    one_pass(config, CertbotLineages(config))
    assert sorted(validations) == sorted(NAMES)


def test_no_certificate_or_key_kept_between_passes(config: Config) -> None:
    def certificates() -> set[int]:
        gc.collect()
        return {
            id(r)
            for o in gc.get_objects()
            for r in gc.get_referents(o)
            if isinstance(r, x509.Certificate)
        }

    lineages = CertbotLineages(config)
    before = certificates()
    offers = one_pass(config, lineages)
    assert len(certificates() - before) == 0  # offers hold facts, not parsed certificates
    del offers
    one_pass(config, lineages)  # from the cache
    assert len(certificates() - before) == 0
    text = repr(vars(lineages))
    for path in (config.state.dir / DIRECTORY).glob("*.json"):
        text += path.read_text()
    assert "PRIVATE KEY" not in text
    assert "BEGIN CERTIFICATE" not in text


def test_ari_keeps_the_identifier_not_the_certificates(config: Config, ca: Hierarchy) -> None:
    """Monitoring after a restart asks ARI about the same leaf, from the cache."""
    name = NAMES[1]
    leaf = ca.issue([name], authority_key_id=True)
    renew(config.certbot.config_dir, name, leaf)
    first = offer(one_pass(config, CertbotLineages(config))[name])
    second = offer(one_pass(config, CertbotLineages(config))[name])
    expected = ari.build_renewal_identifier(leaf.cert)
    assert first.ari is not None and second.ari is not None
    assert (first.ari.identifier, second.ari.identifier) == (expected, expected)
    assert second.ari.not_after == second.info.not_after
    without = offer(one_pass(config, CertbotLineages(config))[NAMES[2]])  # leaf without an AKI
    assert without.ari is not None and without.ari.identifier is None
    assert "Authority Key Identifier" in str(without.ari.problem)
    with capture_logs() as logs:
        RenewalNotices(config).check_renewal_info(
            deployed_state(first, without, name, NAMES[2]),
            {name: first.ari, NAMES[2]: without.ari},
            NOW,
        )
    reasons = {e["lineage"]: str(e["reason"]) for e in logs if e["event"] == "renewal.unknown"}
    assert "request failed" in reasons[name]  # asked (the harness's CA refuses at once)
    assert "Authority Key Identifier" in reasons[NAMES[2]]


def deployed_state(a: Offer, b: Offer, name_a: str, name_b: str) -> State:
    state = State()
    state.lineage(name_a).deployed = a.info
    state.lineage(name_b).deployed = b.info
    return state
