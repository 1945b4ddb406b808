"""Which requests the lean HTTP paths take (`kairosd.server.http_head.parse_head`), and the body taken off the buffer."""

from __future__ import annotations

import pytest

from kairosd.server.http_head import InferHead, parse_head

PLAIN = b"POST /v2/models/dlrm/infer HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n"


def head_of(buf: bytes, max_body: int = 100) -> InferHead | bool | None:
    return parse_head(bytearray(buf), max_body)


def test_plain_infer_call_is_parsed_and_its_body_taken() -> None:
    buf = bytearray(PLAIN + b"Inference-Header-Content-Length: 3\r\n\r\nabcdeNEXT")
    head = parse_head(buf, 100)
    assert isinstance(head, InferHead)
    assert (head.model, head.version, head.length) == ("dlrm", "", 5)
    assert head.headers["inference-header-content-length"] == "3"
    assert head.complete(buf)
    assert head.take_body(buf) == b"abcde" and buf == bytearray(b"NEXT")
    versioned = head_of(b"POST /v2/models/m/versions/2/infer HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(versioned, InferHead) and (versioned.model, versioned.version) == ("m", "2")


def test_incomplete_head_and_body() -> None:
    assert head_of(PLAIN) is None  # no blank line yet
    buf = bytearray(PLAIN + b"\r\nab")
    head = parse_head(buf, 100)
    assert isinstance(head, InferHead) and not head.complete(buf)
    assert head_of(b"x" * 70_000) is False  # no end of head within the limit: the full path answers it


@pytest.mark.parametrize("request_head", [
    b"GET /v2/models/dlrm/infer HTTP/1.1\r\nContent-Length: 5\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.0\r\nContent-Length: 5\r\n",
    b"POST /v2/models/dlrm/ready HTTP/1.1\r\nContent-Length: 5\r\n",
    b"POST /v2/models/dlrm/infer?x=1 HTTP/1.1\r\nContent-Length: 5\r\n",
    b"POST /v2/models/dl%72m/infer HTTP/1.1\r\nContent-Length: 5\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.1\r\nContent-Length: 5\r\nContent-Encoding: gzip\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.1\r\nContent-Length: 5\r\nAccept-Encoding: gzip\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.1\r\nContent-Length: +5\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.1\r\nContent-Length: 101\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.1\r\nContent-Length: 5\r\n Folded: x\r\n",
    b"POST /v2/models/dlrm/infer HTTP/1.1\r\nContent-Length: 5\r\nNoColon\r\n",
], ids=["get", "http1.0", "not-infer", "query", "escape", "chunked", "coded-body", "expect", "close",
        "compressed-answer", "repeated", "signed-length", "over-limit", "folded", "no-colon"])
def test_other_requests_take_the_full_path(request_head: bytes) -> None:
    assert head_of(request_head + b"\r\nabcde") is False


def test_head_over_the_header_limit_takes_the_full_path() -> None:
    big = PLAIN + b"X-Big: " + b"a" * 200 + b"\r\n\r\nabcde"
    assert isinstance(parse_head(bytearray(big), 100, 1000), InferHead)
    assert parse_head(bytearray(big), 100, 100) is False

