"""Pure pieces of access control and limits: token files, the bearer check, Retry-After, the effective
gRPC deadline, and which access keys a reload applies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tritonclient.grpc import service_pb2 as pb

from kairosd import config
from kairosd.config import Config
from kairosd.errors import ConfigError, InvalidInput, Unauthenticated
from kairosd.reload import plan_reload
from kairosd.server.access import Authenticator, TokenCheck, bearer_token, parse_tokens
from kairosd.server.grpc_frontend import GrpcLimits, client_timeout_s
from kairosd.server.http_frontend import retry_after

REPO = Path(__file__).resolve().parents[2]


def test_token_file_lines() -> None:
    text = "# team A\n\n  tok-aaaaaaaaaaaaaaaa  \n#tok-commented\ntok-bbbbbbbbbbbbbbbb\ntok-aaaaaaaaaaaaaaaa\n"
    assert parse_tokens(text) == ("tok-aaaaaaaaaaaaaaaa", "tok-bbbbbbbbbbbbbbbb")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n"])
def test_empty_token_file_is_an_error(text: str) -> None:
    with pytest.raises(ConfigError, match="holds no token"):
        parse_tokens(text, "server.token_file = '/etc/kairosd/tokens'")


def test_a_line_that_is_not_a_token_names_the_line_not_the_token() -> None:
    with pytest.raises(ConfigError) as err:
        parse_tokens("good-token-1234567890\nsecret with spaces\n")
    assert "line 2" in str(err.value) and "secret" not in str(err.value)


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == b"abc"
    assert bearer_token("bearer   abc  ") == b"abc"
    assert bearer_token(b"BEARER abc") == b"abc"
    for value in (None, "", "abc", "Basic abc", "Bearer", "Bearer   "):
        assert bearer_token(value) is None


def test_token_check_compares_every_token() -> None:
    check = TokenCheck(["short", "a-much-longer-token-value", "x" * 200])
    assert check.matches(b"short") and check.matches(b"a-much-longer-token-value") and check.matches(b"x" * 200)
    for wrong in (b"", b"shor", b"shortt", b"x" * 199, b"SHORT"):
        assert not check.matches(wrong)
    with pytest.raises(ValueError):
        TokenCheck([])


def test_authenticator_health_and_refusal_counts() -> None:
    auth = Authenticator(["tok-aaaaaaaaaaaaaaaa"])
    auth.check(None, health=True, protocol="http")  # health open by default
    auth.check("Bearer tok-aaaaaaaaaaaaaaaa", health=False, protocol="grpc")
    with pytest.raises(Unauthenticated, match="needs a bearer token"):
        auth.check(None, health=False, protocol="grpc")
    with pytest.raises(Unauthenticated, match="not valid") as err:
        auth.check("Bearer guess-123", health=False, protocol="http")
    assert "guess-123" not in str(err.value)
    assert auth.refused_total == {"grpc": 1, "http": 1}
    auth.replace(["tok-bbbbbbbbbbbbbbbb"], auth_health=True)
    with pytest.raises(Unauthenticated):
        auth.check(None, health=True, protocol="http")
    with pytest.raises(Unauthenticated):
        auth.check("Bearer tok-aaaaaaaaaaaaaaaa", health=False, protocol="http")
    auth.check("Bearer tok-bbbbbbbbbbbbbbbb", health=True, protocol="http")


@pytest.mark.parametrize("seconds, header", [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2), (2.1, 3), (float("inf"), 1)])
def test_retry_after_is_whole_seconds_at_least_one(seconds: float, header: int) -> None:
    assert retry_after(seconds) == header


def _request(**param: object) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="dlrm")
    for kind, value in param.items():
        setattr(r.parameters["timeout"], kind, value)
    return r


@pytest.mark.parametrize("request_, remaining, expected", [
    (_request(), None, None),
    (_request(), 2.0, 2.0),
    (_request(int64_param=500_000), None, 0.5),
    (_request(int64_param=500_000), 2.0, 0.5),
    (_request(int64_param=5_000_000), 2.0, 2.0),
    (_request(uint64_param=250_000), None, 0.25),
    (_request(int64_param=0), 2.0, 2.0),  # 0: no timeout, as Triton reads it
])
def test_grpc_client_deadline_is_the_smaller(request_: pb.ModelInferRequest, remaining: float | None,
                                             expected: float | None) -> None:
    assert client_timeout_s(request_, remaining) == expected


@pytest.mark.parametrize("request_", [_request(int64_param=-1), _request(string_param="1s"), _request(double_param=1.0)])
def test_a_bad_timeout_parameter_is_invalid_input(request_: pb.ModelInferRequest) -> None:
    with pytest.raises(InvalidInput, match="timeout"):
        client_timeout_s(request_, None)


def test_grpc_limit_options() -> None:
    options = dict(GrpcLimits(max_connections=10, max_concurrent_streams=4, max_header_bytes=2048,
                              header_timeout_s=0.5, idle_timeout_s=75.0).options())
    assert options == {"grpc.max_allowed_incoming_connections": 10, "grpc.max_concurrent_streams": 4,
                       "grpc.max_metadata_size": 2048, "grpc.absolute_max_metadata_size": 2048,
                       "grpc.server_handshake_timeout_ms": 500, "grpc.max_connection_idle_ms": 75000}


def _config(**server: object) -> Config:
    c = config.load(REPO / "configs" / "local.toml")
    return replace(c, server=replace(c.server, **server))


def test_reload_moves_tokens_between_files_but_never_turns_authentication_on_or_off() -> None:
    plan = plan_reload(_config(token_file="/etc/kairosd/a"), _config(token_file="/etc/kairosd/b", auth_health=True))
    assert plan.applies and plan.changed_keys == ["server.auth_health", "server.token_file"]
    for old, new in (("", "/etc/kairosd/a"), ("/etc/kairosd/a", "")):
        plan = plan_reload(_config(token_file=old), _config(token_file=new))
        assert not plan.applies and plan.refused_keys == ["server.token_file"]
    for key, value in (("tls_cert", "/x.pem"), ("max_connections", 10), ("metrics_host", "0.0.0.0"),
                       ("header_timeout_s", 1.0)):
        assert plan_reload(_config(), _config(**{key: value})).refused_keys == [f"server.{key}"]
