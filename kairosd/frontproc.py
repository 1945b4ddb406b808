"""A front-end process (`kairosd frontend`, started by the daemon when `[server] workers` > 1).

It listens on the daemon's client ports (SO_REUSEPORT, with the same TLS, tokens and limits),
validates each query as the main process does, and asks the dispatcher for an instance over its
`kairosd.ipc` link; it then sends the query's bytes to that instance itself (its own channel to each
instance) and reports the outcome. The dispatcher keeps every decision: admission, matching, retries
(a failed send is granted again or ended by it), deadlines. Health answers come from the state the
dispatcher pushes. The process exits with its parent (PR_SET_PDEATHSIG) and when its link closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from kairosd import heap, ipc
from kairosd.backends.client import BackendClient
from kairosd.backends.grpc_http import grpc_over_http_default, infer_over_http
from kairosd.backends.http_client import HttpBackendClient, HttpForward, HttpReply
from kairosd.config import Resolved
from kairosd.errors import BackendError, KairosError, ModelNotFound, Overloaded, Unavailable
from kairosd.fronts import status_of
from kairosd.repository import ModelSpec

log = logging.getLogger(__name__)

# an instance that left the dispatcher's list keeps its channels this long (sends may still be on them)
_CLOSE_AFTER_S = 30.0


class _Remote:
    __slots__ = ("address", "client", "http")

    def __init__(self, address: str, http_address: str | None, max_message_bytes: int) -> None:
        self.address = address
        self.client = BackendClient(address, max_message_bytes)
        self.http = HttpBackendClient(http_address) if http_address else None

    async def close(self) -> None:
        await self.client.close()
        if self.http is not None:
            self.http.close()


class RemoteService:
    """`kairosd.service.InferenceService` over the dispatcher link."""

    def __init__(self, resolved: Resolved) -> None:
        self._repository = dict(resolved.repository)
        self._grpc_over_http = grpc_over_http_default()  # as the dispatcher's scheduler (grpc_http)
        self._models = {m: i for i, m in enumerate(sorted(resolved.config.qos_s))}
        self._max_message_bytes = resolved.config.server.max_request_bytes
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[int, float]]] = {}
        self._instances: dict[int, _Remote] = {}
        self._state: dict[str, Any] = {"accepting": False, "ready": []}
        self.channel = ipc.Channel(self._on_message, self._on_lost)
        self.lost = asyncio.Event()

    # ---- InferenceService ---------------------------------------------------------------------
    @property
    def repository(self) -> Mapping[str, ModelSpec]:
        return self._repository

    def is_live(self) -> bool:
        return True

    def is_ready(self) -> bool:
        return bool(self._state["accepting"]) and set(self._state["ready"]) >= set(self._models)

    def model_ready(self, name: str) -> bool:
        return bool(self._state["accepting"]) and name in self._state["ready"]

    async def infer(self, request: service_pb2.ModelInferRequest, spec: ModelSpec, batch: int,
                    timeout_s: float | None = None, raw: bytes | None = None) -> bytes:
        size = len(raw) if raw is not None else request.ByteSize()

        def send(inst: _Remote, t: float) -> Awaitable[bytes]:
            if inst.http is not None and self._grpc_over_http:
                return infer_over_http(inst.http, request, t)
            return inst.client.infer(request, t, raw)

        response = await self._query(spec, batch, timeout_s, size, send)
        assert isinstance(response, bytes)
        return response

    async def infer_http(self, forward: HttpForward, spec: ModelSpec, batch: int,
                         timeout_s: float | None = None) -> HttpReply | bytes:
        converted: list[service_pb2.ModelInferRequest] = []

        def send(inst: _Remote, t: float) -> Awaitable[bytes | HttpReply]:
            if inst.http is not None:
                return inst.http.infer(forward, t)
            if not converted:
                converted.append(forward.to_grpc())
            return inst.client.infer(converted[0], t)

        return await self._query(spec, batch, timeout_s, len(forward.body), send)

    async def _query(self, spec: ModelSpec, batch: int, timeout_s: float | None, size: int,
                     send: Callable[[_Remote, float], Awaitable[Any]]) -> Any:
        if self.lost.is_set():
            raise Unavailable("kairosd's dispatcher is gone; retry against another replica")
        model = self._models.get(spec.name)
        if model is None:
            raise ModelNotFound(f"model {spec.name!r} is not served: it has no QoS target in the config")
        qid = next(self._ids)
        loop = self._loop
        fut = self._pending[qid] = loop.create_future()
        self.channel.send(ipc.submit(qid, model, batch, loop.time(), timeout_s, size))
        last: BackendError | None = None
        try:
            while True:
                try:
                    slot, timeout = await fut  # a grant, or the dispatcher's error
                except asyncio.CancelledError:
                    self.channel.send(ipc.cancel(qid))
                    raise
                except _BackendFinal as final:
                    raise (last if last is not None else final.error) from None
                inst = self._instances.get(slot)
                try:
                    if inst is None:
                        raise BackendError(f"instance slot {slot} is unknown to this front end",
                                           status=grpc.StatusCode.UNAVAILABLE, retryable=True)
                    response = await send(inst, timeout)
                except BackendError as exc:
                    last = exc
                    fut = self._pending[qid] = loop.create_future()
                    self.channel.send(ipc.done(qid, ipc.FAILED, exc.status.value[0], exc.retryable, loop.time(),
                                               str(exc)[:2000]))
                    continue
                except asyncio.CancelledError:
                    self.channel.send(ipc.done(qid, ipc.CANCELLED, end_s=loop.time()))
                    raise
                except Exception as exc:  # noqa: BLE001 - reported like the main process does: INTERNAL
                    log.exception("query to %s failed unexpectedly", inst.address if inst else slot)
                    last = BackendError(str(exc), status=grpc.StatusCode.INTERNAL, retryable=False)
                    fut = self._pending[qid] = loop.create_future()
                    self.channel.send(ipc.done(qid, ipc.FAILED, grpc.StatusCode.INTERNAL.value[0], False, loop.time(),
                                               str(exc)[:2000]))
                    continue
                self.channel.send(ipc.done(qid, ipc.OK_HTTP if isinstance(response, HttpReply) else ipc.OK,
                                           end_s=loop.time()))
                return response
        finally:
            self._pending.pop(qid, None)

    # ---- the link ---------------------------------------------------------------------------------
    def _on_message(self, m: tuple[Any, ...]) -> None:
        kind = m[0]
        if kind == ipc.GRANT:
            _, qid, slot, timeout_s = m
            fut = self._pending.get(qid)
            if fut is None or fut.done():  # withdrawn meanwhile: free the slot at once
                self.channel.send(ipc.done(qid, ipc.CANCELLED, end_s=self._loop.time()))
                return
            fut.set_result((slot, timeout_s))
        elif kind == ipc.ERROR:
            _, qid, kind_, status, retry_after_s, message = m
            fut = self._pending.get(qid)
            if fut is not None and not fut.done():
                fut.set_exception(_error(kind_, status, message.decode(errors="replace"), retry_after_s))
        elif kind == ipc.INSTANCES:
            self._set_instances(m[1])
        elif kind == ipc.STATE:
            self._state = json.loads(m[1])

    def _set_instances(self, payload: bytes) -> None:
        rows = json.loads(payload)
        keep: dict[int, _Remote] = {}
        for slot, _id, address, http in rows:
            inst = self._instances.get(slot)
            if inst is None or inst.address != address:
                inst = _Remote(address, http, self._max_message_bytes)
            keep[slot] = inst
        for slot, inst in self._instances.items():
            if keep.get(slot) is not inst:
                self._loop.call_later(_CLOSE_AFTER_S, self._close, inst)
        self._instances = keep

    def _close(self, inst: _Remote) -> None:
        self._loop.create_task(inst.close())

    def _on_lost(self) -> None:
        self.lost.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Unavailable("kairosd's dispatcher went away; retry against another replica"))

    async def close(self) -> None:
        self.channel.close()
        await asyncio.gather(*(i.close() for i in self._instances.values()), return_exceptions=True)


class _BackendFinal(Exception):
    """The dispatcher ended a query after a failed send: the front end raises its own last error."""

    def __init__(self, error: BackendError) -> None:
        super().__init__(str(error))
        self.error = error


def _error(kind: int, status: int, message: str, retry_after_s: float) -> BaseException:
    if kind == ipc.E_OVERLOADED:
        return Overloaded(message, retry_after_s)
    if kind == ipc.E_UNAVAILABLE:
        return Unavailable(message)
    if kind == ipc.E_NOT_FOUND:
        return ModelNotFound(message)
    if kind == ipc.E_BACKEND:
        return _BackendFinal(BackendError(message, status=status_of(status), retryable=False))
    err = KairosError(message)
    err.grpc_code = status_of(status)
    return err


async def serve(resolved: Resolved, dispatcher: str, index: int) -> None:
    """Connect to the dispatcher, listen on the client ports, serve until SIGTERM or the link closes."""
    from kairosd.config import load
    from kairosd.server.access import GrpcAuthInterceptor, load_access, read_tokens
    from kairosd.server.grpc_frontend import GrpcLimits, start_grpc_server
    from kairosd.server.http_frontend import start_http_server
    from kairosd.server.http_limits import ConnectionGate, HttpLimits

    cfg = resolved.config
    s = cfg.server
    loop = asyncio.get_running_loop()
    access = await asyncio.to_thread(load_access, cfg)
    service = RemoteService(resolved)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, "\0" + dispatcher)  # an abstract socket: no file to clean up
    await loop.create_unix_connection(lambda: service.channel, sock=sock)
    limits = HttpLimits.from_server(s)
    gate = ConnectionGate(limits.max_connections)
    grpc_server = await start_grpc_server(
        service, s.host, s.grpc_port, s.max_request_bytes, limits=GrpcLimits.from_server(s),
        credentials=access.tls.grpc_credentials() if access.tls else None,
        interceptors=[GrpcAuthInterceptor(access.auth)] if access.auth else (), reuse_port=True,
    )
    http = await start_http_server(
        service, s.host, s.http_port, s.max_request_bytes, limits=limits, gate=gate,
        ssl_context=access.tls.ssl_context() if access.tls else None, auth=access.auth, reuse_port=True,
    )
    service.channel.send(ipc.up(index))
    counters_task = loop.create_task(_report_counters(service, access.auth, gate))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def on_hup() -> None:  # the daemon forwards its reloads: tokens are re-read like its own
        if access.auth is None or cfg.path is None:
            return
        try:
            new = load(cfg.path)
            if new.server.token_file:
                access.auth.replace(read_tokens(new), new.server.auth_health)
        except KairosError as exc:
            log.error("front end %d: token reload failed: %s; keeping the current tokens", index, exc)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    log.info("front end %d listening grpc=%s:%d http=%s:%d", index, s.host, s.grpc_port, s.host, s.http_port)
    heap.settle("start-up")
    lost = loop.create_task(service.lost.wait())
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for t in (lost, stopped, counters_task):
        t.cancel()
    # stop listening, let the queries held finish (their grants and outcomes still go through the link)
    await grpc_server.stop(s.drain_timeout_s)
    with contextlib.suppress(Exception):
        await http.cleanup()
    await service.close()
    log.info("front end %d stopped", index)


async def _report_counters(service: RemoteService, auth: Any, gate: Any) -> None:
    """Send this process's own counters (refused tokens, HTTP connections) to the dispatcher's /metrics
    within 50 ms of a change."""
    from kairosd.metrics import front_end_counters

    last = b""
    while True:
        await asyncio.sleep(0.05)
        payload = json.dumps(front_end_counters(auth, gate), sort_keys=True).encode()
        if payload != last:
            last = payload
            service.channel.send(ipc.blob(ipc.COUNTERS, payload))


def main(config_path: str, dispatcher: str, index: int) -> int:
    import uvloop

    from kairosd.backends.process import die_with_parent
    from kairosd.config import load_checked

    die_with_parent()
    resolved = load_checked(config_path)
    uvloop.run(serve(resolved, dispatcher, index))
    return 0

