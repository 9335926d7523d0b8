"""`make demo`: danesync's whole job on loopback, narrated for a person.

Pebble (a private ACME CA) and certbot issue a certificate; a private BIND
and a private Postfix start; `danesync run` publishes the TLSA record and
deploys the chain. Then Pebble restarts with a new intermediate and certbot
renews: danesync holds the new chain back until its TLSA record is published,
visible and aged, deploys it, and retires the old record. An independent
`openssl s_client` DANE check and `danesync status` close the show.

Everything it starts is stopped at the end, also on failure or Ctrl-C.
Exit status 0 when every step worked, 1 when one failed, 130 on Ctrl-C.
Run as root: ``.venv/bin/python -m tests.demo``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

from cryptography import x509

from tests.harness.bind import BindServer
from tests.harness.danesync import danesync_env, run_danesync, write_config
from tests.harness.pebble import Certbot, PebbleCA
from tests.harness.postfix import PostfixInstance

MX = "mx.example.test"
ZONE = "example.test"
TLSA_NAME = f"_25._tcp.{MX}"
TTL = 2
ROLLOVER_WAIT = 4
SETTLE = 0.1
STEP_TIMEOUT = 60.0

# How each event reads in the narration; the JSON record supplies the details.
PHRASES = {
    "daemon.started": "danesync is up and reads certbot's live/ directory",
    "daemon.ready": "the first pass is done; now watching for renewals",
    "daemon.stopping": "danesync stops",
    "lineage.changed": "certbot wrote a new certificate",
    "lineage.invalid": "the new certificate is not valid, not deployed",
    "chain.held": "held back: its TLSA record is not yet visible everywhere",
    "chain.deployed": "the new chain is installed for Postfix",
    "chain.rolled_back": "the new chain was rolled back",
    "postfix.reloaded": "Postfix reloaded",
    "postfix.failed": "a Postfix command failed",
    "probe.ok": "a STARTTLS probe sees the new certificate served",
    "probe.failed": "the STARTTLS probe does not see the new certificate",
    "tlsa.published": "added to DNS by an RFC 2136 update signed with TSIG",
    "tlsa.visible": "every name server answers with it",
    "tlsa.retired": "removed from DNS: no served chain needs it any more",
    "tlsa.missing": "missing from DNS",
    "dns.failed": "a DNS step failed",
    "rollover.waiting": "waiting so that DNS caches have it too",
    "rollover.forced": "deployed at once (emergency)",
}


class DemoFailed(Exception):
    """A step did not do what the demo promised."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP: stop like Ctrl-C."""


# --- output --------------------------------------------------------------------

_START = time.monotonic()


def say(text: str) -> None:
    """One narration step, with the seconds since the demo began."""
    print(f"\n[{time.monotonic() - _START:5.1f}s] {text}", flush=True)


def show(text: str, indent: str = "    ") -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"{indent}{line}", flush=True)


def short_tlsa(record: str) -> str:
    """`_25._tcp.mx.example.test. 2 IN TLSA 2 1 1 <64 hex>` -> `... 2 1 1 a424a06ebe5e…`."""
    words = record.split()
    if len(words) >= 8 and words[3] == "TLSA":
        words = [words[0].rstrip("."), *words[4:]]
    if len(words) >= 2 and len(words[-1]) > 16:
        words[-1] = words[-1][:12] + "…"
    return " ".join(words)


def serial_of(certificate: x509.Certificate) -> str:
    """Hex as `openssl x509 -serial` (and danesync's log) prints it."""
    text = f"{certificate.serial_number:X}"
    return text if len(text) % 2 == 0 else "0" + text


def issuer_cn(certificate: x509.Certificate) -> str:
    names = certificate.issuer.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.issuer.rfc4514_string()


def format_event(record: dict[str, Any]) -> str:
    """`  chain.held        mx.example.test  its TLSA records ...` for one JSON log record."""
    event = str(record.get("event", "?"))
    subject = str(record.get("lineage") or "")
    tlsa = record.get("tlsa")
    if not subject and isinstance(tlsa, str):
        subject = short_tlsa(tlsa)
    detail = str(record.get("reason") or PHRASES.get(event, ""))
    if event == "postfix.reloaded":  # its reason lists the lineages
        subject, detail = "", f"{PHRASES[event]} for {record.get('reason', '')}"
    extra = []
    if event in ("chain.held", "chain.deployed") and record.get("serial"):
        extra.append(f"serial {record['serial']}")
    if event == "chain.deployed" and record.get("issuer"):
        extra.append(f"issuer {record['issuer']}")
    if event == "rollover.waiting" and record.get("proceed_at"):
        extra.append(f"until {record['proceed_at']}")
    if extra:
        detail += f" ({'; '.join(extra)})"
    return "  " + "  ".join(part for part in (f"{event:<16}", subject, detail) if part)


# --- the daemon's log, followed as it happens --------------------------------------


class DaemonLog:
    """Reads `danesync run --log-format json` from a pipe; prints events when asked."""

    def __init__(self, stream: IO[str], copy: Path) -> None:
        self.records: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._copy = copy.open("w")
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._copy.write(line)
            self._copy.flush()
            self.lines.append(line.rstrip("\n"))
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a traceback or a warning from a library: kept in the log file
            if isinstance(record, dict):
                self._queue.put(record)
        self._queue.put(None)

    def follow(
        self, done: Callable[[dict[str, Any]], bool], what: str, timeout: float = STEP_TIMEOUT
    ) -> dict[str, Any]:
        """Print events until one satisfies `done`; that event. Raises DemoFailed on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoFailed(f"no {what} within {timeout:.0f} s")
            try:
                record = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if record is None:
                raise DemoFailed(f"danesync exited before {what}")
            self.records.append(record)
            print(format_event(record), flush=True)
            if done(record):
                return record

    def drain(self, quiet: float = 0.3) -> None:
        """Print what arrives until the log is quiet for `quiet` seconds."""
        while True:
            try:
                record = self._queue.get(timeout=quiet)
            except queue.Empty:
                return
            if record is None:
                return
            self.records.append(record)
            print(format_event(record), flush=True)

    def tail(self, count: int = 30) -> str:
        return "\n".join(self.lines[-count:])

    def close(self) -> None:
        self._thread.join(timeout=5)
        self._copy.close()


def is_event(name: str, **fields: str) -> Callable[[dict[str, Any]], bool]:
    """Matches event `name` whose fields have these values (compared case-blind: hex serials)."""
    return lambda record: (
        record.get("event") == name
        and all(str(record.get(key, "")).lower() == value.lower() for key, value in fields.items())
    )


# --- checks from outside danesync --------------------------------------------------


def served_leaf(postfix: PostfixInstance) -> x509.Certificate | None:
    try:
        return postfix.served_certificate()
    except AssertionError:
        return None


def leaf_of(certbot: Certbot) -> x509.Certificate:
    return x509.load_pem_x509_certificate(certbot.read(MX, "cert"))


def matched_ta(line: str) -> bool:
    """OpenSSL's DANE-TA match line: "matched TA certificate" up to 3.4,
    "matched the TA certificate" from 3.5 (Debian 13)."""
    return re.search(r"\bmatched (the )?TA certificate\b", line) is not None


def dane_check(postfix: PostfixInstance, rrdata: str) -> tuple[str, list[str]]:
    """`openssl s_client -dane_tlsa_rrdata`; the command line and its telling lines."""
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"{postfix.host}:{postfix.port}",
        "-starttls",
        "smtp",
        "-dane_tlsa_domain",
        MX,
        "-dane_tlsa_rrdata",
        rrdata,
    ]
    completed = subprocess.run(argv, input=b"", capture_output=True, timeout=15, check=False)
    output = (completed.stdout + completed.stderr).decode(errors="replace")
    telling = [
        line.strip()
        for line in output.splitlines()
        if line.strip().startswith(("Verification", "Verify return code", "DANE TLSA"))
    ]
    command = " ".join(shlex.quote(a) for a in argv).replace(rrdata[-64:], rrdata[-64:][:12] + "…")
    return command, telling


# --- the show ------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        del frame
        raise Stopped(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def start_daemon(config: Path, pebble: PebbleCA) -> subprocess.Popen[str]:
    """`danesync run` in its own session: Ctrl-C reaches the demo, which stops it.

    It trusts Pebble's TLS certificate, as a real host trusts Let's Encrypt's,
    for the renewal information (ARI) it asks the CA about.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "danesync", "run", "-c", str(config), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=danesync_env({"REQUESTS_CA_BUNDLE": str(pebble.ca_bundle)}),
        start_new_session=True,
    )


def stop_daemon(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise DemoFailed("danesync did not stop within 15 s of SIGTERM") from None
    return process.returncode


def demo(stack: contextlib.ExitStack, workdir: Path) -> None:
    say(
        "This demo runs a mail host's certificate life on this machine, on 127.0.0.1 only:\n"
        "  an ACME CA and certbot, a DNS server, Postfix, and danesync between them."
    )

    say("Starting Pebble, a private ACME certificate authority (like Let's Encrypt).")
    pebble = PebbleCA(workdir / "pebble")
    pebble.start()
    stack.callback(pebble.stop)
    show(f"ACME directory: {pebble.directory_url}")

    say(f"certbot asks Pebble for a certificate for {MX}.")
    certbot = Certbot(workdir / "certbot", pebble)
    run = certbot.certonly(MX)
    first = leaf_of(certbot)
    show(
        f"issued in {run.seconds:.1f} s: serial {serial_of(first)}, "
        f"issuer {issuer_cn(first)!r}\n"
        f"certbot keeps it in {certbot.live(MX)}/"
    )

    say(f"Starting a private BIND, the primary name server of {ZONE} (record TTL {TTL} s).")
    bind = BindServer(ZONE, ttl=TTL)
    stack.callback(bind.close)
    bind.start()
    show(f"listening on {bind.address}; danesync may change TLSA records with a TSIG key")
    show(f"TLSA records at {TLSA_NAME} now: {sorted(bind.dig_tlsa(TLSA_NAME)) or 'none'}")

    say("Starting a private Postfix. It offers STARTTLS but has no certificate yet.")
    postfix = PostfixInstance()
    stack.callback(postfix.close)
    postfix.start()
    show(f"SMTP on {postfix.host}:{postfix.port}")

    say(
        "Writing danesync's configuration: certbot's directory, this Postfix, and BIND.\n"
        f"  Short times for the demo: TTL {TTL} s, rollover_wait {ROLLOVER_WAIT} s "
        "(on a real host: 3600 s and 7200 s)."
    )
    config = write_config(
        workdir / "danesync.toml",
        {
            "certbot": {"config_dir": certbot.config_dir},
            "postfix": {
                "config_dir": postfix.config_dir,
                "deploy_dir": workdir / "deploy",
                "probe": f"{postfix.host}:{postfix.port}",
            },
            "dns": {
                "mode": "rfc2136",
                "server": bind.address,
                "zone": ZONE,
                "tsig_key_file": bind.key_path,
                "ttl": TTL,
                "rollover_wait": ROLLOVER_WAIT,
            },
            "state": {"dir": workdir / "state"},
            "daemon": {"settle": SETTLE},
        },
        [{"lineage": MX}],
    )
    show(config.read_text(), indent="    | ")

    say(
        "Starting `danesync run`. Its JSON log is shown as it happens, one event a line.\n"
        "  Nothing is served yet and no TLSA record exists: danesync publishes the record,\n"
        "  waits until BIND answers with it and for the rollover wait, then deploys."
    )
    daemon = start_daemon(config, pebble)
    assert daemon.stdout is not None
    log = DaemonLog(daemon.stdout, workdir / "danesync.log")
    stack.callback(log.close)
    stack.callback(stop_daemon, daemon)
    try:
        run_rollovers(daemon, log, pebble, certbot, bind, postfix, first)
    except DemoFailed:
        log.drain(0.2)
        print("\n  danesync's last log lines:", flush=True)
        show(log.tail(), indent="  | ")
        raise

    say("`danesync status` shows what is deployed and published:")
    status = run_danesync("status", "-c", str(config))
    if status.returncode != 0:
        raise DemoFailed(f"danesync status exited {status.returncode}: {status.stderr}")
    show(status.stdout)

    say("Stopping danesync (SIGTERM).")
    code = stop_daemon(daemon)
    log.drain(0.5)
    if code != 0:
        raise DemoFailed(f"danesync exited {code} on SIGTERM")


def run_rollovers(
    daemon: subprocess.Popen[str],
    log: DaemonLog,
    pebble: PebbleCA,
    certbot: Certbot,
    bind: BindServer,
    postfix: PostfixInstance,
    first: x509.Certificate,
) -> None:
    first_serial = serial_of(first)
    log.follow(is_event("probe.ok"), "first deployment")
    log.drain()
    served = served_leaf(postfix)
    if served != first:
        raise DemoFailed("Postfix does not serve certbot's certificate after the first deploy")
    old_records = sorted(bind.dig_tlsa(TLSA_NAME))
    say("Checked from outside danesync (openssl s_client, dig):")
    show(f"Postfix serves serial {first_serial}, issuer {issuer_cn(first)!r}")
    show(f"DNS has: {', '.join(short_tlsa(r) for r in old_records)}")

    say(
        "Restarting Pebble. It comes back with a new root and a new intermediate,\n"
        "  as when Let's Encrypt switches intermediates: the old 2 1 1 record will not match."
    )
    pebble.restart()
    say("certbot renews the certificate (it needs a new account with the new CA).")
    run = certbot.renew(MX)
    second = leaf_of(certbot)
    second_serial = serial_of(second)
    show(
        f"renewed in {run.seconds:.1f} s: serial {second_serial}, issuer {issuer_cn(second)!r}\n"
        "certbot replaced the links in live/ one by one; danesync watches them."
    )
    say("danesync reacts:")
    log.follow(is_event("chain.held", serial=second_serial), "chain.held of the renewal")
    log.follow(is_event("tlsa.published"), "tlsa.published of the new record")
    both = sorted(bind.dig_tlsa(TLSA_NAME))
    still = served_leaf(postfix)
    print("  -- checked meanwhile with dig and openssl s_client:", flush=True)
    show(f"DNS has both: {', '.join(short_tlsa(r) for r in both)}", indent="     ")
    if still != first:
        raise DemoFailed("Postfix stopped serving the old chain while the new one was held")
    show(f"Postfix still serves the old chain (serial {first_serial})", indent="     ")
    log.follow(is_event("chain.deployed", serial=second_serial), "chain.deployed of the renewal")
    log.follow(is_event("tlsa.retired"), "tlsa.retired of the old record")
    log.drain()

    seen = [r.get("event") for r in log.records]
    after = seen[len(seen) - seen[::-1].index("chain.held") - 1 :]
    for expected in (
        "chain.held",
        "tlsa.published",
        "tlsa.visible",
        "rollover.waiting",
        "chain.deployed",
        "probe.ok",
        "tlsa.retired",
    ):
        if expected not in after:
            raise DemoFailed(f"the rollover did not log {expected}: {after}")

    say("The safe rollover is done: held, published, visible, waited, deployed, retired.")
    served = served_leaf(postfix)
    if served != second:
        raise DemoFailed("Postfix does not serve the renewed certificate")
    records = sorted(bind.dig_tlsa(TLSA_NAME))
    show(f"Postfix serves serial {second_serial}, issuer {issuer_cn(second)!r}")
    show(f"DNS has: {', '.join(short_tlsa(r) for r in records)}")
    if len(records) != 1:
        raise DemoFailed(f"expected one TLSA record after the rollover, DNS has {records}")

    say(
        "Independent DANE check of what Postfix serves, with OpenSSL's own DANE code\n"
        "  and the record DNS publishes now:"
    )
    command, telling = dane_check(postfix, records[0])
    show(f"$ {command}")
    show("\n".join(telling))
    if "Verification: OK" not in telling or not any(matched_ta(t) for t in telling):
        raise DemoFailed("openssl's DANE verification of the served chain failed")

    say("For contrast, the retired record does not match the chain served now; openssl fails:")
    _, telling = dane_check(postfix, old_records[0])
    show("\n".join(t for t in telling if t.startswith(("Verification", "Verify return"))))
    if "Verification: OK" in telling:
        raise DemoFailed("the old record still verifies the new chain: no rollover happened")
    if daemon.poll() is not None:
        raise DemoFailed(f"danesync exited {daemon.returncode} during the demo")


def main() -> int:
    if os.geteuid() != 0:
        print("The demo runs a private Postfix and needs root (try: sudo make demo).")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="danesync-demo-"))
    workdir.chmod(0o755)
    outcome = 1
    with stop_on_signals():
        try:
            with contextlib.ExitStack() as stack:
                try:
                    demo(stack, workdir)
                finally:
                    say("Stopping what the demo started: Postfix, BIND, Pebble; removing files.")
            outcome = 0
        except DemoFailed as error:
            print(f"\nDEMO FAILED: {error}", file=sys.stderr, flush=True)
        except (KeyboardInterrupt, Stopped):
            print("\nInterrupted: everything the demo started has been stopped.", flush=True)
            outcome = 130
        except Exception as error:  # any other failure: say so plainly, exit non-zero
            print(f"\nDEMO FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if outcome == 0:
        say(f"Done in {time.monotonic() - _START:.0f} s. Everything it started is stopped.")
    return outcome


if __name__ == "__main__":
    sys.exit(main())
