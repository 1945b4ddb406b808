"""Log output: text lines or JSON objects (`--log-format`), secrets from the environment never shown.

Messages are written as `what key=value key=value`. In JSON each line is one object with `ts` (UTC,
ISO 8601), `level`, `logger`, `msg` (the whole message) and the message's `key=value` pairs as
fields (values stay strings; a key that would overwrite one of the four is left in `msg` only), plus
`exc` with the traceback when there is one. Redaction: the value of every environment variable whose
name says it holds a secret (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ACCESS_KEY_ID, *_PASSWORD,
*_TOKEN, ...) is replaced by `***` in every formatted line, tracebacks included, whichever logger wrote it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "***"
# environment variable names whose values are secrets
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.IGNORECASE)
MIN_SECRET_LEN = 4  # shorter values are not redacted (they would blank out ordinary words and numbers)
_PAIR = re.compile(r'(?<![\w.])([A-Za-z_][\w.\-]*)=("[^"]*"|\S+)')
_HANDLER_NAME = "kairosd"
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The values to redact: those of secret-named variables in `env`, longest first."""
    values = {v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def fields_of(message: str) -> dict[str, str]:
    """The `key=value` pairs of a log message (a quoted value loses its quotes)."""
    out: dict[str, str] = {}
    for key, value in _PAIR.findall(message):
        if key not in _RESERVED and key not in out:
            out[key] = value[1:-1] if value.startswith('"') and value.endswith('"') and len(value) >= 2 else value
    return out


class TextFormatter(logging.Formatter):
    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__(TEXT_FORMAT)
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        msg = redact(record.getMessage(), self.secrets)
        obj: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": msg,
        }
        obj.update(fields_of(msg))
        if record.exc_info:
            obj["exc"] = redact(self.formatException(record.exc_info), self.secrets)
        elif record.exc_text:
            obj["exc"] = redact(record.exc_text, self.secrets)
        return json.dumps(obj, ensure_ascii=False, default=str)


def configure(level: str = "INFO", fmt: str = "text", env: Mapping[str, str] | None = None) -> None:
    """Send every log record to stderr in `fmt` ("text" or "json"), redacting the secrets of `env`
    (default os.environ, read now: the daemon's environment does not change while it runs)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}; allowed: {list(FORMATS)}")
    secrets = secret_values(os.environ if env is None else env)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER_NAME:  # configured before (e.g. main() called twice in one process)
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
