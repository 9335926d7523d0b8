"""A real, private Postfix on loopback, for integration tests.

`PostfixInstance` runs a complete Postfix (its own main.cf and master.cf,
queue, data directory and mail log) with one smtpd on 127.0.0.1 and a free
high port, TLS at `smtpd_tls_security_level = may` and no certificate until
a test installs one. It is started with ``postfix -c DIR start`` and stopped
with ``postfix -c DIR stop`` at teardown, also when the test fails.

Instances live in numbered *slots*, ``<tmp>/danesync-postfix/<n>/``, each
held with an exclusive lock while in use (so parallel test runs of several
engineers never share one, and a crashed run frees its slot). The slot's
``etc`` is added once to ``alternate_config_directories`` of
/etc/postfix/main.cf (under a lock, keeping every other entry), and stays
there: each edit of that file makes every Postfix command on the machine
wait ~2 s for it to "cool down", so reusing a few known paths keeps that to
the first runs. A slot's previous content, including a Postfix left running
by a killed test run, is stopped and removed when the slot is taken.

Use in a test module::

    postfix = postfix_fixture()            # module-scoped fixture "postfix"

    def test_x(postfix: PostfixInstance) -> None:
        postfix.postconf("-e", f"smtpd_tls_chain_files = {chain}")
        postfix.reload()
        der = postfix.served_certificate("-servername", "mx.example.test")

or directly: ``with PostfixInstance() as postfix: ...``.

Also there: `config_dir`, `deploy_dir` (not created), `port`, `maillog`,
`postconf(...)`, `set_parameters({...})`, `reload()`, `stopped()` (a block
during which Postfix is down, e.g. to make `postfix reload` fail),
`wait_for_log(text, since)`, and an independent TLS client:
`s_client(...)`, `served_certificate(...)` (the leaf an ``openssl s_client``
with those options gets) and `dane_verify(domain, "2 1 1 <hex>")`.
`service_throttle_time` is 1 s, so a test that breaks main.cf on purpose
does not leave smtpd throttled for a minute.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest
from cryptography import x509

from danesync.actions.execute import run_command
from tests.conftest import require_program, require_root

HOST = "127.0.0.1"
SYSTEM_CONFIG_DIR = Path("/etc/postfix")
SLOTS_DIR = Path(tempfile.gettempdir()) / "danesync-postfix"
START_ATTEMPTS = 3
DEFAULT_HOSTNAME = "mx.example.test"
KEEP = os.environ.get("DANESYNC_KEEP_POSTFIX") == "1"  # keep files after stop, to debug

_LIVE: set[PostfixInstance] = set()
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL
)


def _stop_leftovers() -> None:
    for instance in list(_LIVE):
        instance.close()


atexit.register(_stop_leftovers)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (racy; start() retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


# Every service a small Postfix needs, none chrooted (the queue is a temp dir).
_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
local      unix  -       n       n       -       -       local
virtual    unix  -       n       n       -       -       virtual
lmtp       unix  -       -       n       -       -       lmtp
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """A private Postfix serving SMTP on 127.0.0.1:`port`; a context manager."""

    def __init__(
        self,
        *,
        parameters: Mapping[str, str] | None = None,
        hostname: str = DEFAULT_HOSTNAME,
    ) -> None:
        self.parameters = dict(parameters or {})
        self.hostname = hostname
        self.host = HOST
        self.port = 0
        self._slot: Path | None = None
        self._lock: IO[str] | None = None
        self._running = False

    # -- life cycle ----------------------------------------------------------

    def __enter__(self) -> PostfixInstance:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def root(self) -> Path:
        """The slot directory holding everything of this instance."""
        if self._slot is None:
            raise RuntimeError("the instance has no directory before start()")
        return self._slot

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def deploy_dir(self) -> Path:
        """A directory for chain files (not created: the code under test does that)."""
        return self.root / "deploy"

    @property
    def maillog_path(self) -> Path:
        return self.root / "maillog"

    @property
    def maillog(self) -> str:
        """Everything Postfix logged so far."""
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Take a slot, write the configuration and start Postfix."""
        require_root()
        require_program("postfix")
        if self._slot is None:
            self._take_slot()
            self._prepare()
        _LIVE.add(self)
        for attempt in range(START_ATTEMPTS):
            if self.port == 0 or attempt > 0:
                self.port = free_port()
            self._write_config()
            try:
                self.postfix("start")
            except Exception:
                # Another test may have taken the port since free_port().
                if "Address already in use" in self.maillog and attempt + 1 < START_ATTEMPTS:
                    continue
                raise
            break
        self._running = True
        self._wait_listening()

    def stop(self) -> None:
        """``postfix stop`` and wait until the master is gone; the files stay."""
        if not self._running:
            return
        self._running = False
        self._stop_master()

    def close(self) -> None:
        """Stop Postfix, remove the slot's files (unless DANESYNC_KEEP_POSTFIX=1), free it."""
        try:
            self.stop()
        finally:
            _LIVE.discard(self)
            if self._slot is not None and not KEEP:
                _empty_slot(self._slot)
            if self._lock is not None:
                self._lock.close()  # releases the flock
                self._lock = None
            self._slot = None

    @contextlib.contextmanager
    def stopped(self) -> Iterator[PostfixInstance]:
        """Stop Postfix for the duration of the block, then start it again."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def wait_for_log(self, text: str, since: int = 0, timeout: float = 10) -> bool:
        """Wait until `text` appears in the mail log after offset `since`.

        ``mark = len(postfix.maillog)`` before an action, then
        ``postfix.wait_for_log("reload --", mark)``: the master logs that once
        it has re-read its configuration, after ``postfix reload`` returned.
        """
        end = time.monotonic() + timeout
        while text not in self.maillog[since:]:
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    # -- commands --------------------------------------------------------------

    def postfix(self, *arguments: str) -> str:
        """``postfix -c DIR ARGS``; raises danesync's CommandError on failure."""
        return run_command(["postfix", "-c", str(self.config_dir), *arguments], 60, stderr_tty=True)

    def postconf(self, *arguments: str) -> str:
        """``postconf -c DIR ARGS`` (e.g. ``"-e", "name = value"``, ``"-h", "name"``)."""
        return run_command(["postconf", "-c", str(self.config_dir), *arguments])

    def reload(self) -> None:
        self.postfix("reload")

    def set_parameters(self, values: Mapping[str, str]) -> None:
        """Set main.cf parameters by hand (not through danesync's code)."""
        self.postconf("-e", *(f"{name}={value}" for name, value in values.items()))

    # -- independent TLS client (openssl s_client) -------------------------------

    def s_client(self, *options: str, timeout: float = 15) -> str:
        """``openssl s_client -starttls smtp`` against this instance; its whole output."""
        argv = [
            "openssl",
            "s_client",
            "-connect",
            f"{self.host}:{self.port}",
            "-starttls",
            "smtp",
            *options,
        ]
        try:
            completed = subprocess.run(
                argv, input=b"", capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            said = ((error.stdout or b"") + (error.stderr or b"")).decode(errors="replace")
            raise AssertionError(
                f"openssl s_client got no TLS session from Postfix at {self.host}:{self.port}"
                f" within {timeout:g} s (no greeting or no handshake):\n{said}\n"
                f"mail log:\n{self.maillog[-3000:]}"
            ) from None
        return (completed.stdout + completed.stderr).decode(errors="replace")

    def served_certificate(self, *options: str) -> x509.Certificate:
        """The leaf certificate `openssl s_client OPTIONS` receives."""
        output = self.s_client(*options)
        match = _PEM_CERTIFICATE.search(output.encode())
        if match is None:
            raise AssertionError(f"no certificate served:\n{output}\n{self.maillog[-3000:]}")
        return x509.load_pem_x509_certificate(match.group(0))

    def dane_verify(self, tlsa_domain: str, rrdata: str, *options: str) -> tuple[bool, str]:
        """Verify the served chain with OpenSSL's DANE code against one TLSA record."""
        output = self.s_client(
            "-dane_tlsa_domain", tlsa_domain, "-dane_tlsa_rrdata", rrdata, *options
        )
        return "Verification: OK" in output, output

    # -- internals -------------------------------------------------------------

    def _take_slot(self) -> None:
        SLOTS_DIR.mkdir(mode=0o755, exist_ok=True)
        os.chmod(SLOTS_DIR, 0o755)  # user postfix must reach the queue below
        number = 0
        while True:
            slot = SLOTS_DIR / str(number)
            slot.mkdir(mode=0o755, exist_ok=True)
            lock = open(slot / "lock", "a")  # noqa: SIM115 - held for the instance's life
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                number += 1
                continue
            self._slot, self._lock = slot, lock
            return

    def _prepare(self) -> None:
        """Clear what a previous user of the slot left and lay out the directories."""
        slot = self.root
        if (self.config_dir / "main.cf").exists():
            # A test run that was killed may have left its Postfix running.
            self._stop_master()
        _empty_slot(slot)
        os.chmod(slot, 0o755)
        for name in ("etc", "queue"):
            (slot / name).mkdir(mode=0o755)
        data = slot / "data"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postfix")
        _register_alternate_config_dir(self.config_dir)

    def _write_config(self) -> None:
        root = self.root
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(root / "queue"),
            "data_directory": str(root / "data"),
            "myhostname": self.hostname,
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": "",
            "default_transport": "error:private test instance",
            "relay_transport": "error:private test instance",
            "notify_classes": "",
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(root),
            "syslog_name": f"postfix-test-{root.name}",
            "smtpd_banner": "$myhostname ESMTP danesync test instance",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_loglevel": "1",
            # A test that breaks main.cf on purpose makes daemons started meanwhile
            # fail; do not let the master hold back that service for the default 60 s.
            "service_throttle_time": "1s",
            **self.parameters,
        }
        lines = "".join(f"{name} = {value}\n" for name, value in main.items())
        main_cf = self.config_dir / "main.cf"
        master_cf = self.config_dir / "master.cf"
        if not main_cf.exists():  # a restart keeps what the test changed
            main_cf.write_text(lines)
        master_cf.write_text(_MASTER_CF.format(listen=f"{HOST}:{self.port}"))
        # Postfix waits for a main.cf changed in the last ~2 s to "cool down";
        # ours is complete, so make it look old and start at once.
        past = time.time() - 10
        for path in (main_cf, master_cf):
            os.utime(path, (past, past))

    def _stop_master(self) -> None:
        pid = self._master_pid()
        try:
            self.postfix("stop")
        except Exception:
            # `postfix stop` refuses to run with a broken main.cf (a test may
            # break it on purpose): signal the master as postfix-script does.
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid) and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the master leads its process group
            _wait_gone(pid)

    def _master_pid(self) -> int | None:
        try:
            return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _wait_listening(self, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError(
                        f"Postfix does not listen on {self.host}:{self.port}:\n{self.maillog}"
                    ) from None
                time.sleep(0.05)


def _wait_gone(pid: int | None, timeout: float = 10) -> bool:
    """Wait until process `pid` has exited; False if it is still there."""
    if pid is None:
        return True
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _is_gone(pid):
            return True
        time.sleep(0.02)
    return False


def _is_gone(pid: int) -> bool:
    """Whether `pid` has exited: no such process, or a zombie.

    The master daemonizes, so its parent is PID 1; as a container's first
    process (the trixie lane's pytest) that never reaps, it stays a zombie.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _empty_slot(slot: Path) -> None:
    """Remove everything in a slot but its lock file."""
    for entry in slot.iterdir():
        if entry.name == "lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _register_alternate_config_dir(config_dir: Path) -> None:
    """Add `config_dir` to /etc/postfix/main.cf's alternate_config_directories once."""
    lock_path = Path(tempfile.gettempdir()) / "danesync-postfix-alternate.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other test processes edit the same list
        base = ["postconf", "-c", str(SYSTEM_CONFIG_DIR)]
        current = run_command([*base, "-h", "alternate_config_directories"]).strip()
        entries = [e for e in re.split(r"[\s,]+", current) if e]
        if str(config_dir) in entries:
            return
        entries.append(str(config_dir))
        run_command([*base, "-e", f"alternate_config_directories = {', '.join(entries)}"])


def postfix_fixture(
    name: str = "postfix", scope: Any = "module", **options: Any
) -> Callable[..., Any]:
    """A pytest fixture giving a running `PostfixInstance(**options)`.

    Assign it in a test module: ``postfix = postfix_fixture()``; with
    ``scope="function"`` every test gets a fresh instance (about 0.3 s).
    """

    @pytest.fixture(name=name, scope=scope)
    def _fixture() -> Iterator[PostfixInstance]:
        require_root()
        require_program("postfix")
        require_program("openssl")
        with PostfixInstance(**options) as instance:
            yield instance

    return _fixture
