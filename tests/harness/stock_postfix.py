"""A private Postfix configured as Debian ships it: stock main.cf and master.cf.

main.cf is what the postfix package's postinst writes on a host with the
snakeoil certificate: /usr/share/postfix/main.cf.debian followed by
main.cf.tls (smtpd_tls_cert_file/smtpd_tls_key_file naming the snakeoil
pair, generated here since ssl-cert need not be installed), then only what a
private instance needs (its queue, data directory, log, loopback). master.cf
is the package's /usr/share/postfix/master.cf.dist, every service chrooted as
shipped, with the smtp service moved to 127.0.0.1 and a free port. Two
services are added as the common TLS guides set them up: `submission` with a
certificate of its own (`-o smtpd_tls_cert_file=...`), and `smtps` with
implicit TLS (`-o smtpd_tls_wrappermode=yes`) and main.cf's certificates.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.harness.postfix import HOST, PostfixInstance, free_port

DEBIAN_MAIN_CF = Path("/usr/share/postfix/main.cf.debian")
DEBIAN_MAIN_CF_TLS = Path("/usr/share/postfix/main.cf.tls")
DEBIAN_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")
SNAKEOIL_CERT = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
SNAKEOIL_KEY = "/etc/ssl/private/ssl-cert-snakeoil.key"
_SMTP_LINE = re.compile(r"^smtp\s+inet\s.*$", re.MULTILINE)
# A main.cf definition: `name = value` from column 0, with its continuation lines.
_DEFINITION = re.compile(r"^(?P<name>[A-Za-z0-9_]+)[ \t]*=.*(?:\n[ \t]+\S.*)*$", re.MULTILINE)


class StockDebianPostfix(PostfixInstance):
    """`PostfixInstance` with Debian's own main.cf and master.cf (smtpd chrooted)."""

    def __init__(self) -> None:
        super().__init__()
        self.submission_port = 0
        self.smtps_port = 0

    @property
    def snakeoil_cert(self) -> Path:
        return self.root / "ssl" / "ssl-cert-snakeoil.pem"

    @property
    def snakeoil_key(self) -> Path:
        return self.root / "ssl" / "ssl-cert-snakeoil.key"

    @property
    def guide_cert(self) -> Path:
        """The certificate the submission service names itself."""
        return self.root / "ssl" / "submission.pem"

    def _write_config(self) -> None:
        root = self.root
        main_cf = self.config_dir / "main.cf"
        master_cf = self.config_dir / "master.cf"
        if not main_cf.exists():  # a restart keeps what the test changed
            _write_self_signed(self.snakeoil_cert, self.snakeoil_key, "snakeoil")
            _write_self_signed(self.guide_cert, self.guide_cert, "submission")
            stock = DEBIAN_MAIN_CF.read_text() + DEBIAN_MAIN_CF_TLS.read_text()
            stock = stock.replace(SNAKEOIL_CERT, str(self.snakeoil_cert))
            stock = stock.replace(SNAKEOIL_KEY, str(self.snakeoil_key))
            private = {
                "queue_directory": str(root / "queue"),
                "data_directory": str(root / "data"),
                "myhostname": self.hostname,
                "mydestination": "",
                "local_recipient_maps": "",
                "alias_maps": "",
                "alias_database": "",
                "default_transport": "error:private test instance",
                "relay_transport": "error:private test instance",
                "notify_classes": "",
                "inet_interfaces": HOST,
                "inet_protocols": "ipv4",
                "mynetworks": "127.0.0.0/8",
                "maillog_file": str(self.maillog_path),
                "maillog_file_prefixes": str(root),
                "syslog_name": f"postfix-test-{root.name}",
                "smtpd_tls_loglevel": "1",
                "service_throttle_time": "1s",
            }
            main_cf.write_text(_set_in_place(stock, private))
        if self.submission_port == 0 or not self.running:
            self.submission_port, self.smtps_port = free_port(), free_port()
        master = DEBIAN_MASTER_CF.read_text()
        smtp = _SMTP_LINE.search(master)
        assert smtp is not None, "Debian's master.cf has no smtp/inet line"
        listen = smtp.group(0).replace("smtp", f"{HOST}:{self.port}", 1)
        master = master[: smtp.start()] + listen + master[smtp.end() :]
        master += (
            f"{HOST}:{self.submission_port} inet n - y - - smtpd\n"
            "  -o syslog_name=postfix/submission\n"
            "  -o smtpd_tls_security_level=encrypt\n"
            f"  -o smtpd_tls_cert_file={self.guide_cert}\n"
            f"  -o smtpd_tls_key_file={self.guide_cert}\n"
            f"{HOST}:{self.smtps_port} inet n - y - - smtpd\n"
            "  -o syslog_name=postfix/smtps\n"
            "  -o smtpd_tls_wrappermode=yes\n"
        )
        master_cf.write_text(master)
        past = time.time() - 10
        for path in (main_cf, master_cf):
            os.utime(path, (past, past))


def _set_in_place(main_cf: str, values: dict[str, str]) -> str:
    """`main_cf` with each of `values` set where it is defined, as `postconf -e` does.

    Not appended as second definitions: then every Postfix program warns
    "overriding earlier entry" at each start (Debian 13's main.cf.debian sets
    mydestination, alias_maps, alias_database and inet_protocols; Debian 12's
    does not). With maillog_file those warnings go to postlogd's datagram
    socket, which queues 10 (net.unix.max_dgram_qlen in a new network
    namespace, as in the trixie lane's container); postlogd, warning too as it
    starts, blocks on its own full socket, and so does every Postfix program
    after it: smtpd never greets, `postfix stop` never returns.
    """
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in values:
            return match.group(0)
        if name in seen:  # defined twice in the file: one definition is enough
            return ""
        seen.add(name)
        return f"{name} = {values[name]}"

    text = _DEFINITION.sub(replace, main_cf)
    if not text.endswith("\n"):
        text += "\n"
    return text + "".join(
        f"{name} = {value}\n" for name, value in values.items() if name not in seen
    )


def _write_self_signed(cert_path: Path, key_path: Path, name: str) -> None:
    """A self-signed RSA pair, as make-ssl-cert makes the snakeoil one."""
    cert_path.parent.mkdir(mode=0o755, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    if key_path == cert_path:
        cert_path.write_bytes(key_pem + cert_pem)
        cert_path.chmod(0o600)
        return
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
