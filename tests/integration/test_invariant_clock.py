"""Issue 10, finding 9: a wall-clock step must not shorten a rollover wait.

`unshare --time` can offset only CLOCK_MONOTONIC and CLOCK_BOOTTIME, never
CLOCK_REALTIME, and stepping the machine's own clock would disturb every
other test on it. libfaketime (Debian's `faketime` 0.9.10) can step the wall
clock from a file, but with FAKETIME_DONT_FAKE_MONOTONIC=1 Python's
time.sleep fails with EINVAL, and without it the monotonic clock jumps too,
which no real clock step does. So the test builds a ten-line LD_PRELOAD shim
(gcc): CLOCK_REALTIME, gettimeofday and time() of the danesync process tree
are shifted by the number of seconds in a file; the monotonic clock and all
sleeps are untouched, exactly as when NTP or an operator steps the clock.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from danesync.tlsa import spki_sha256
from tests.conftest import require_program
from tests.harness.bind import BindServer, bind_fixture
from tests.harness.certs import Hierarchy
from tests.harness.invariant_host import MX, NAME, Host
from tests.harness.lineage import make_lineage, renew
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.slow]

postfix = postfix_fixture()
bind = bind_fixture(scope="function")

WAIT = 20  # rollover_wait of the rollover under test
# The wall clock jumps forward by more than the wait, less than TSIG's 300 s fudge
# (BIND rejects updates signed by a clock more than 5 minutes off: BADTIME).
STEP = 120

_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

/* Seconds to add to the wall clock: the number in $CLOCKSTEP_FILE (0 if none). */
static long step(void) {
    const char *path = getenv("CLOCKSTEP_FILE");
    long value = 0;
    FILE *file = path ? fopen(path, "r") : NULL;
    if (file) {
        if (fscanf(file, "%ld", &value) != 1) value = 0;
        fclose(file);
    }
    return value;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int result = real(id, ts);
    if (result == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += step();
    return result;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
    if (tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


@pytest.fixture(scope="module")
def clockstep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shim, built once per module."""
    require_program("gcc")
    directory = tmp_path_factory.mktemp("clockstep")
    source = directory / "clockstep.c"
    source.write_text(_SHIM)
    library = directory / "clockstep.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        check=True,
        capture_output=True,
    )
    return library


def test_the_shim_steps_only_the_wall_clock(clockstep: Path, tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    offset.write_text(f"{STEP}\n")
    code = (
        "import time, datetime; t, m = time.time(), time.monotonic(); time.sleep(0.1);"
        "print(t, datetime.datetime.now().timestamp(), time.monotonic() - m)"
    )
    env = {"LD_PRELOAD": str(clockstep), "CLOCKSTEP_FILE": str(offset), "PATH": "/usr/bin:/bin"}
    now = time.time()
    out = subprocess.run(
        ["/usr/bin/python3", "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert abs(float(out[0]) - now - STEP) < 5, (out, now)  # the wall clock is ahead
    assert abs(float(out[1]) - now - STEP) < 5, (out, now)
    assert 0.09 < float(out[2]) < 5, out  # the monotonic clock is not


def test_a_clock_step_forward_does_not_shorten_the_wait(
    tmp_path: Path, postfix: PostfixInstance, bind: BindServer, clockstep: Path
) -> None:
    old = Hierarchy(f"Before {uuid.uuid4().hex[:8]}")
    new = Hierarchy(f"After {uuid.uuid4().hex[:8]}")
    host = Host(tmp_path, postfix, bind, ttl=2, rollover_wait=2)
    first = old.issue([MX])
    make_lineage(host.letsencrypt, MX, first)
    host.sync_until("chain.deployed")

    host.dns["rollover_wait"] = WAIT
    host.write()
    renewed = new.issue([MX])
    renew(host.letsencrypt, MX, renewed)
    offset = tmp_path / "clock-offset"
    offset.write_text("0\n")
    daemon = host.start(env={"LD_PRELOAD": str(clockstep), "CLOCKSTEP_FILE": str(offset)})
    try:
        daemon.wait_for("rollover.waiting")
        assert f"2 1 1 {spki_sha256(new.intermediate)}" in bind.dig_tlsa(NAME)
        waiting_since = time.monotonic()
        offset.write_text(f"{STEP}\n")  # the wall clock steps forward
        time.sleep(0.5)
        daemon.process.send_signal(signal.SIGUSR1)  # a full pass now
        time.sleep(6)
        served = postfix.served_certificate().serial_number
        assert time.monotonic() - waiting_since < WAIT, "the machine was too slow to tell"
        assert served == first.cert.serial_number, (
            "the new chain was deployed when the clock stepped, "
            f"{time.monotonic() - waiting_since:.0f} s into a {WAIT} s wait\n"
            + daemon.text()[-3000:]
        )
        # The rollover still completes.
        daemon.wait_until(
            lambda: postfix.served_certificate().serial_number == renewed.cert.serial_number,
            "the new chain served",
            timeout=90,
        )
        assert time.monotonic() - waiting_since >= WAIT - 1
        assert daemon.alive
        # Neither chain expires for months: nothing here is an emergency, before
        # or after the step (a step must not make a rollover look forced).
        forced = daemon.events("rollover.forced")
        assert not forced, f"a false rollover.forced: {forced}"
    finally:
        host.close()
