"""PEM parsing with reasons a person can act on. Pure.

`parse_certificates` and `parse_private_key` take the bytes of one file and
its name (for messages) and raise `PemError` saying what is wrong: DER where
PEM was expected, garbage, a truncated block, an encrypted key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

import cryptography
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

from danesync.keycache import BoundedLru

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
# How many RSA private keys (by SHA-256 of their DER) are remembered as checked.
CHECKED_RSA_KEYS = 16384
# cryptography >= 39 can load an RSA key without RSA_check_key (60 ms a
# 2048-bit key on OpenSSL 3); older ones always check.
_CAN_SKIP_RSA_CHECK = int(cryptography.__version__.split(".")[0]) >= 39

# P-256 keys as OpenSSL writes them (SEC1 "EC PRIVATE KEY"; PKCS#8, as certbot does):
# the bytes before the 32-byte private scalar, and the format to re-encode in.
_P256_LAYOUTS = (
    (bytes.fromhex("30770201010420"), serialization.PrivateFormat.TraditionalOpenSSL),
    (
        bytes.fromhex("308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420"),
        serialization.PrivateFormat.PKCS8,
    ),
)
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_END = re.compile(rb"-----END ([A-Z0-9 ]+)-----")


class PemError(ValueError):
    """The file's content is not what it must be; the message says why."""


@dataclass(frozen=True)
class PemBlock:
    label: str  # "CERTIFICATE", "PRIVATE KEY", ...
    headers: tuple[tuple[str, str], ...]
    der: bytes
    text: bytes  # the block as it appeared, BEGIN to END line


def split_pem(data: bytes, filename: str) -> list[PemBlock]:
    """Every PEM block in `data`, in order."""
    if not data.strip():
        raise PemError(f"{filename} is empty")
    if data[:1] == b"\x30" and b"-----BEGIN" not in data:
        raise PemError(f"{filename} is DER (binary), not PEM")
    blocks: list[PemBlock] = []
    position = 0
    while True:
        begin = _BEGIN.search(data, position)
        if begin is None:
            break
        label = begin.group(1).decode("ascii")
        end = _END.search(data, begin.end())
        following = _BEGIN.search(data, begin.end())
        if end is None or (following is not None and following.start() < end.start()):
            # A cut-off block followed by a complete one is truncation, not bad base64.
            raise PemError(f"{filename} is truncated: '-----BEGIN {label}-----' has no END line")
        if end.group(1).decode("ascii") != label:
            raise PemError(
                f"{filename} is malformed: '-----BEGIN {label}-----' is closed by "
                f"'-----END {end.group(1).decode('ascii')}-----'"
            )
        body = data[begin.end() : end.start()]
        headers, payload = _split_headers(body)
        try:
            der = base64.b64decode(b"".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            raise PemError(
                f"{filename}: PEM block {len(blocks) + 1} ({label}) is not valid base64"
            ) from None
        if not der:
            raise PemError(f"{filename}: PEM block {len(blocks) + 1} ({label}) is empty")
        blocks.append(PemBlock(label, headers, der, data[begin.start() : end.end()] + b"\n"))
        position = end.end()
    if not blocks:
        raise PemError(f"{filename} contains no PEM block")
    return blocks


def _split_headers(body: bytes) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`) precede a blank line."""
    lines = body.strip().splitlines()
    headers: list[tuple[str, str]] = []
    index = 0
    while index < len(lines) and b":" in lines[index]:
        name, _, value = lines[index].decode("ascii", "replace").partition(":")
        headers.append((name.strip(), value.strip()))
        index += 1
    return tuple(headers), b"\n".join(lines[index:])


def parse_certificates(data: bytes, filename: str) -> list[x509.Certificate]:
    """The certificates of a PEM bundle, in file order; nothing else allowed."""
    return [certificate for certificate, _ in parse_certificate_blocks(data, filename)]


def parse_certificate_blocks(data: bytes, filename: str) -> list[tuple[x509.Certificate, bytes]]:
    """`parse_certificates`, each certificate with the DER it was parsed from."""
    certificates = []
    for number, block in enumerate(split_pem(data, filename), start=1):
        if block.label != "CERTIFICATE":
            raise PemError(
                f"{filename}: block {number} is a {block.label}, where only certificates belong"
            )
        try:
            certificates.append((x509.load_der_x509_certificate(block.der), block.der))
        except (ValueError, x509.InvalidVersion) as error:
            # The library's wording changes between versions; the cause keeps it.
            raise PemError(
                f"{filename}: certificate {number} is not a valid X.509 certificate"
            ) from error
    return certificates


def certificate_ders(data: bytes, filename: str) -> list[bytes] | None:
    """The DER of every block of a PEM bundle without parsing any certificate, or
    None when a block is not a certificate (`parse_certificates` then says why)."""
    blocks = split_pem(data, filename)
    if any(block.label != "CERTIFICATE" for block in blocks):
        return None
    return [block.der for block in blocks]


def parse_private_key(data: bytes, filename: str) -> PrivateKey:
    """The one unencrypted private key in `data`."""
    blocks = split_pem(data, filename)
    keys = [b for b in blocks if b.label.endswith("PRIVATE KEY")]
    others = [b.label for b in blocks if not b.label.endswith("PRIVATE KEY")]
    if not keys:
        raise PemError(f"{filename} holds no private key (found {', '.join(others)})")
    if len(keys) > 1:
        raise PemError(f"{filename} holds {len(keys)} private keys; expected one")
    if others:
        raise PemError(f"{filename} holds a {others[0]} beside the private key")
    block = keys[0]
    if block.label == "ENCRYPTED PRIVATE KEY":
        raise PemError(f"{filename} is an encrypted PKCS#8 key; Postfix needs the key unencrypted")
    if ("Proc-Type", "4,ENCRYPTED") in block.headers:
        raise PemError(
            f"{filename} is an encrypted key (Proc-Type: 4,ENCRYPTED); "
            "Postfix needs the key unencrypted"
        )
    if block.label not in ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"):
        raise PemError(f"{filename}: {block.label} keys are not supported")
    digest = hashlib.sha256(block.der).digest()
    try:
        if _CAN_SKIP_RSA_CHECK and _CHECKED_RSA.get(digest):
            # These exact bytes passed the full check (RSA_check_key: p and q
            # prime, n = pq, d inverts e) earlier in this process.
            key = serialization.load_der_private_key(
                block.der, password=None, unsafe_skip_rsa_key_validation=True
            )
        else:
            key = load_p256_by_scalar(block.der) or serialization.load_der_private_key(
                block.der, password=None
            )
            if isinstance(key, rsa.RSAPrivateKey):
                _CHECKED_RSA.put(digest, True)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise PemError(f"{filename}: the private key cannot be parsed") from error
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise PemError(
            f"{filename}: {key_type_name(key)} keys are not supported; use RSA, ECDSA or Ed25519"
        )
    return key


def load_p256_by_scalar(der: bytes) -> ec.EllipticCurvePrivateKey | None:
    """A P-256 key in one of OpenSSL's two layouts, built from its private scalar;
    None for anything else, which `load_der_private_key` then decodes.

    Debian 12's cryptography 38 decodes a key through OpenSSL 3.0's decoders:
    1.7 ms, 17 s of a cold start at 10,000 lineages; this takes 0.18 ms (PyPI's
    cryptography: 0.04 against 0.03 ms). The key is taken only when it encodes
    back to exactly `der`: the file holds this scalar, on this curve, with the
    public key it implies, and nothing else.
    """
    for prefix, layout in _P256_LAYOUTS:
        if not der.startswith(prefix):
            continue
        scalar = int.from_bytes(der[len(prefix) : len(prefix) + 32], "big")
        if len(der) < len(prefix) + 32 or not 0 < scalar < _P256_ORDER:
            return None
        key = ec.derive_private_key(scalar, ec.SECP256R1())
        encoded = key.private_bytes(
            serialization.Encoding.DER, layout, serialization.NoEncryption()
        )
        return key if encoded == der else None
    return None


# SHA-256 of the DER of RSA keys that passed the full check in this process.
_CHECKED_RSA: BoundedLru[bytes, bool] = BoundedLru(CHECKED_RSA_KEYS)


_KEY_TYPES: tuple[tuple[type, str], ...] = (
    (rsa.RSAPrivateKey, "RSA"),
    (rsa.RSAPublicKey, "RSA"),
    (ec.EllipticCurvePrivateKey, "EC"),
    (ec.EllipticCurvePublicKey, "EC"),
    (ed25519.Ed25519PrivateKey, "Ed25519"),
    (ed25519.Ed25519PublicKey, "Ed25519"),
    (dsa.DSAPrivateKey, "DSA"),
    (dsa.DSAPublicKey, "DSA"),
    (ed448.Ed448PrivateKey, "Ed448"),
    (ed448.Ed448PublicKey, "Ed448"),
    (x25519.X25519PrivateKey, "X25519"),
    (x25519.X25519PublicKey, "X25519"),
    (x448.X448PrivateKey, "X448"),
    (x448.X448PublicKey, "X448"),
)


def key_type_name(key: object) -> str:
    """ "DSA", "Ed448", ...: stable across cryptography versions (class names are not)."""
    for kind, name in _KEY_TYPES:
        if isinstance(key, kind):
            return name
    return type(key).__name__.lstrip("_")
