"""Logging: structlog configured for a terminal, for JSON lines, or for journald.

Callers log an event from DESIGN.md's vocabulary with fields:
``get_logger().info("chain.deployed", lineage=..., serial=..., not_after=...)``.
Every record passes `redact_secrets` first, so no private key or TSIG secret
reaches any output even when it hides inside an exception message.

The output is chosen once by `configure_logging`; this module holds the only
global logging state.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

if TYPE_CHECKING:
    from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console", "journal"]
ConcreteFormat = Literal["json", "console", "journal"]

REDACTED = "[redacted]"
JOURNAL_SOCKET = "/run/systemd/journal/socket"

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

# syslog priorities, as journald stores them in PRIORITY=.
_PRIORITIES = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}

# A human sentence for each event of the vocabulary; the journal's MESSAGE=.
_PHRASES = {
    "daemon.started": "danesync started",
    "daemon.ready": "ready",
    "daemon.stopping": "stopping",
    "config.reloaded": "configuration reloaded",
    "config.invalid": "configuration invalid, the previous one stays in force",
    "lineage.changed": "certbot changed the lineage",
    "lineage.invalid": "lineage invalid, not deployed",
    "chain.held": "new chain held back until its TLSA records are visible and aged",
    "chain.deployed": "new chain deployed",
    "chain.rolled_back": "chain rolled back",
    "postfix.reloaded": "Postfix reloaded",
    "postfix.failed": "Postfix command failed",
    "probe.ok": "Postfix serves the expected certificate",
    "probe.failed": "Postfix does not serve the expected certificate",
    "tlsa.published": "TLSA record published",
    "tlsa.visible": "TLSA record visible on every server",
    "tlsa.retired": "TLSA record retired",
    "tlsa.missing": "TLSA record missing, add it to the zone",
    "dns.failed": "DNS operation failed",
    "rollover.waiting": "waiting for the TLSA records to age before deploying",
    "rollover.forced": "deployed at once: the served chain is expired, invalid or expires first",
    "cert.expiring": "certificate expires soon",
    "renewal.suggested": "the CA suggests renewing now",
}

# Fields that have their own journal name or none.
_JOURNAL_NAMES = {"event": "DANESYNC_EVENT"}
_NOT_JOURNALED = frozenset({"level", "timestamp"})
_JOURNAL_RESERVED = frozenset({"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "DANESYNC_EVENT"})
# Shown in the sentence's head or tail rather than as `key=value`.
_SENTENCE_SKIP = frozenset({"event", "level", "timestamp", "lineage", "reason", "exception"})
_SENTENCE_ORDER = ("serial", "not_after", "tlsa")

# Field names that carry key material or secrets whatever their value looks like.
_SECRET_NAME = re.compile(
    r"secret|password|passphrase|passwd|privkey|private|keyring"
    r"|(^|_)key$|(^|_)key_(pem|bytes|data|material)$",
    re.IGNORECASE,
)
_PRIVATE_PEM = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----\n?|\Z)",
    re.DOTALL,
)
# BIND key files: `secret "base64";`
_BIND_SECRET = re.compile(r'(secret\s+)"[^"]*"', re.IGNORECASE)


def redact_text(text: str) -> str:
    """`text` with private key PEM blocks and BIND `secret "..."` values replaced."""
    if "PRIVATE KEY" in text:
        text = _PRIVATE_PEM.sub(REDACTED, text)
    if "secret" in text.lower():
        text = _BIND_SECRET.sub(rf'\1"{REDACTED}"', text)
    return text


def _redact_value(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("ascii", "replace")
        return redact_text(text) if "PRIVATE KEY" in text or "secret" in text.lower() else value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if _SECRET_NAME.search(str(k)) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return value


def _secret_name(key: str) -> bool:
    # A few dozen field names recur in every record: the regex once per name.
    known = _SECRET_NAMES.get(key)
    if known is None:
        known = bool(_SECRET_NAME.search(key))
        if len(_SECRET_NAMES) < 1024:
            _SECRET_NAMES[key] = known
    return known


_SECRET_NAMES: dict[str, bool] = {}
# Values that can hold no key material and need no conversion: passed as they are.
_SCALARS = frozenset({int, float, bool, type(None)})


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: replace secret-named fields and private key material with "[redacted]"."""
    for key, value in list(event_dict.items()):
        if _secret_name(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(value)
    return event_dict


def _plain(value: Any) -> Any:
    if type(value) is str or type(value) in _SCALARS:
        return value  # most values of most records
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def plain_values(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: datetimes, enums, paths and sets as JSON-friendly values."""
    for key, value in event_dict.items():
        event_dict[key] = _plain(value)
    return event_dict


def order_fields(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: `timestamp`, `level`, `event` first, for a reader of the raw lines."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict}
    head.update(event_dict)
    return head


def _text(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return str(value)


def build_message(event_dict: Mapping[str, Any]) -> str:
    """A readable sentence for a record: ``lineage: what happened: reason (details)``."""
    event = str(event_dict.get("event", ""))
    head = _PHRASES.get(event, event)
    lineage = event_dict.get("lineage")
    if lineage:
        head = f"{lineage}: {head}"
    reason = event_dict.get("reason")
    if reason:
        head = f"{head}: {_text(reason)}"
    keys = [k for k in _SENTENCE_ORDER if k in event_dict]
    keys += sorted(k for k in event_dict if k not in _SENTENCE_SKIP and k not in _SENTENCE_ORDER)
    details = [f"{k}={_text(event_dict[k])}" for k in keys if event_dict[k] is not None]
    return f"{head} ({', '.join(details)})" if details else head


def journal_field_name(key: str) -> str:
    """journald wants ``[A-Z0-9_]``, not starting with ``_`` or a digit, at most 64 bytes."""
    if key in _JOURNAL_NAMES:
        return _JOURNAL_NAMES[key]
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_")
    if not name or name[0].isdigit() or name in _JOURNAL_RESERVED:
        name = f"DANESYNC_{name}"
    return name[:64]


def build_journal_fields(event_dict: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The journal fields of one record; a list value repeats its field."""
    level = str(event_dict.get("level", "info"))
    fields = [
        ("MESSAGE", build_message(event_dict)),
        ("PRIORITY", str(_PRIORITIES.get(level, 6))),
        ("SYSLOG_IDENTIFIER", "danesync"),
    ]
    for key, value in event_dict.items():
        if key in _NOT_JOURNALED or value is None:
            continue
        name = journal_field_name(key)
        plain = _plain(value)
        values = plain if isinstance(plain, list) else [plain]
        fields.extend((name, _text(v)) for v in values)
    return fields


def render_journal(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> tuple[tuple[list[tuple[str, str]]], dict[str, Any]]:
    """Final processor for `JournalLogger`."""
    return (build_journal_fields(event_dict),), {}


class JournalLogger:
    """Sends each record to journald; falls back to stderr if journald is unreachable."""

    def __init__(self, sendv: Callable[..., Any], fallback: TextIO | None = None) -> None:
        self._sendv = sendv
        self._fallback = fallback

    def msg(self, fields: list[tuple[str, str]]) -> None:
        try:
            self._sendv(*(f"{name}={value}" for name, value in fields))
        except OSError:
            # Under systemd stderr goes to the journal too, just without fields.
            message = next((v for k, v in fields if k == "MESSAGE"), "")
            print(message, file=self._fallback or sys.stderr, flush=True)

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg


def _journal_sendv() -> Callable[..., Any] | None:
    try:
        import systemd.journal
    except ImportError:
        return None
    sendv: Callable[..., Any] = systemd.journal.sendv
    return sendv


def _stat_key(stream: TextIO) -> tuple[int, int] | None:
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_dev, st.st_ino


def build_format_choice(
    journal_stream: str | None,
    stderr_key: tuple[int, int] | None,
    stderr_is_tty: bool,
    journal_available: bool,
) -> ConcreteFormat:
    """What `auto` means: journal when stderr is systemd's journal stream, else console on a TTY,
    else JSON lines. `journal_stream` is ``$JOURNAL_STREAM`` (``dev:inode``)."""
    if journal_available and journal_stream and stderr_key is not None:
        device, _, inode = journal_stream.partition(":")
        if device.isdigit() and inode.isdigit() and (int(device), int(inode)) == stderr_key:
            return "journal"
    return "console" if stderr_is_tty else "json"


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(_LEVELS)}") from None


class _StdlibBridge(logging.Handler):
    """Sends warnings of libraries (watchdog, dnspython) through the same output."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a library's bad format string must not stop the daemon
            text = str(record.msg)
        get_logger().log(record.levelno, "library.message", logger=record.name, text=text)


_bridge: _StdlibBridge | None = None


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.format_exc_info,
        redact_secrets,
        plain_values,
    ]


def configure_logging(fmt: LogFormat = "auto", level: str | int = "info") -> ConcreteFormat:
    """Configure structlog (and route stdlib warnings through it); returns the format used.

    json: one object per line on stdout with `event`, `level`, `timestamp`.
    console: aligned, coloured on a TTY, on stderr. journal: native journald
    fields (`DANESYNC_EVENT=`, `LINEAGE=`...). A `journal` request without
    systemd-python or without journald falls back to json and says so.
    """
    global _bridge  # noqa: PLW0603 - the one place logging state is kept
    min_level = _parse_level(level)
    sendv = _journal_sendv()
    chosen: ConcreteFormat
    if fmt == "auto":
        chosen = build_format_choice(
            os.environ.get("JOURNAL_STREAM"),
            _stat_key(sys.stderr),
            sys.stderr.isatty(),
            sendv is not None and os.path.exists(JOURNAL_SOCKET),
        )
    else:
        chosen = fmt
    fallback_reason = ""
    if chosen == "journal":
        if sendv is None:
            fallback_reason = "systemd-python is not installed; logging JSON to stdout"
        elif not os.path.exists(JOURNAL_SOCKET):
            # libsystemd drops records silently when journald is absent.
            fallback_reason = f"{JOURNAL_SOCKET} does not exist; logging JSON to stdout"
    if fallback_reason:
        chosen = "json"

    processors = _shared_processors()
    logger_factory: Callable[..., Any]
    if chosen == "journal" and sendv is not None:
        processors.append(render_journal)
        journal_sendv = sendv

        def logger_factory(*_args: Any) -> JournalLogger:
            return JournalLogger(journal_sendv)

    elif chosen == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    else:
        processors += [order_fields, structlog.processors.JSONRenderer(sort_keys=False)]
        logger_factory = structlog.PrintLoggerFactory(sys.stdout)

    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        context_class=dict,
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )

    root = logging.getLogger()
    if _bridge is not None:
        root.removeHandler(_bridge)
    _bridge = _StdlibBridge(level=max(min_level, logging.WARNING))
    root.addHandler(_bridge)

    if fallback_reason:
        get_logger().warning("log.journal_unavailable", reason=fallback_reason)
    return chosen


def get_logger(**initial: Any) -> FilteringBoundLogger:
    """A logger; `initial` fields go on every record it makes."""
    logger: FilteringBoundLogger = structlog.get_logger(**initial)
    return logger
