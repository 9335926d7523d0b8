"""Bad certbot lineages, each with the exact reason danesync must report.

`build_corpus(now)` makes every case from real certificates (tests.harness.certs),
dated relative to `now` so the same corpus serves the pure tests (the harness's
fixed NOW) and the command line (the real clock). `write_lineage_files`
writes a case as a certbot lineage, links and all.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness.certs import Hierarchy, Leaf, PrivateKey, cert_pem, key_pem, make_key
from tests.harness.lineage import update_links

HOST = "mx.example.test"


@dataclass(frozen=True)
class BadCase:
    """One invalid lineage: its four files and the reason `check` must print."""

    name: str  # a valid lineage name, unique in the corpus
    files: dict[str, bytes] = field(repr=False)  # cert, privkey, chain, fullchain
    reason: str
    hostnames: tuple[str, ...] = (HOST,)
    usages: tuple[str, ...] = ("2 1 1",)


def files_of(leaf: Leaf) -> dict[str, bytes]:
    """The four files certbot writes for `leaf`."""
    return {
        "cert": leaf.cert_pem,
        "privkey": leaf.key_pem,
        "chain": leaf.chain_pem,
        "fullchain": leaf.fullchain_pem,
    }


def write_lineage_files(
    config_dir: Path, name: str, files: dict[str, bytes], version: int = 1
) -> Path:
    """Write `files` as archive version `version` and point live/<name> at it."""
    archive = config_dir / "archive" / name
    archive.mkdir(parents=True, exist_ok=True)
    for kind, data in files.items():
        (archive / f"{kind}{version}.pem").write_bytes(data)
    update_links(config_dir, name, version)
    return config_dir / "live" / name


def timestamp(moment: dt.datetime) -> str:
    """How danesync writes a time in a reason."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certificate(
    subject: str,
    key: PrivateKey,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    ca: bool | None,
    san: list[str] | None = None,
) -> x509.Certificate:
    """A certificate with exactly the given properties (the harness cannot make odd ones).

    `ca=None` leaves basicConstraints out, as in old v1-style certificates.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        constraints = x509.BasicConstraints(ca=ca, path_length=0 if ca else None)
        builder = builder.add_extension(constraints, True)
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), False
        )
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


def _pem_block(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        b"\n".join([f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode()])
        + b"\n"
    )


def build_corpus(now: dt.datetime) -> list[BadCase]:
    """At least 25 invalid lineages, dated around `now`."""
    now = now.replace(microsecond=0)
    day = dt.timedelta(days=1)
    hierarchy = Hierarchy("Test")
    other = Hierarchy("Other")

    def issue(**kwargs: object) -> Leaf:
        kwargs.setdefault("not_before", now - day)
        kwargs.setdefault("not_after", now + 89 * day)
        return hierarchy.issue(**kwargs)  # type: ignore[arg-type]

    good = issue()
    base = files_of(good)
    cases: list[BadCase] = []

    def add(name: str, reason: str, hostnames: tuple[str, ...] = (HOST,), **changes: bytes) -> None:
        cases.append(BadCase(name, {**base, **changes}, reason, hostnames))

    def from_leaf(
        name: str, leaf: Leaf, reason: str, hostnames: tuple[str, ...] = (HOST,), **changes: bytes
    ) -> None:
        add(name, reason, hostnames, **{**files_of(leaf), **changes})

    leaf_der = good.cert.public_bytes(serialization.Encoding.DER)
    key_der = good.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

    # --- what is in the files is not PEM at all, or broken PEM
    add("der-fullchain", "fullchain.pem is DER (binary), not PEM", fullchain=leaf_der)
    add("der-privkey", "privkey.pem is DER (binary), not PEM", privkey=key_der)
    add(
        "garbage-fullchain",
        "fullchain.pem contains no PEM block",
        fullchain=b"<html><body>502 Bad Gateway</body></html>\n",
    )
    add(
        "truncated-fullchain",
        "fullchain.pem is truncated: '-----BEGIN CERTIFICATE-----' has no END line",
        fullchain=base["fullchain"][: len(good.cert_pem) // 2],
    )
    add(
        "truncated-leaf",
        "fullchain.pem is truncated: '-----BEGIN CERTIFICATE-----' has no END line",
        fullchain=good.cert_pem[:300] + good.chain_pem,
    )
    add("empty-privkey", "privkey.pem is empty", privkey=b"")
    add("empty-fullchain", "fullchain.pem is empty", fullchain=b"\n \n")
    lines = base["fullchain"].split(b"\n")
    lines[3] = b"*" + lines[3][1:]
    add(
        "bad-base64",
        "fullchain.pem: PEM block 1 (CERTIFICATE) is not valid base64",
        fullchain=b"\n".join(lines),
    )
    add(
        "not-a-certificate",
        "fullchain.pem: certificate 1 is not a valid X.509 certificate",
        fullchain=_pem_block("CERTIFICATE", b"\x30\x03\x02\x01\x01") + good.chain_pem,
    )
    add(
        "label-mismatch",
        "fullchain.pem is malformed: '-----BEGIN CERTIFICATE-----' is closed by "
        "'-----END PRIVATE KEY-----'",
        fullchain=good.cert_pem.replace(b"END CERTIFICATE", b"END PRIVATE KEY"),
    )
    add(
        "key-in-fullchain",
        "fullchain.pem: block 3 is a PRIVATE KEY, where only certificates belong",
        fullchain=base["fullchain"] + base["privkey"],
    )

    # --- the private key
    add(
        "encrypted-pkcs8",
        "privkey.pem is an encrypted PKCS#8 key; Postfix needs the key unencrypted",
        privkey=key_pem(good.key, password=b"correct horse"),
    )
    add(
        "encrypted-traditional",
        "privkey.pem is an encrypted key (Proc-Type: 4,ENCRYPTED); "
        "Postfix needs the key unencrypted",
        privkey=key_pem(good.key, password=b"correct horse", traditional=True),
    )
    add(
        "two-keys",
        "privkey.pem holds 2 private keys; expected one",
        privkey=base["privkey"] + key_pem(make_key("ec256")),
    )
    add(
        "key-mismatch",
        "privkey.pem does not match the leaf certificate's public key",
        privkey=key_pem(make_key("ec256")),
    )
    add(
        "key-beside-certificate",
        "privkey.pem holds a CERTIFICATE beside the private key",
        privkey=base["privkey"] + good.cert_pem,
    )
    add(
        "no-key",
        "privkey.pem holds no private key (found CERTIFICATE)",
        privkey=good.cert_pem,
    )
    add(
        "dsa-key",
        "privkey.pem: DSA keys are not supported; use RSA, ECDSA or Ed25519",
        privkey=key_pem(dsa.generate_private_key(key_size=1024)),  # type: ignore[arg-type]
    )
    add(
        "ed448-key",
        "privkey.pem: Ed448 keys are not supported; use RSA, ECDSA or Ed25519",
        privkey=key_pem(ed448.Ed448PrivateKey.generate()),  # type: ignore[arg-type]
    )
    add(
        "openssh-key",
        "privkey.pem: OPENSSH PRIVATE KEY keys are not supported",
        privkey=_pem_block("OPENSSH PRIVATE KEY", b"openssh-key-v1\x00 not really"),
    )

    # --- the chain: order, signatures, CA flags, consistency of the four files
    root_pem = cert_pem(hierarchy.root)
    add(
        "wrong-order",
        "fullchain.pem is out of order: certificate 2 of fullchain.pem (CN=Test Root) did not "
        "issue certificate 1 (CN=mx.example.test), whose issuer is CN=Test Intermediate",
        fullchain=good.cert_pem + root_pem + good.chain_pem,
        chain=root_pem + good.chain_pem,
    )
    add(
        "reversed",
        "fullchain.pem is out of order: privkey.pem matches certificate 2 (CN=mx.example.test), "
        "but the leaf must come first",
        cert=good.chain_pem,
        chain=good.cert_pem,
        fullchain=good.chain_pem + good.cert_pem,
    )
    impostor = hierarchy.make_ca("Test Intermediate", make_key("ec256"))
    add(
        "impostor-intermediate",
        "the signature on certificate 1 (CN=mx.example.test) does not verify with the key of "
        "certificate 2 of fullchain.pem (CN=Test Intermediate)",
        chain=cert_pem(impostor),
        fullchain=good.cert_pem + cert_pem(impostor),
    )
    not_ca_key = make_key("ec256")
    not_ca = hierarchy.make_ca("Test Intermediate", not_ca_key, ca=False)
    signed_by_not_ca = issue(signer=not_ca_key)
    add(
        "intermediate-not-ca",
        "certificate 2 of fullchain.pem (CN=Test Intermediate) is not a CA "
        "(basicConstraints CA:TRUE missing)",
        cert=signed_by_not_ca.cert_pem,
        privkey=signed_by_not_ca.key_pem,
        chain=cert_pem(not_ca),
        fullchain=signed_by_not_ca.cert_pem + cert_pem(not_ca),
    )
    bare_key = make_key("ec256")
    bare = make_certificate(
        "Bare Intermediate",
        bare_key,
        hierarchy.root.subject,
        hierarchy.root_key,
        now - 90 * day,
        now + 900 * day,
        ca=None,
    )
    bare_leaf_key = make_key("ec256")
    bare_leaf = make_certificate(
        HOST, bare_leaf_key, bare.subject, bare_key, now - day, now + 89 * day, ca=False, san=[HOST]
    )
    add(
        "intermediate-without-constraints",
        "certificate 2 of fullchain.pem (CN=Bare Intermediate) is not a CA "
        "(basicConstraints CA:TRUE missing)",
        cert=cert_pem(bare_leaf),
        privkey=key_pem(bare_leaf_key),
        chain=cert_pem(bare),
        fullchain=cert_pem(bare_leaf) + cert_pem(bare),
    )
    add(
        "cert-not-fullchain-leaf",
        "cert.pem is not the first certificate of fullchain.pem",
        cert=issue().cert_pem,
    )
    add(
        "chain-not-rest",
        "chain.pem is not the rest of fullchain.pem",
        chain=cert_pem(other.intermediate),
    )
    add("chain-empty", "chain.pem is not the rest of fullchain.pem", chain=b"")
    leaf_only = issue()
    from_leaf(
        "dane-ta-leaf-only",
        leaf_only,
        '"2 1 1" needs the issuing certificate, but fullchain.pem holds only the leaf',
        chain=b"",
        fullchain=leaf_only.cert_pem,
    )

    # --- validity
    expired = now - day
    from_leaf(
        "expired-leaf",
        issue(not_before=now - 90 * day, not_after=expired),
        f"the leaf expired at {timestamp(expired)}",
    )
    future = now + day
    from_leaf(
        "future-leaf",
        issue(not_before=future, not_after=now + 90 * day),
        f"the leaf is not valid before {timestamp(future)}",
    )
    old_key = make_key("ec256")
    old_end = now - 10 * day
    old = make_certificate(
        "Old Intermediate",
        old_key,
        hierarchy.root.subject,
        hierarchy.root_key,
        now - 400 * day,
        old_end,
        ca=True,
    )
    old_leaf_key = make_key("ec256")
    old_leaf = make_certificate(
        HOST,
        old_leaf_key,
        old.subject,
        old_key,
        now - 20 * day,
        now + 70 * day,
        ca=False,
        san=[HOST],
    )
    add(
        "expired-intermediate",
        f"certificate 2 of fullchain.pem (CN=Old Intermediate) expired at {timestamp(old_end)}",
        cert=cert_pem(old_leaf),
        privkey=key_pem(old_leaf_key),
        chain=cert_pem(old),
        fullchain=cert_pem(old_leaf) + cert_pem(old),
    )

    # --- what the leaf says about itself
    from_leaf(
        "hostname-not-covered",
        issue(hostnames=["other.example.test"]),
        "the leaf does not cover mx.example.test (it names other.example.test)",
    )
    wildcard = issue(hostnames=["*.example.test"])
    from_leaf(
        "wildcard-two-labels",
        wildcard,
        "the leaf does not cover a.mx.example.test (it names *.example.test)",
        hostnames=("a.mx.example.test",),
    )
    from_leaf(
        "wildcard-apex",
        wildcard,
        "the leaf does not cover example.test (it names *.example.test)",
        hostnames=("example.test",),
    )
    no_san_key = make_key("ec256")
    no_san = make_certificate(
        HOST,
        no_san_key,
        hierarchy.intermediate.subject,
        hierarchy.intermediate_key,
        now - day,
        now + 89 * day,
        ca=False,
    )
    add(
        "no-san",
        "the leaf has no subjectAltName extension",
        cert=cert_pem(no_san),
        privkey=key_pem(no_san_key),
        fullchain=cert_pem(no_san) + good.chain_pem,
    )
    from_leaf(
        "client-auth-only",
        issue(eku=[ExtendedKeyUsageOID.CLIENT_AUTH]),
        "the leaf's extendedKeyUsage does not allow serverAuth",
    )
    from_leaf(
        "rsa-1024",
        issue(key=make_key("rsa1024", slot=1)),
        "the leaf's RSA key has 1024 bits; at least 2048 are needed",
    )
    from_leaf(
        "p-521",
        issue(key_kind="ec521"),
        "the leaf's EC key is on secp521r1; only P-256 and P-384 are supported",
    )
    ca_leaf_key = make_key("ec256")
    ca_leaf = make_certificate(
        HOST,
        ca_leaf_key,
        hierarchy.intermediate.subject,
        hierarchy.intermediate_key,
        now - day,
        now + 89 * day,
        ca=True,
        san=[HOST],
    )
    add(
        "leaf-is-ca",
        "the leaf certificate is a CA certificate",
        cert=cert_pem(ca_leaf),
        privkey=key_pem(ca_leaf_key),
        fullchain=cert_pem(ca_leaf) + good.chain_pem,
    )
    return cases
