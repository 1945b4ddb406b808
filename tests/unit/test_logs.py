"""Log output: JSON lines with the message's key=value fields; secrets from the environment never shown."""

from __future__ import annotations

import json
import logging

from kairosd.logs import JsonFormatter, TextFormatter, fields_of, secret_values

ENV = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
       "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLETOKEN", "AWS_DEFAULT_REGION": "us-east-1", "PATH": "/usr/bin"}


def record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("kairosd.fleet", logging.INFO, __file__, 1, msg, args, exc_info)


def test_secret_values_are_those_of_secret_named_variables() -> None:
    assert set(secret_values(ENV)) == {ENV["AWS_SECRET_ACCESS_KEY"], ENV["AWS_ACCESS_KEY_ID"], ENV["AWS_SESSION_TOKEN"]}


def test_json_line_has_ts_level_logger_msg_and_fields() -> None:
    line = JsonFormatter([]).format(record("launch type=%s count=%d reason=%s", "ort-1t", 2, "below target"))
    obj = json.loads(line)
    assert obj["level"] == "INFO" and obj["logger"] == "kairosd.fleet" and obj["ts"].endswith("+00:00")
    assert obj["msg"] == "launch type=ort-1t count=2 reason=below target"
    assert obj["type"] == "ort-1t" and obj["count"] == "2" and obj["reason"] == "below"


def test_fields_do_not_overwrite_the_line_keys() -> None:
    assert fields_of('msg=x level=y a="b c" d=1') == {"a": "b c", "d": "1"}


def test_secrets_are_redacted_in_text_json_and_tracebacks() -> None:
    secrets = secret_values(ENV)
    secret = ENV["AWS_SECRET_ACCESS_KEY"]
    try:
        raise RuntimeError(f"auth failed with {secret}")
    except RuntimeError as exc:
        rec = record("credentials key=%s id=%s", secret, ENV["AWS_ACCESS_KEY_ID"], exc=exc)
    for out in (TextFormatter(secrets).format(rec), JsonFormatter(secrets).format(rec)):
        assert secret not in out and ENV["AWS_ACCESS_KEY_ID"] not in out and "***" in out
        assert "auth failed with ***" in out
