"""A real sending Postfix as the DANE client: the thing that defers an operator's mail.

`SendingPostfix` is a private `PostfixInstance` (its own main.cf, master.cf,
queue and mail log in a slot) configured as a DANE sender:
``smtp_tls_security_level = dane``, ``smtp_dns_support_level = dnssec``, no
chroot. Its master, and so every smtp client it forks, is started in a mount
namespace (``unshare -m``) whose /etc/resolv.conf names the validating
Unbound of tests/harness/unbound.py with ``options trust-ad``: the MX of the
test domain, its address and its TLSA RRset are looked up and validated
through that cache, and the smtp process keeps its own TLSA cache for the
TTL, as on a real host.

Mail is injected over SMTP into the instance's own smtpd (127.0.0.1, a free
port; 127.0.0.0/8 may relay). The smtp client then delivers to the domain's
MX: in the tests the receiving `DanePostfix` on 127.53.10.2:25. Connection
caching is off, so every message is a fresh DNS lookup and a full TLS
handshake judged by Postfix's DANE code.

What happened to each message is read from the sender's mail log
(`maillog_file`): `delivery(queue_id)` gives the first delivery attempt's
status (sent, deferred, bounced), its reason and the TLS summary line the
same smtp process logged just before it ("Verified TLS connection
established to ..." for a DANE match).

Needs root (unshare, a private Postfix) and postfix, util-linux.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danesync.actions.execute import run_command
from tests.harness.postfix import PostfixInstance

SENDER_HOSTNAME = "sender.test"  # not the receiver's name: Postfix refuses to mail itself
RECIPIENT = "sink@example.test"

# Receiving side: accept mail for the test domain and throw it away, so
# nothing bounces back and the receiver's log stays readable.
RECEIVER_PARAMETERS = {"mydestination": "example.test", "local_transport": "discard:test sink"}

_SMTP_LINE = re.compile(r"\bpostfix-[\w-]+/smtp\[(?P<pid>\d+)\]: (?P<text>.*)$")
_STATUS = re.compile(
    r"^(?P<queue_id>[0-9A-F]+): to=<[^>]*>, relay=(?P<relay>\S+), .*"
    r"dsn=(?P<dsn>[\d.]+), status=(?P<status>\w+) \((?P<reason>.*)\)$"
)
_TLS_SUMMARY = re.compile(r"^(?P<trust>\w+) TLS connection established to (?P<peer>\S+):")
_QUEUED = re.compile(r"queued as ([0-9A-F]+)")
# Postfix 3.7: "issuer_CN=X, fingerprint="; 3.10: "issuer=X, cert fingerprint=".
_ISSUER = re.compile(r"\bissuer(?:_CN)?=(?P<issuer>.*?), (?:cert )?fingerprint=")


@dataclass(frozen=True)
class Delivery:
    """The first delivery attempt of one message, as the sender's log tells it."""

    queue_id: str
    status: str  # sent | deferred | bounced
    dsn: str
    relay: str
    reason: str
    tls: str  # the TLS summary line of that connection ("" if none)
    notes: tuple[str, ...]  # every other line the smtp process logged for it

    @property
    def issuer(self) -> str:
        """The CN of the issuer of the leaf the receiver served ("" if no handshake)."""
        for note in self.notes:
            match = _ISSUER.search(note)
            if match is not None:
                return match["issuer"]
        return ""

    @property
    def verified(self) -> bool:
        """Delivered over a TLS session Postfix's DANE code authenticated."""
        return self.status == "sent" and self.tls.startswith("Verified TLS connection")

    def describe(self) -> str:
        lines = [f"{self.queue_id}: {self.status} ({self.reason})", f"  tls: {self.tls}"]
        lines += [f"  {note}" for note in self.notes if not note.startswith("SSL_connect:")]
        return "\n".join(lines)


def read_attempts(maillog: str) -> dict[str, list[Delivery]]:
    """Every delivery attempt of each queue id in a Postfix mail log, in order.

    An smtp process delivers one message at a time; with connection caching
    off each delivery is one connection, whose TLS summary (and any
    certificate or TLSA complaint) the process logs before the status line.
    """
    pending: dict[str, list[str]] = {}
    found: dict[str, list[Delivery]] = {}
    for line in maillog.splitlines():
        match = _SMTP_LINE.search(line)
        if match is None:
            continue
        pid, text = match["pid"], match["text"]
        status = _STATUS.match(text)
        if status is None:
            pending.setdefault(pid, []).append(text)
            continue
        before = pending.pop(pid, [])
        tls = next((t for t in before if _TLS_SUMMARY.match(t)), "")
        notes = tuple(t for t in before if t != tls)
        attempt = Delivery(
            status["queue_id"],
            status["status"],
            status["dsn"],
            status["relay"],
            status["reason"],
            tls,
            notes,
        )
        found.setdefault(attempt.queue_id, []).append(attempt)
    return found


class SendingPostfix(PostfixInstance):
    """A private Postfix relaying to the test domain's MX as a DANE sender."""

    def __init__(self, resolver: str, **options: Any) -> None:
        parameters = {
            "myhostname": SENDER_HOSTNAME,
            "myorigin": SENDER_HOSTNAME,
            "default_transport": "smtp",
            "relay_transport": "smtp",
            "smtp_tls_security_level": "dane",
            "smtp_dns_support_level": "dnssec",
            # 2: also the TLSA records looked up, the one that matched, the
            # leaf's issuer (which chain the receiver served).
            "smtp_tls_loglevel": "2",
            # Every message its own connection: its own lookup, its own handshake.
            "smtp_connection_cache_on_demand": "no",
            "smtp_tls_session_cache_database": "",
            # No root hints behind the test cache: probe what it can validate.
            "dnssec_probe": "soa:example.test",
            # A deferred message is retried soon (postqueue -f retries at once).
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
        }
        parameters.update(options.pop("parameters", {}))
        super().__init__(parameters=parameters, hostname=SENDER_HOSTNAME, **options)
        self.resolver = resolver

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    def _write_config(self) -> None:
        super()._write_config()
        self.resolv_conf.write_text(
            f"nameserver {self.resolver}\noptions trust-ad attempts:1 timeout:2\n"
        )
        self.resolv_conf.chmod(0o644)

    def postfix(self, *arguments: str) -> str:
        """``postfix -c DIR ARGS``; ``start`` runs in the private mount namespace.

        The master and everything it forks stay in that namespace, so a
        reload or stop from outside keeps the resolver.
        """
        argv = ["postfix", "-c", str(self.config_dir), *arguments]
        if arguments[:1] == ("start",):
            script = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
            argv = [
                *("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"),
                str(self.resolv_conf),
                *argv,
            ]
        return run_command(argv, 60, stderr_tty=True)

    def start(self) -> None:
        super().start()
        seen = self.resolver_seen()
        if f"nameserver {self.resolver}" not in seen:
            raise RuntimeError(
                f"the sending Postfix's master does not see our resolv.conf:\n{seen}"
            )

    def resolver_seen(self) -> str:
        """/etc/resolv.conf as the running master sees it (through its namespace)."""
        pid = self._master_pid()
        if pid is None:
            return ""
        return Path(f"/proc/{pid}/root/etc/resolv.conf").read_text()

    # -- mail ------------------------------------------------------------------

    def send(self, recipient: str = RECIPIENT, subject: str = "danesync DANE sender test") -> str:
        """Inject one message over SMTP; its queue id on this instance."""
        message_id = f"<{uuid.uuid4().hex}@{SENDER_HOSTNAME}>"
        body = (
            f"From: <probe@{SENDER_HOSTNAME}>\r\nTo: <{recipient}>\r\n"
            f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n\r\nDANE test.\r\n"
        )
        with smtplib.SMTP(self.host, self.port, local_hostname="injector.test", timeout=30) as smtp:
            smtp.mail(f"probe@{SENDER_HOSTNAME}")
            code, said = smtp.rcpt(recipient)
            if code != 250:
                raise AssertionError(f"the sending Postfix refused {recipient}: {code} {said!r}")
            code, said = smtp.data(body.encode())
        match = _QUEUED.search(said.decode(errors="replace"))
        if code != 250 or match is None:
            raise AssertionError(f"the sending Postfix did not queue the message: {code} {said!r}")
        return match.group(1)

    def attempts(self) -> dict[str, list[Delivery]]:
        """Every delivery attempt so far, per queue id."""
        return read_attempts(self.maillog)

    def deliveries(self) -> dict[str, Delivery]:
        """The first delivery attempt of each message so far."""
        return {queue_id: tried[0] for queue_id, tried in self.attempts().items()}

    def wait_for_attempts(self, queue_ids: list[str], timeout: float = 60) -> dict[str, Delivery]:
        """Wait until every message in `queue_ids` had its first delivery attempt."""
        end = time.monotonic() + timeout
        while True:
            found = self.deliveries()
            missing = [q for q in queue_ids if q not in found]
            if not missing:
                return {q: found[q] for q in queue_ids}
            if time.monotonic() > end:
                raise AssertionError(
                    f"no delivery attempt for {missing} within {timeout} s; sender log:\n"
                    f"{self.maillog[-4000:]}"
                )
            time.sleep(0.2)

    def flush(self) -> None:
        """``postqueue -f``: retry the deferred mail now."""
        run_command(["postqueue", "-c", str(self.config_dir), "-f"])


class MailStream:
    """A thread injecting one message every `interval` s until stopped."""

    def __init__(self, sender: SendingPostfix, interval: float = 0.5) -> None:
        self.sender = sender
        self.interval = interval
        self.sent: list[tuple[float, str]] = []  # (time.time() injected, queue id)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sent.append((time.time(), self.sender.send()))
            except (OSError, smtplib.SMTPException, AssertionError) as error:
                self.errors.append(repr(error))
            self._stop.wait(self.interval)

    @property
    def queue_ids(self) -> list[str]:
        return [queue_id for _, queue_id in self.sent]

    def __enter__(self) -> MailStream:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def report(deliveries: Mapping[str, Delivery], limit: int = 5) -> str:
    """The deliveries that were not DANE-verified, for an assertion message."""
    bad = [d for d in deliveries.values() if not d.verified]
    lines = [f"{len(bad)} of {len(deliveries)} messages not delivered over verified DANE TLS"]
    lines += [d.describe() for d in bad[:limit]]
    return "\n".join(lines)
