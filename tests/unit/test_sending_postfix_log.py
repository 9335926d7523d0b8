"""How tests/harness/sending_postfix.py reads a sending Postfix's mail log.

The lines are Postfix 3.7's (Debian 12) and 3.10's (Debian 13) as logged at
``smtp_tls_loglevel = 2``, shortened; two smtp processes interleave.
"""

from __future__ import annotations

from tests.harness.sending_postfix import read_attempts

P = "Nov 28 16:22:59 sender postfix-test-1/smtp"
LOG = f"""\
{P}[11]: DNSSEC-signed TLSA record: _25._tcp.mx.example.test: 2 1 1 7E31
{P}[11]: mx.example.test[127.53.10.2]:25: Matched DANE TA certificate at depth 1: 2 1 1 7E31
{P}[12]: setting up TLS connection to mx.example.test[127.53.10.2]:25
{P}[11]: mx.example.test[127.53.10.2]:25: subject_CN=mx.example.test, issuer_CN=Old 1 Intermediate, fingerprint=FE:73, pkey_fingerprint=70:8C
{P}[11]: Verified TLS connection established to mx.example.test[127.53.10.2]:25: TLSv1.3 with cipher X
{P}[12]: CA certificate verification failed for mx.example.test[127.53.10.2]:25: num=65:no matching DANE TLSA records
{P}[12]: mx.example.test[127.53.10.2]:25: subject_CN=mx.example.test, issuer=New 2 Intermediate, cert fingerprint=4F:1A, pkey fingerprint=FA:15
{P}[12]: Untrusted TLS connection established to mx.example.test[127.53.10.2]:25: TLSv1.3 with cipher X
{P}[11]: 1CCC0242ABD: to=<sink@example.test>, relay=mx.example.test[127.53.10.2]:25, delay=0.16, delays=0.01/0.03/0.09/0.02, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 3F7C2236A27)
{P}[12]: 7D302242ABD: to=<sink@example.test>, relay=mx.example.test[127.53.10.2]:25, delay=0.11, delays=0/0/0.11/0, dsn=4.7.5, status=deferred (Server certificate not verified)
Nov 28 16:23:01 sender postfix-test-1/qmgr[9]: 7D302242ABD: from=<probe@sender.test>, size=374, nrcpt=1 (queue active)
{P}[11]: Verified TLS connection established to mx.example.test[127.53.10.2]:25: TLSv1.3 with cipher X
{P}[11]: 7D302242ABD: to=<sink@example.test>, relay=mx.example.test[127.53.10.2]:25, delay=2.3, delays=2.2/0/0.1/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 44)
"""  # noqa: E501


def test_each_attempt_gets_the_tls_lines_of_its_own_smtp_process() -> None:
    attempts = read_attempts(LOG)
    assert list(attempts) == ["1CCC0242ABD", "7D302242ABD"]
    (sent,) = attempts["1CCC0242ABD"]
    assert sent.verified and sent.issuer == "Old 1 Intermediate"
    assert sent.status == "sent" and sent.dsn == "2.0.0"
    deferred, retried = attempts["7D302242ABD"]
    assert not deferred.verified and deferred.status == "deferred"
    assert deferred.dsn == "4.7.5" and deferred.reason == "Server certificate not verified"
    assert deferred.tls.startswith("Untrusted TLS connection established")
    assert deferred.issuer == "New 2 Intermediate"  # Postfix 3.10's wording
    assert any("no matching DANE TLSA records" in note for note in deferred.notes)
    assert retried.verified and retried.issuer == ""  # no certificate line logged for it
