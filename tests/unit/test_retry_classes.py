"""Which backend failures are retried on another instance: server errors and transport failures are,
model errors are not (kairosd.backends.client.RETRYABLE, InstanceHttpError)."""

from __future__ import annotations

import grpc
import pytest

from kairosd.backends.client import RETRYABLE
from kairosd.backends.http_client import HttpReply, InstanceHttpError


@pytest.mark.parametrize("code", ["UNAVAILABLE", "CANCELLED", "ABORTED", "INTERNAL", "UNKNOWN"])
def test_transport_and_server_errors_are_retried(code: str) -> None:
    assert getattr(grpc.StatusCode, code) in RETRYABLE


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED", "RESOURCE_EXHAUSTED",
                                  "DEADLINE_EXCEEDED", "FAILED_PRECONDITION"])
def test_model_and_client_errors_are_returned(code: str) -> None:
    assert getattr(grpc.StatusCode, code) not in RETRYABLE


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (502, True), (503, True), (504, True), (501, False),
                                                   (400, False), (404, False), (413, False)])
def test_http_reply_status_decides_retry(status: int, retryable: bool) -> None:
    e = InstanceHttpError(HttpReply(status, b'{"error":"x"}', {}), "127.0.0.1:1")
    assert e.retryable is retryable and e.http_status == status
