"""Renewal to served, DNS off: how long after certbot's last link update does
Postfix hand the new leaf to a new STARTTLS client?

danesync: `danesync run` (default settle 0.25 s) watches live/, validates,
writes its chain file, reloads Postfix and probes.
Baseline: Postfix reads certbot's live/ files directly and a certbot-style
deploy hook runs `postfix reload` as soon as the links have changed.

Both are timed the same way: from the moment the last link of the renewal is
in place (the harness's `renew` returns; it replays certbot's exact link
sequence) to the first STARTTLS handshake that gets the new leaf, polled every
5 ms by four clients side by side, started at that moment. The real-certbot
part times from the mtime of live/<name>/ (certbot's last link change) with
`certbot renew` against Pebble, and the baseline there is certbot's own
`--deploy-hook 'postfix reload'`.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness.certs import Hierarchy
from tests.harness.danesync import write_config
from tests.harness.lineage import make_lineage, renew
from tests.harness.pebble import Certbot, PebbleCA
from tests.harness.postfix import PostfixInstance

from bench.common import (
    DEFAULT_HOSTNAME,
    Daemon,
    Result,
    Row,
    Stopwatch,
    der,
    issue,
    make_host,
    progress,
    seconds,
    served_der,
    summarize,
    wait_served,
    wait_served_change,
)

MX = DEFAULT_HOSTNAME
COOL_DOWN = 2.5  # Postfix commands wait while main.cf is younger than ~2 s


def _hook(postfix: PostfixInstance) -> str:
    return f"postfix -c {postfix.config_dir} reload"


def _run_hook(postfix: PostfixInstance) -> None:
    import subprocess

    # certbot runs deploy hooks through the shell.
    subprocess.run(_hook(postfix), shell=True, check=True, capture_output=True)


def _chain_files(letsencrypt: Path) -> str:
    live = letsencrypt / "live" / MX
    return f"{live}/privkey.pem, {live}/fullchain.pem"


def run(workdir: Path, renewals: int, certbot_renewals: int) -> Result:
    ca = Hierarchy("Bench Latency")
    baseline_letsencrypt = workdir / "baseline" / "letsencrypt"
    make_lineage(baseline_letsencrypt, MX, issue(ca, MX))
    danesync_times: list[float] = []
    baseline_times: list[float] = []
    danesync_reloaded: list[float] = []  # last link to `postfix reload` done
    baseline_reloaded: list[float] = []
    certbot_danesync: list[float] = []
    certbot_baseline: list[float] = []
    with (
        PostfixInstance() as postfix,
        PostfixInstance(
            parameters={"smtpd_tls_chain_files": _chain_files(baseline_letsencrypt)}
        ) as baseline_postfix,
    ):
        host = make_host(workdir / "danesync", postfix, ca, 0)
        daemon = Daemon(host.config, workdir)
        daemon.start()
        try:
            daemon.wait_ready()
            daemon.wait_count("chain.deployed", 1)
            time.sleep(COOL_DOWN)
            progress(f"latency: {renewals} renewals each, danesync and deploy hook, alternating")
            for index in range(renewals):
                deployed = daemon.count("chain.deployed")
                leaf = issue(ca, MX)
                renew(host.letsencrypt, MX, leaf)
                started, wall = time.monotonic(), time.time()
                danesync_times.append(wait_served(postfix, der(leaf)) - started)
                daemon.wait_count("chain.deployed", deployed + 1)
                danesync_reloaded.append(_last_reload(daemon) - wall)

                leaf = issue(ca, MX)
                renew(baseline_letsencrypt, MX, leaf)
                started = time.monotonic()
                stopwatch = Stopwatch(baseline_postfix, der(leaf))  # polls as for danesync
                _run_hook(baseline_postfix)
                baseline_reloaded.append(time.monotonic() - started)
                baseline_times.append(stopwatch.seen() - started)
                time.sleep(0.3)  # let both go quiet before the next round
                progress(
                    f"  {index + 1}/{renewals}: danesync {seconds(danesync_times[-1])},"
                    f" hook {seconds(baseline_times[-1])}"
                )
            errors = daemon.errors()
            if errors:
                raise RuntimeError(f"danesync logged errors: {errors}")
        finally:
            daemon.stop()
        if certbot_renewals:
            certbot_danesync, certbot_baseline = _real_certbot(
                workdir, postfix, baseline_postfix, certbot_renewals
            )

    ours, theirs = summarize(danesync_times), summarize(baseline_times)
    reloaded, hooked = summarize(danesync_reloaded), summarize(baseline_reloaded)
    result = Result(
        name="latency",
        title="Renewal to served (DNS off)",
        setup=(
            f"{renewals} renewals of one lineage (EC P-256), certbot's exact link sequence;"
            " `danesync run` (default settings: settle 0.25 s as the fallback) and the STARTTLS"
            " probe;"
            " the new leaf detected by four STARTTLS clients side by side, each polling every 5 ms"
        ),
        baseline=(
            "Postfix reads certbot's live/ files; a deploy hook runs `postfix reload`"
            " right after the links change"
        ),
    )
    result.rows += [
        Row(
            "median",
            seconds(ours["median"]),
            seconds(theirs["median"]),
            f"<= 2 x the hook's reload-done median ({seconds(2 * hooked['median'])})",
            ours["median"] <= 2 * hooked["median"],
        ),
        Row("p95", seconds(ours["p95"]), seconds(theirs["p95"])),
        Row(
            "last link to `postfix reload` done, median (p95)",
            f"{seconds(reloaded['median'])} ({seconds(reloaded['p95'])})",
            f"{seconds(hooked['median'])} ({seconds(hooked['p95'])})",
        ),
        Row(
            "min / max",
            f"{seconds(ours['min'])} / {seconds(ours['max'])}",
            f"{seconds(theirs['min'])} / {seconds(theirs['max'])}",
        ),
    ]
    data: dict[str, Any] = {
        "danesync": {"summary": ours, "samples": danesync_times},
        "baseline": {"summary": theirs, "samples": baseline_times},
        "danesync_reloaded": {"summary": reloaded, "samples": danesync_reloaded},
        "baseline_reloaded": {"summary": hooked, "samples": baseline_reloaded},
    }
    if certbot_danesync:
        ours_c, theirs_c = summarize(certbot_danesync), summarize(certbot_baseline)
        result.rows.append(
            Row(
                f"real `certbot renew` (n={len(certbot_danesync)}), median",
                seconds(ours_c["median"]),
                seconds(theirs_c["median"]),
            )
        )
        result.rows.append(
            Row(
                "real `certbot renew`, max",
                seconds(ours_c["max"]),
                seconds(theirs_c["max"]),
            )
        )
        data["certbot"] = {
            "danesync": {"summary": ours_c, "samples": certbot_danesync},
            "baseline": {"summary": theirs_c, "samples": certbot_baseline},
        }
        result.notes.append(
            "Real renewals: `certbot renew --force-renewal` against Pebble, timed from the"
            " mtime of live/<name>/ (certbot's last link change) to the first client"
            " that got the new leaf; the baseline is certbot's own"
            " `--deploy-hook 'postfix -c DIR reload'`, which certbot runs after it has"
            " finished the lineage."
        )
    result.notes.append(
        "danesync reads the lineage as soon as certbot is done with it (its four links name"
        " one archive version and no previous_* link remains); the settle time (0.25 s) is"
        " only the fallback for other writers. Then validation, the chain file (fsync),"
        " `postconf`, `postfix reload` for a default chain (none for an SNI chain), the probe."
    )
    result.notes.append(
        "The baseline's first client gets the new leaf almost at once, often before the hook's"
        " reload: Postfix starts smtpd processes on demand and each new one reads certbot's"
        " live/ files as they are at that moment. That is also how a plain deploy hook can"
        " serve a half-updated lineage; danesync serves only a complete, validated copy."
    )
    result.notes.append(
        "Time is counted to when the first client that got the new leaf connected: a STARTTLS"
        " that starts just as Postfix reloads can stall for about a second (measured with a"
        " plain `postfix reload` too), which says nothing about when the new leaf is served."
    )
    result.data = data
    return result


def _last_reload(daemon: Daemon) -> float:
    """Wall-clock time of danesync's last `postfix.reloaded` (logged once reload returned)."""
    stamps = [e["timestamp"] for e in daemon.events() if e.get("event") == "postfix.reloaded"]
    return dt.datetime.fromisoformat(stamps[-1].replace("Z", "+00:00")).timestamp()


def _real_certbot(
    workdir: Path, postfix: PostfixInstance, baseline_postfix: PostfixInstance, renewals: int
) -> tuple[list[float], list[float]]:
    """Real `certbot renew` runs: danesync vs certbot's own --deploy-hook."""
    progress(f"latency: {renewals} real certbot renewals each (Pebble)")
    ours: list[float] = []
    theirs: list[float] = []
    with PebbleCA(workdir / "pebble") as pebble:
        certbot = Certbot(workdir / "certbot-danesync", pebble)
        certbot.certonly(MX)
        hooked = Certbot(workdir / "certbot-hook", pebble)
        hooked.certonly(MX)
        config = write_config(
            workdir / "certbot-danesync.toml",
            {
                "certbot": {"config_dir": certbot.config_dir},
                "postfix": {
                    "config_dir": postfix.config_dir,
                    "deploy_dir": workdir / "certbot-deploy",
                    "probe": f"{postfix.host}:{postfix.port}",
                },
                "dns": {"mode": "off"},
                "state": {"dir": workdir / "certbot-state"},
            },
            [{"lineage": MX}],
        )
        baseline_postfix.set_parameters({"smtpd_tls_chain_files": _chain_files(hooked.config_dir)})
        baseline_postfix.reload()
        daemon = Daemon(
            config,
            workdir,
            name="danesync-certbot",
            env={"REQUESTS_CA_BUNDLE": str(pebble.ca_bundle)},
        )
        daemon.start()
        try:
            daemon.wait_ready()
            daemon.wait_count("chain.deployed", 1)
            time.sleep(COOL_DOWN)
            for index in range(renewals):
                ours.append(_time_certbot(certbot, postfix, []))
                daemon.wait_count("chain.deployed", index + 2)
                hook = ["--deploy-hook", _hook(baseline_postfix)]
                theirs.append(_time_certbot(hooked, baseline_postfix, hook))
                progress(
                    f"  certbot {index + 1}/{renewals}: danesync {seconds(ours[-1])},"
                    f" hook {seconds(theirs[-1])}"
                )
        finally:
            daemon.stop()
    return ours, theirs


def _time_certbot(certbot: Certbot, postfix: PostfixInstance, extra: list[str]) -> float:
    """Renew with real certbot while polling what Postfix serves; link change to served."""
    old = served_der(postfix)
    failure: list[BaseException] = []

    def renew_now() -> None:
        try:
            certbot.renew(MX, extra=extra)
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=renew_now)
    thread.start()
    try:
        seen, served = wait_served_change(postfix, old)
    finally:
        thread.join()
    if failure:
        raise failure[0]
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    new = x509.load_pem_x509_certificate(certbot.read(MX, "cert"))
    if served != new.public_bytes(serialization.Encoding.DER):
        raise RuntimeError("Postfix served a leaf that is not certbot's new one")
    return seen - certbot.lineage_updated_at(MX)
