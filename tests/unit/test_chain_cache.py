"""The per-process cache of parsed public keys (danesync.pem.certificate_key)
never lets a bad chain pass: whatever was validated before in the same process,
a certificate is checked with its own key."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from danesync import keycache, pem
from danesync.chain import LineageFiles, validate_chain, verify_signature
from danesync.errors import ChainError
from danesync.keycache import KEY_CACHE_SIZE, certificate_key
from danesync.tlsa import Usage, spki_sha256
from tests.harness.certs import NOW, Hierarchy, Leaf, cert_pem, key_pem, make_key
from tests.harness.corpus import HOST, files_of

TLSA_NAME = "_25._tcp.mx.example.test."


def validate(files: dict[str, bytes], now: dt.datetime = NOW) -> object:
    lineage = LineageFiles("mx.example.test", 1, **files)
    return validate_chain(lineage, (HOST,), (TLSA_NAME,), (Usage.DANE_TA, Usage.DANE_EE), now)


def bad_signature(files: dict[str, bytes]) -> str:
    with pytest.raises(ChainError) as caught:
        validate(files)
    return caught.value.reason


SIGNATURE_REFUSED = (
    f"the signature on certificate 1 (CN={HOST}) does not verify with the key of "
    "certificate 2 of fullchain.pem (CN=Cache Intermediate)"
)


@pytest.fixture
def genuine() -> tuple[Hierarchy, Leaf]:
    """A hierarchy whose intermediate has just been validated (so it is in the cache)."""
    ca = Hierarchy("Cache")
    leaf = ca.issue()
    validate(files_of(leaf))
    return ca, leaf


def test_impostor_intermediate_after_the_genuine_one(genuine: tuple[Hierarchy, Leaf]) -> None:
    """Same subject, same issuer, another key: the leaf's signature does not verify with it."""
    ca, leaf = genuine
    impostor = ca.make_ca("Cache Intermediate", make_key("ec256"))
    assert impostor.subject == ca.intermediate.subject
    files = files_of(leaf)
    files["chain"] = cert_pem(impostor)
    files["fullchain"] = leaf.cert_pem + cert_pem(impostor)
    assert bad_signature(files) == SIGNATURE_REFUSED


def test_leaf_signed_by_another_key_under_the_cached_intermediate(
    genuine: tuple[Hierarchy, Leaf],
) -> None:
    """The genuine intermediate, cached, and a leaf naming it that another key signed."""
    ca, _ = genuine
    forged = ca.issue(signer=make_key("ec256"))
    assert bad_signature(files_of(forged)) == SIGNATURE_REFUSED


def test_impostor_first_then_genuine_then_impostor_again() -> None:
    """Both keys under one subject in the cache at once: each chain gets its own."""
    ca = Hierarchy("Cache")
    impostor_key = make_key("ec256")
    impostor = ca.make_ca("Cache Intermediate", impostor_key)
    by_impostor = ca.issue(signer=impostor_key)  # names the genuine subject, signed by impostor
    genuine = ca.issue()
    as_presented = files_of(by_impostor)
    as_presented["chain"] = cert_pem(impostor)
    as_presented["fullchain"] = by_impostor.cert_pem + cert_pem(impostor)
    validate(as_presented)  # a consistent chain under the impostor intermediate: valid
    validate(files_of(genuine))
    assert bad_signature(files_of(by_impostor)) == SIGNATURE_REFUSED  # genuine intermediate
    mixed = files_of(genuine)
    mixed["chain"] = cert_pem(impostor)
    mixed["fullchain"] = genuine.cert_pem + cert_pem(impostor)
    assert bad_signature(mixed) == SIGNATURE_REFUSED
    assert not verify_signature(genuine.cert, impostor)
    assert verify_signature(genuine.cert, ca.intermediate)
    assert spki_sha256(impostor) != spki_sha256(ca.intermediate)


def test_a_leaf_seen_before_does_not_vouch_for_another_key(genuine: tuple[Hierarchy, Leaf]) -> None:
    """A renewal with the same subject and names but a new key: privkey must match the new one."""
    ca, old = genuine
    new = ca.issue()
    assert new.cert.subject == old.cert.subject
    files = files_of(new)
    files["privkey"] = key_pem(old.key)
    with pytest.raises(ChainError) as caught:
        validate(files)
    assert caught.value.reason == "privkey.pem does not match the leaf certificate's public key"
    assert certificate_key(new.cert).spki_der == new.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_the_cache_is_bounded() -> None:
    ca = Hierarchy("Bounded")
    for _ in range(KEY_CACHE_SIZE + 5):
        validate(files_of(ca.issue()))
    assert keycache._KEYS.size == KEY_CACHE_SIZE
    assert len(keycache._KEYS) == KEY_CACHE_SIZE


def test_the_shared_intermediate_is_parsed_once() -> None:
    """What the cache is for: N leaves under one intermediate parse its key once."""
    ca = Hierarchy("Shared")
    leaves = [ca.issue(key_kind=kind) for kind in ("ec256", "ec384", "ed25519", "ec256")]
    keycache._KEYS.clear()
    intermediate_der = ca.intermediate.public_bytes(serialization.Encoding.DER)
    validate(files_of(leaves[0]))
    entry = keycache._KEYS.get(intermediate_der)
    assert entry is not None
    for leaf in leaves[1:]:
        validate(files_of(leaf))
        assert keycache._KEYS.get(intermediate_der) is entry


@pytest.mark.parametrize("kind", ["ec256", "ec384", "ed25519", "rsa"])
def test_a_leaf_key_taken_from_the_private_key_is_what_parsing_gives(kind: str) -> None:
    """The leaf's entry, made without parsing when its SPKI field is the private key's
    public half byte for byte, equals the one parsing the certificate makes."""
    leaf = Hierarchy("Leaf").issue(key=make_key(kind, slot=1))  # type: ignore[arg-type]
    keycache._KEYS.clear()
    validate(files_of(leaf))
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    entry = keycache._KEYS.get(der)
    assert entry is not None
    assert entry.public_key is not None
    parsed = leaf.cert.public_key()
    spki = parsed.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert entry.spki_der == spki == keycache.spki_field(der)
    assert type(entry.public_key) is type(parsed)


def test_spki_field_refuses_what_is_not_a_certificate() -> None:
    der = Hierarchy("Field").issue().cert.public_bytes(serialization.Encoding.DER)
    assert keycache.spki_field(der) is not None
    for broken in (b"", b"\x30", der[:40], der[:-1], b"\x31" + der[1:], b"\x30\x80" + der[2:]):
        assert keycache.spki_field(broken) is None


def _rsa_der(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN PRIVATE KEY-----\n" + body + b"-----END PRIVATE KEY-----\n"


def test_a_checked_rsa_key_is_remembered_by_its_bytes_only() -> None:
    """An RSA key that passed the full check is not checked again; a changed one is."""
    ca = Hierarchy("RSA")
    key = make_key("rsa", slot=1)
    leaf = ca.issue(key=key)
    validate(files_of(leaf))
    validate(files_of(leaf))  # the second load may skip RSA_check_key: same verdict
    der = _rsa_der(key)
    assert pem._CHECKED_RSA.get(hashlib.sha256(der).digest())
    # One byte changed in the middle (inside n, d, p or q): still valid ASN.1, not a key.
    broken = bytearray(der)
    broken[len(broken) // 2] ^= 0x01
    files = files_of(leaf)
    files["privkey"] = _pem(bytes(broken))
    with pytest.raises(ChainError) as caught:
        validate(files)
    assert caught.value.reason == "privkey.pem: the private key cannot be parsed"
    assert not pem._CHECKED_RSA.get(hashlib.sha256(bytes(broken)).digest())


def test_the_lru_is_bounded_and_keeps_what_is_used() -> None:
    lru: keycache.BoundedLru[bytes, bool] = keycache.BoundedLru(2)
    lru.put(b"a", True)
    lru.put(b"b", True)
    assert lru.get(b"a")  # now the most recently used
    lru.put(b"c", True)
    assert lru.get(b"b") is None
    assert lru.get(b"a")
    assert lru.get(b"c")
    assert len(lru) == 2


def test_a_cached_leaf_with_another_private_key_is_refused(genuine: tuple[Hierarchy, Leaf]) -> None:
    """The leaf's key is in the cache; privkey.pem now holds another key."""
    _, leaf = genuine
    files = files_of(leaf)
    files["privkey"] = key_pem(make_key("ec256"))
    with pytest.raises(ChainError) as caught:
        validate(files)
    assert caught.value.reason == "privkey.pem does not match the leaf certificate's public key"
