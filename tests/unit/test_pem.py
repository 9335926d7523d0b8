"""PEM bundles (danesync.pem): round trips, and reasons for everything else."""

from __future__ import annotations

import base64
import contextlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from danesync.pem import (
    _P256_ORDER,
    PemBlock,
    PemError,
    load_p256_by_scalar,
    parse_certificates,
    parse_private_key,
    split_pem,
)
from tests.harness.certs import Hierarchy, cert_pem, key_pem, make_key

HIERARCHY = Hierarchy("Pem")
CERTIFICATES: list[x509.Certificate] = [
    HIERARCHY.root,
    HIERARCHY.intermediate,
    *(HIERARCHY.issue(hostnames=[f"h{n}.example.test"]).cert for n in range(6)),
]
KEYS = [make_key("ec256"), make_key("rsa", slot=1), make_key("ed25519"), make_key("ec384")]

# What may come between blocks: certbot writes nothing, other tools write text.
separators = st.sampled_from(
    [b"", b"\n", b"\r\n", b"\n\n", b"Bag Attributes\n", b"subject=CN = x\nissuer=CN = y\n"]
)
labels = st.from_regex(r"[A-Z0-9]([A-Z0-9 ]{0,20}[A-Z0-9])?", fullmatch=True)


def pem(label: str, der: bytes, width: int = 64, newline: bytes = b"\n") -> bytes:
    body = base64.b64encode(der)
    lines = [body[i : i + width] for i in range(0, len(body), width)]
    head, tail = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    return newline.join([head, *lines, tail]) + newline


class TestRoundTrip:
    """What is written as PEM reads back the same, in the same order."""

    @given(
        chosen=st.lists(st.sampled_from(CERTIFICATES), min_size=1, max_size=6),
        gaps=st.lists(separators, min_size=7, max_size=7),
    )
    def test_certificate_bundles(self, chosen: list[x509.Certificate], gaps: list[bytes]) -> None:
        data = gaps[0] + b"".join(
            cert_pem(c) + gap for c, gap in zip(chosen, gaps[1:], strict=False)
        )
        assert parse_certificates(data, "bundle.pem") == chosen

    @given(
        blocks=st.lists(
            st.tuples(labels, st.binary(min_size=1, max_size=300)), min_size=1, max_size=5
        ),
        width=st.integers(1, 120),
        newline=st.sampled_from([b"\n", b"\r\n"]),
        gap=separators,
    )
    def test_any_blocks(
        self, blocks: list[tuple[str, bytes]], width: int, newline: bytes, gap: bytes
    ) -> None:
        data = gap.join(pem(label, der, width, newline) for label, der in blocks)
        parsed = split_pem(data, "x.pem")
        assert [(b.label, b.der) for b in parsed] == blocks
        assert all(b.headers == () for b in parsed)
        # The text of each block reads back alone as the same block.
        for block in parsed:
            assert split_pem(block.text, "x.pem") == [block]

    # No deadline: loading the RSA key runs RSA_check_key (50 to 150 ms on OpenSSL 3.0
    # on a loaded machine), and durations belong to bench/, not to tests.
    @settings(deadline=None)
    @given(key=st.sampled_from(KEYS), traditional=st.booleans())
    def test_private_keys(self, key: object, traditional: bool) -> None:
        if traditional and key is KEYS[2]:
            traditional = False  # Ed25519 has no traditional format
        data = key_pem(key, traditional=traditional)  # type: ignore[arg-type]
        parsed = parse_private_key(data, "privkey.pem")
        assert parsed.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == key.public_key().public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class TestOnlyPemError:
    """No input makes the parsers raise anything but PemError."""

    @settings(max_examples=300)
    @given(data=st.binary(max_size=2000))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        for parse in (split_pem, parse_certificates, parse_private_key):
            try:
                parse(data, "f.pem")
            except PemError as error:
                assert str(error).startswith("f.pem")

    @settings(max_examples=300, deadline=None)  # RSA_check_key: see above
    @given(
        base=st.sampled_from(
            [
                cert_pem(CERTIFICATES[2]) + cert_pem(CERTIFICATES[1]),
                key_pem(KEYS[0]),
                key_pem(KEYS[1], traditional=True),
            ]
        ),
        edits=st.lists(
            st.tuples(st.integers(0, 3000), st.integers(0, 8), st.binary(max_size=8)), max_size=4
        ),
    )
    def test_mangled_pem(self, base: bytes, edits: list[tuple[int, int, bytes]]) -> None:
        data = base
        for position, length, insert in edits:
            position %= len(data) + 1
            data = data[:position] + insert + data[position + length :]
        for parse in (parse_certificates, parse_private_key):
            with contextlib.suppress(PemError):
                parse(data, "f.pem")

    @given(text=st.text(max_size=300))
    def test_text_around_markers(self, text: str) -> None:
        data = f"-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----\n".encode()
        with contextlib.suppress(PemError):
            parse_certificates(data, "f.pem")


class TestReasons:
    """Each way a file goes wrong has its own reason."""

    LEAF = cert_pem(CERTIFICATES[2])

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"", "f.pem is empty"),
            (b" \n\t\r\n", "f.pem is empty"),
            (
                CERTIFICATES[2].public_bytes(serialization.Encoding.DER),
                "f.pem is DER (binary), not PEM",
            ),
            (b"hello\n", "f.pem contains no PEM block"),
            (b"\x00\x01\x02", "f.pem contains no PEM block"),
            (b"-----END CERTIFICATE-----\n", "f.pem contains no PEM block"),
            (
                b"-----BEGIN CERTIFICATE-----\nMII\n",
                "f.pem is truncated: '-----BEGIN CERTIFICATE-----' has no END line",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nMIIB\n" + LEAF,
                "f.pem is truncated: '-----BEGIN CERTIFICATE-----' has no END line",
            ),
            (
                LEAF + b"-----BEGIN CERTIFICATE-----\nMIIB\n",
                "f.pem is truncated: '-----BEGIN CERTIFICATE-----' has no END line",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END X509 CRL-----\n",
                "f.pem is malformed: '-----BEGIN CERTIFICATE-----' is closed by "
                "'-----END X509 CRL-----'",
            ),
            (
                LEAF + b"-----BEGIN CERTIFICATE-----\nAA=A\n-----END CERTIFICATE-----\n",
                "f.pem: PEM block 2 (CERTIFICATE) is not valid base64",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\n\xc3\xa9AAA\n-----END CERTIFICATE-----\n",
                "f.pem: PEM block 1 (CERTIFICATE) is not valid base64",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\n\n-----END CERTIFICATE-----\n",
                "f.pem: PEM block 1 (CERTIFICATE) is empty",
            ),
        ],
        # Named by the reason: the generated certificates differ between
        # processes, and pytest-xdist's workers must collect the same ids.
        ids=lambda value: value if isinstance(value, str) else "data",
    )
    def test_split(self, data: bytes, reason: str) -> None:
        with pytest.raises(PemError) as caught:
            split_pem(data, "f.pem")
        assert str(caught.value) == reason

    def test_headers(self) -> None:
        data = key_pem(KEYS[0], password=b"pw", traditional=True)
        (block,) = split_pem(data, "k.pem")
        assert block.label == "EC PRIVATE KEY"
        assert block.headers[0] == ("Proc-Type", "4,ENCRYPTED")
        assert block.headers[1][0] == "DEK-Info"

    def test_certificates_only(self) -> None:
        data = self.LEAF + key_pem(KEYS[0])
        with pytest.raises(PemError) as caught:
            parse_certificates(data, "fullchain.pem")
        assert str(caught.value) == (
            "fullchain.pem: block 2 is a PRIVATE KEY, where only certificates belong"
        )

    def test_bad_certificate_der(self) -> None:
        with pytest.raises(PemError) as caught:
            parse_certificates(self.LEAF + pem("CERTIFICATE", b"\x30\x00"), "c.pem")
        assert str(caught.value) == "c.pem: certificate 2 is not a valid X.509 certificate"
        assert caught.value.__cause__ is not None  # the library's detail is kept for debugging

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (LEAF, "k.pem holds no private key (found CERTIFICATE)"),
            (key_pem(KEYS[0]) * 3, "k.pem holds 3 private keys; expected one"),
            (key_pem(KEYS[0]) + LEAF, "k.pem holds a CERTIFICATE beside the private key"),
            (
                key_pem(KEYS[0], password=b"pw"),
                "k.pem is an encrypted PKCS#8 key; Postfix needs the key unencrypted",
            ),
            (
                key_pem(KEYS[1], password=b"pw", traditional=True),
                "k.pem is an encrypted key (Proc-Type: 4,ENCRYPTED); "
                "Postfix needs the key unencrypted",
            ),
            (
                pem("PRIVATE KEY", b"\x30\x03\x02\x01\x00"),
                "k.pem: the private key cannot be parsed",
            ),
            (pem("DSA PRIVATE KEY", b"\x30\x00"), "k.pem: DSA PRIVATE KEY keys are not supported"),
        ],
        ids=lambda value: value if isinstance(value, str) else "data",  # as test_split's
    )
    def test_private_key(self, data: bytes, reason: str) -> None:
        with pytest.raises(PemError) as caught:
            parse_private_key(data, "k.pem")
        assert str(caught.value) == reason

    def test_block_keeps_its_text(self) -> None:
        (block,) = split_pem(b"junk\n" + self.LEAF + b"more junk", "c.pem")
        assert block == PemBlock(
            "CERTIFICATE", (), CERTIFICATES[2].public_bytes(serialization.Encoding.DER), self.LEAF
        )


KEY_FORMATS = {
    "sec1": serialization.PrivateFormat.TraditionalOpenSSL,  # other tools'
    "pkcs8": serialization.PrivateFormat.PKCS8,  # certbot's
}


def key_der(key: object, layout: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, layout, serialization.NoEncryption()
    )


class TestP256ByScalar:
    """A P-256 key is built from its scalar (Debian 12's OpenSSL 3.0 decoders
    took 1.7 ms a key), and only when it encodes back to exactly the file's bytes."""

    @pytest.mark.parametrize("layout", ["sec1", "pkcs8"])
    def test_the_same_key_and_deploy_bytes_without_the_decoder(
        self, layout: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        key = make_key("ec256")
        data = key_pem(key, traditional=layout == "sec1")
        decoded = parse_private_key(data, "k.pem")  # either way: what the decoder gives
        with monkeypatch.context() as patched:

            def refuse(*args: object, **kwargs: object) -> None:
                raise AssertionError("decoded, not built from the scalar")

            patched.setattr(serialization, "load_der_private_key", refuse)
            built = parse_private_key(data, "k.pem")
        expected = serialization.load_der_private_key(
            key_der(key, KEY_FORMATS[layout]), password=None
        )
        assert isinstance(built, ec.EllipticCurvePrivateKey)
        assert built.private_numbers() == expected.private_numbers() == decoded.private_numbers()
        for fmt in KEY_FORMATS.values():  # what a chain file is written from: byte for byte
            for encoding in (serialization.Encoding.DER, serialization.Encoding.PEM):
                args = (encoding, fmt, serialization.NoEncryption())
                assert built.private_bytes(*args) == expected.private_bytes(*args)

    @pytest.mark.parametrize("layout", ["sec1", "pkcs8"])
    @pytest.mark.parametrize(
        "edit",
        [
            "public key",  # another point than the scalar's
            "scalar = 0",
            "scalar = the order",
            "trailing byte",
            "truncated",
        ],
    )
    def test_anything_else_is_left_to_the_decoder(self, layout: str, edit: str) -> None:
        der = key_der(make_key("ec256"), KEY_FORMATS[layout])
        start = 7 if layout == "sec1" else 36
        if edit == "public key":
            der = der[:-1] + bytes([der[-1] ^ 1])
        elif edit == "scalar = 0":
            der = der[:start] + bytes(32) + der[start + 32 :]
        elif edit == "scalar = the order":
            der = der[:start] + _P256_ORDER.to_bytes(32, "big") + der[start + 32 :]
        elif edit == "trailing byte":
            der += b"\x00"
        else:
            der = der[: start + 20]
        assert load_p256_by_scalar(der) is None

    def test_other_curves_are_decoded(self) -> None:
        for kind in ("ec384", "rsa", "ed25519"):
            key = make_key(kind)  # type: ignore[arg-type]
            assert load_p256_by_scalar(key_der(key, serialization.PrivateFormat.PKCS8)) is None
