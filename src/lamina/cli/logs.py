"""Log lines of the long-running commands (``lamina server``, ``lamina agent run``) on stderr.

Formats (``--log-format``, or ``log_format`` in the settings):

- ``journal``: ``<6>lamina.agent: cycle done ...``: the ``<N>`` syslog priority that
  journald reads from a service's stderr, no timestamp (the journal adds its own);
- ``text``: ``2026-01-02T03:04:05Z INFO lamina.agent: cycle done ...``;
- ``json``: one object a line: ``{"time", "level", "logger", "message", ...extra}``;
- ``auto`` (the default): ``journal`` when systemd started us (``JOURNAL_STREAM`` is
  set), ``text`` otherwise.

``--verbose`` logs debug lines too, ``--quiet`` only warnings and errors. The options
themselves are declared in ``common.py`` (``log_options``): this module loads no Typer,
so the quick entry's ``agent run`` (``quick.py``) sets up the same log lines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

FORMATS = ("auto", "text", "journal", "json")


@dataclass(frozen=True)
class LogFlags:
    """``--log-format``, ``--verbose`` and ``--quiet`` as given (the format may also come
    from the command's settings file or environment)."""

    log_format: str | None
    verbose: bool
    quiet: bool


#: syslog priorities (sd-daemon(3)) of Python's levels.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
#: What a LogRecord carries that is not a field the caller added with ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # Every line of a multi-line message keeps the priority.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"{when} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **extra_fields(record),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def resolve_format(fmt: str) -> str:
    if fmt not in FORMATS:
        from lamina.errors import UsageError

        raise UsageError(f"unknown log format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "auto":
        return "journal" if os.environ.get("JOURNAL_STREAM") else "text"
    return fmt


def setup_logging(fmt: str, level: str, verbose: bool = False, quiet: bool = False) -> None:
    """Send every logger's lines (uvicorn's too) to stderr in ``fmt`` at ``level``."""
    chosen = resolve_format(fmt)
    formatter: logging.Formatter = {
        "journal": JournalFormatter(),
        "text": TextFormatter(),
        "json": JsonFormatter(),
    }[chosen]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    if verbose:
        root.setLevel(logging.DEBUG)
    elif quiet:
        root.setLevel(logging.WARNING)
    else:
        root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Third-party chatter stays at warnings unless --verbose.
    for noisy in ("httpx", "httpcore", "botocore", "boto3", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # One line per request only with --verbose: /metrics counts them otherwise.
    logging.getLogger("uvicorn.access").setLevel(logging.DEBUG if verbose else logging.WARNING)
