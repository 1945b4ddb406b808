"""Access control for the client ports: TLS / mutual TLS material, bearer tokens, and the per-request check.

Core rule. A request is let through when authentication is off (`server.token_file = ""`), when it
asks a health endpoint and `server.auth_health` is false, or when its `Bearer` token equals one of
the tokens in the token file. The comparison is constant-time in the presented token and across
the tokens: the SHA-256 digest of what the client sent is compared (`hmac.compare_digest`, equal
lengths) with the digest of every token, every time, and the results are OR-ed, so neither a
token's length nor which token matched shows in the time taken. Tokens never appear in a message,
a log line or a metric: errors say what to send and where the tokens live, never what was sent.

The files (PEM certificate chain, key, client CA bundle, token file) are read and checked here,
once at start, at reload (the token file) and in `kairosd check-config`; every failure is a
`ConfigError` naming the key and the path. Relative paths are resolved as `config.load` resolves
the model repository: against the config file's directory, or the repository root when that
directory is `configs/`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from kairosd.config import Config, ServerConfig
from kairosd.errors import ConfigError, Unauthenticated

log = logging.getLogger(__name__)

# tokens shorter than this are accepted with a warning (an operator trying things out), never refused
MIN_TOKEN_CHARS = 16
# what a client is told to send; names the key, never a token
_SEND = "send the header `authorization: Bearer <token>` with a token from kairosd's server.token_file"
MISSING_TOKEN = f"this endpoint needs a bearer token: {_SEND}"
WRONG_TOKEN = f"the bearer token is not valid: {_SEND} (ask the operator for a current one)"
WWW_AUTHENTICATE = 'Bearer realm="kairosd"'
# gRPC methods (and HTTP handlers, in http_frontend) that are open unless server.auth_health is true
HEALTH_METHODS: frozenset[str] = frozenset(
    f"/inference.GRPCInferenceService/{m}" for m in ("ServerLive", "ServerReady", "ModelReady")
)


def config_base_dir(config: Config) -> Path:
    """Where relative paths in the config are resolved: as `kairosd.config.load` resolves [models] paths."""
    if config.path is None:
        return Path.cwd()
    base = Path(config.path).resolve().parent
    return base.parent if base.name == "configs" else base


def resolve_path(config: Config, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else config_base_dir(config) / path


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"server.{key} = {str(path)!r}: no such file; give the path of a readable file") from None
    except IsADirectoryError:
        raise ConfigError(f"server.{key} = {str(path)!r}: is a directory; give the path of a file") from None
    except OSError as exc:
        raise ConfigError(f"server.{key} = {str(path)!r}: cannot be read ({exc.strerror}); make it readable by "
                          "the user kairosd runs as") from None


# ---- bearer tokens -------------------------------------------------------------------------------


def parse_tokens(text: str, source: str = "server.token_file") -> tuple[str, ...]:
    """The tokens of a token file: one per line; blank lines and lines starting with `#` are ignored,
    surrounding whitespace stripped. A token is visible ASCII without spaces. ConfigError (naming the
    line, never the token) when a line is not a token or when there is no token at all."""
    tokens: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not all(0x21 <= ord(c) <= 0x7E for c in token):
            raise ConfigError(f"{source}: line {number} is not a token: a token is visible ASCII characters "
                              "without spaces (one token per line, `#` starts a comment line)")
        tokens.append(token)
    if not tokens:
        raise ConfigError(f"{source}: holds no token; put one token per line (e.g. the output of "
                          "`openssl rand -hex 32`), or set server.token_file = \"\" to turn authentication off")
    return tuple(dict.fromkeys(tokens))


def read_tokens(config: Config) -> tuple[str, ...]:
    """The tokens of `server.token_file` (resolved against the config's directory); ConfigError naming the path."""
    path = resolve_path(config, config.server.token_file)
    raw = _read("token_file", path)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"server.token_file = {str(path)!r}: not ASCII text; tokens are visible ASCII, one "
                          "per line") from None
    tokens = parse_tokens(text, f"server.token_file = {str(path)!r}")
    short = sum(len(t) < MIN_TOKEN_CHARS for t in tokens)
    if short:
        log.warning("server.token_file = %r: %d of %d tokens are shorter than %d characters; use long random "
                    "tokens (`openssl rand -hex 32`)", str(path), short, len(tokens), MIN_TOKEN_CHARS)
    return tokens


def bearer_token(value: str | bytes | None) -> bytes | None:
    """The token of an `Authorization` value `Bearer <token>` (scheme case-insensitive), else None."""
    if value is None:
        return None
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token or None


class TokenCheck:
    """Constant-time membership of a presented token in a fixed set (see the module docstring)."""

    __slots__ = ("_digests",)

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(hashlib.sha256(t.encode("ascii")).digest() for t in tokens)
        if not self._digests:
            raise ValueError("TokenCheck needs at least one token")

    def __len__(self) -> int:
        return len(self._digests)

    def matches(self, presented: bytes) -> bool:
        digest = hashlib.sha256(presented).digest()
        ok = False
        for known in self._digests:  # every token, every time: no early exit
            ok |= hmac.compare_digest(digest, known)
        return ok


class Authenticator:
    """The access decision shared by both front ends. Its tokens and `auth_health` are swapped on
    reload (`replace`), which both front ends see at their next request. Counts refusals (no token
    values) for /metrics."""

    def __init__(self, tokens: Iterable[str], auth_health: bool = False) -> None:
        self._check = TokenCheck(tokens)
        self.auth_health = auth_health
        self.refused_total: dict[str, int] = {"grpc": 0, "http": 0}

    def replace(self, tokens: Iterable[str], auth_health: bool) -> None:
        self._check = TokenCheck(tokens)
        self.auth_health = auth_health

    @property
    def token_count(self) -> int:
        return len(self._check)

    def check(self, authorization: str | bytes | None, health: bool, protocol: str) -> None:
        """Raise Unauthenticated unless the request may pass (see the module docstring)."""
        if health and not self.auth_health:
            return
        token = bearer_token(authorization)
        if token is not None and self._check.matches(token):
            return
        self.refused_total[protocol] = self.refused_total.get(protocol, 0) + 1
        raise Unauthenticated(MISSING_TOKEN if token is None else WRONG_TOKEN)


# ---- gRPC ----------------------------------------------------------------------------------------


class GrpcAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks `authorization` metadata before the method runs; a refused call is answered
    UNAUTHENTICATED without reading its request."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        authorization: str | bytes | None = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                authorization = value
                break
        try:
            self._auth.check(authorization, handler_call_details.method in HEALTH_METHODS, "grpc")
        except Unauthenticated as exc:
            handler = await continuation(handler_call_details)
            return _denial(handler, str(exc))
        return await continuation(handler_call_details)


def _denial(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler | None:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED with `message`."""
    if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED, as it would anyway
        return None

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield b""  # unreachable; makes this an async generator

    if handler.request_streaming or handler.response_streaming:
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(streaming)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(unary)
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.unary_unary_rpc_method_handler(unary)


# ---- TLS -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes of `server.tls_cert`, `server.tls_key` and (mutual TLS) `server.tls_client_ca`, checked."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None
    cert_path: Path
    key_path: Path
    client_ca_path: Path | None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials; with a client CA, clients must present a certificate it signed."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert_chain)], root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server context (TLS ≥ 1.2); with a client CA, `verify_mode = CERT_REQUIRED`."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        if self.client_ca_path is not None:
            ctx.load_verify_locations(cafile=str(self.client_ca_path))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def read_tls(config: Config) -> TlsFiles | None:
    """The TLS material of `[server]`, read and checked (the key matches the certificate, the CA bundle
    parses), or None when TLS is off. ConfigError naming the key and the path otherwise."""
    s = config.server
    if not s.tls_cert:
        return None
    cert_path, key_path = resolve_path(config, s.tls_cert), resolve_path(config, s.tls_key)
    cert, key = _read("tls_cert", cert_path), _read("tls_key", key_path)
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise ConfigError(f"server.tls_cert = {str(cert_path)!r}: no PEM certificate in it (expected "
                          "`-----BEGIN CERTIFICATE-----`); give the server's certificate chain in PEM")
    if b"PRIVATE KEY-----" not in key:
        raise ConfigError(f"server.tls_key = {str(key_path)!r}: no PEM private key in it (expected "
                          "`-----BEGIN ... PRIVATE KEY-----`); give the certificate's unencrypted private key in PEM")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path), password=_no_password)
    except ssl.SSLError as exc:
        raise ConfigError(f"server.tls_cert = {str(cert_path)!r}, server.tls_key = {str(key_path)!r}: not a "
                          f"usable certificate and key ({exc.reason or exc}); check that the key belongs to the "
                          "certificate and is not encrypted") from None
    client_ca: bytes | None = None
    ca_path: Path | None = None
    if s.tls_client_ca:
        ca_path = resolve_path(config, s.tls_client_ca)
        client_ca = _read("tls_client_ca", ca_path)
        try:
            ctx.load_verify_locations(cafile=str(ca_path))
        except ssl.SSLError as exc:
            raise ConfigError(f"server.tls_client_ca = {str(ca_path)!r}: not a PEM CA bundle ({exc.reason or exc}); "
                              "give the certificate(s) of the CA that signs client certificates") from None
    return TlsFiles(cert, key, client_ca, cert_path, key_path, ca_path)


def _no_password() -> str:
    raise ConfigError("server.tls_key: the private key is encrypted; kairosd needs it unencrypted (protect the "
                      "file with its permissions, e.g. chmod 600)")


@dataclass(frozen=True)
class Access:
    """What the front ends need from `[server]`: TLS material (or None) and the authenticator (or None)."""

    tls: TlsFiles | None
    auth: Authenticator | None


def load_access(config: Config) -> Access:
    """Read and check every file `[server]` names; ConfigError naming the key and path on any failure."""
    tls = read_tls(config)
    s: ServerConfig = config.server
    auth = Authenticator(read_tokens(config), s.auth_health) if s.token_file else None
    return Access(tls, auth)


def describe(access: Access) -> str:
    """One phrase for logs and `check-config`: TLS mode and the number of tokens (never the tokens)."""
    if access.tls is None:
        tls = "plaintext"
    else:
        tls = "mutual TLS" if access.tls.client_ca is not None else "TLS"
    if access.auth is None:
        return f"{tls}, no tokens"
    health = "health needs the token" if access.auth.auth_health else "health open"
    return f"{tls}, {access.auth.token_count} bearer tokens ({health})"
