"""An emulated instance: a KServe v2 gRPC + HTTP server that answers each query after a measured service time.

Core rule: a query takes one of the instance's `slots` (FIFO queue behind them, like a real instance
serving one query at a time per slot); its service time is drawn from the measured samples of the
emulated type and the served model's profile model (`kairosd.emulation`); the slot is held until
exactly that much time has passed since it was taken, then the query is answered with zeros of the
right names, shapes and dtypes, and response parameters naming the type, the service time given and
when the query arrived and its service ended (`emulated_type`, `emulated_service_us`,
`emulated_arrived_ns`, `emulated_done_ns`). No model runs and no CPU is spent while waiting: the wait is
an event loop timer. Server metadata names the server `kairosd-emulated` and lists the
`emulated:<type>` extension. ModelStreamInfer is served too (`kairosd.backends.streaming`): each
request on a stream is a query like a ModelInfer call, answered on the stream when its service ends.

Timers: uvloop's clock and `call_at` have 1 ms resolution and asyncio's epoll waits round up to a
millisecond, too coarse for sub-millisecond services (the Kairos ncf profile). `PreciseTimer` wakes the
loop through a Linux timerfd armed at the earliest deadline (nanosecond absolute CLOCK_MONOTONIC time,
the clock of `time.monotonic()`), watched with `loop.add_reader`; elsewhere it falls back to `call_at`.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from kairosd import heap
from kairosd.backends.draining import Draining
from kairosd.backends.http_client import HttpForward, HttpReply
from kairosd.backends.streaming import error_response, serve_stream, stream_response, timeout_of
from kairosd.emulation import ServiceCells, load_cells
from kairosd.errors import ConfigError, DeadlineExceeded, InvalidInput, KairosError, Unavailable
from kairosd.repository import ModelSpec, load_repository
from kairosd.server.grpc_frontend import EXTENSIONS, MAX_PENDING_RPCS, SERVICE_NAME, build_generic_handler
from kairosd.server.http_infer import set_param
from kairosd.server.validate import resolve_model, validate_request

log = logging.getLogger(__name__)

SERVER_NAME = "kairosd-emulated"
# ModelInferResponse parameters of every answer: the emulated type, and the drawn service time in µs
TYPE_PARAM = "emulated_type"
SERVICE_PARAM = "emulated_service_us"
# and when the query reached the instance and when its service ended (time.monotonic_ns(): one clock for
# every process on the machine, so a client there can split its latency into the hops and the service)
ARRIVED_PARAM = "emulated_arrived_ns"
DONE_PARAM = "emulated_done_ns"
DEFAULT_GRACE_S = 5.0
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# a deadline this close to now is due, and the timerfd fires this much before a deadline: from its
# expiry to the sleeper running again takes ~35 µs at best and ~100 µs typically on 2 busy cores
# (uvloop), so waking early centres the error
_EARLY_S = 50e-6


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


class PreciseTimer:
    """`await timer.sleep_until(deadline)` (a `time.monotonic()` value) to ~0.1 ms, no busy wait.

    One timerfd per timer holds the earliest pending deadline; when it fires, every due sleeper is
    woken and the fd is re-armed for the next. Without timerfd (not Linux), `loop.call_at`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._fd, self._libc = fd, libc
                loop.add_reader(fd, self._fire)

    @property
    def precise(self) -> bool:
        """Whether deadlines are kept by a timerfd (else by the loop's own, coarser, timers)."""
        return self._fd >= 0

    async def sleep_until(self, deadline: float) -> None:
        if deadline - time.monotonic() <= _EARLY_S:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        if self._fd < 0:
            handle = self._loop.call_at(self._loop.time() + (deadline - time.monotonic()), _wake, fut)
            try:
                await fut
            finally:
                handle.cancel()
            return
        heapq.heappush(self._heap, (deadline, next(self._seq), fut))
        if self._heap[0][2] is fut:
            self._arm(deadline)
        await fut  # a cancelled sleeper stays in the heap until its deadline, then is skipped

    def _arm(self, deadline: float) -> None:
        assert self._libc is not None
        deadline -= _EARLY_S
        sec = int(deadline)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(sec, max(1, int((deadline - sec) * 1e9))))
        if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def _fire(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            pass  # re-armed before this wake-up was handled: the next deadline is still pending
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now + _EARLY_S:
            _wake(heapq.heappop(self._heap)[2])
        if self._heap:
            self._arm(self._heap[0][0])

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def zeros_response(spec: ModelSpec, batch: int, names: tuple[str, ...]) -> bytes:
    """A serialized ModelInferResponse with zeros for `names` (all outputs when empty), as raw contents."""
    response = service_pb2.ModelInferResponse(model_name=spec.name, model_version=spec.version)
    batched = spec.max_batch_size > 0
    for name in names or tuple(t.name for t in spec.outputs):
        out = spec.output(name)
        if out is None:
            continue  # validation refused unknown outputs before this
        dims = [1 if d == -1 else d for d in out.dims]
        shape = [batch, *dims] if batched else dims
        response.outputs.add(name=name, datatype=out.datatype, shape=shape)
        count = int(np.prod(shape)) if shape else 1
        response.raw_output_contents.append(bytes(count * out.np_dtype.itemsize))
    return response.SerializeToString()


class EmulatedInstance(Draining):
    """Implements `kairosd.service.InferenceService`: `slots` queries served at once, the rest wait FIFO."""

    def __init__(
        self,
        repository: Mapping[str, ModelSpec],
        cells: Mapping[str, ServiceCells],
        emulate: str,
        slots: int = 1,
        seed: int | None = None,
    ) -> None:
        missing = sorted(set(repository) - set(cells))
        if missing:
            raise ConfigError(f"no profile model times the served models {missing}: add them to --models (SERVED=PROFILE)")
        if slots < 1:
            raise ConfigError(f"--slots must be ≥ 1, got {slots}")
        self._repository = dict(repository)
        self.cells = dict(cells)
        self.emulate = emulate
        self.slots = slots
        self.rng = np.random.default_rng(seed)
        Draining.__init__(self)  # ready, in_flight (queries accepted and not yet answered: serving or waiting)
        self.busy = 0  # slots serving a query
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._timer: PreciseTimer | None = None
        self._responses: dict[tuple[str, int, tuple[str, ...]], bytes] = {}

    @property
    def repository(self) -> Mapping[str, ModelSpec]:
        return self._repository

    def is_live(self) -> bool:
        return True

    def is_ready(self) -> bool:
        return self.ready

    def model_ready(self, name: str) -> bool:
        return self.ready and name in self._repository

    def timer(self) -> PreciseTimer:
        if self._timer is None:
            self._timer = PreciseTimer(asyncio.get_running_loop())
        return self._timer

    async def _take_slot(self) -> None:
        if self.busy < self.slots and not self._waiting:
            self.busy += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            await fut  # resolved by _release, which hands its slot over
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed over just as this query was cancelled
            else:
                self._waiting.remove(fut)
            raise

    def _release(self) -> None:
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes to the next query in line
                return
        self.busy -= 1

    async def serve_query(self, spec: ModelSpec, batch: int, names: tuple[str, ...]) -> tuple[bytes, float]:
        """Wait for a slot, hold it for one drawn service time; the zeros response (no id) and that time."""
        if not self.ready:
            raise Unavailable(f"the emulated {self.emulate} instance is shutting down")
        with self.accepted():
            await self._take_slot()
            try:
                start = time.monotonic()
                service_s = self.cells[spec.name].draw(batch, self.rng)
                await self.timer().sleep_until(start + service_s)
            finally:
                self._release()
            key = (spec.name, batch, names)
            body = self._responses.get(key)
            if body is None:
                body = self._responses[key] = zeros_response(spec, batch, names)
            return body, service_s

    async def infer(
        self,
        request: service_pb2.ModelInferRequest,
        spec: ModelSpec,
        batch: int,
        timeout_s: float | None = None,
        raw: bytes | None = None,
    ) -> bytes:
        arrived_ns = time.monotonic_ns()
        names = tuple(dict.fromkeys(o.name for o in request.outputs))
        body, service_s = await self.serve_query(spec, batch, names)
        # serialized messages concatenated merge: the id and the response parameters that tell which
        # type served the query and the service time it was given (a client can subtract it)
        tail = service_pb2.ModelInferResponse(id=request.id)
        for name, value in self.answer_parameters(service_s, arrived_ns, time.monotonic_ns()).items():
            set_param(tail.parameters[name], value)
        return body + tail.SerializeToString()

    def answer_parameters(self, service_s: float, arrived_ns: int, done_ns: int) -> dict[str, str | int]:
        """The response parameters of an answer (`infer` sets them in its ModelInferResponse, the lean
        HTTP path in its JSON header): the emulated type, the drawn service time in µs, when the query
        arrived and when its service ended."""
        return {TYPE_PARAM: self.emulate, SERVICE_PARAM: round(service_s * 1e6), ARRIVED_PARAM: arrived_ns,
                DONE_PARAM: done_ns}

    async def infer_http(
        self, forward: HttpForward, spec: ModelSpec, batch: int, timeout_s: float | None = None
    ) -> HttpReply | bytes:
        return await self.infer(forward.to_grpc(), spec, batch, timeout_s)

    async def answer_stream_request(self, raw: bytes) -> bytes:
        """One ModelStreamInfer request (serialized ModelInferRequest) → its serialized stream response:
        the answer, or the error the ModelInfer call would have ended with (and the request's id)."""
        request = service_pb2.ModelInferRequest()
        try:
            try:
                request.ParseFromString(raw)
            except DecodeError:
                raise InvalidInput("ModelInferRequest is not a valid protobuf message") from None
            spec = resolve_model(self._repository, request.model_name, request.model_version)
            batch = validate_request(request, spec)
            timeout_s = timeout_of(request)  # a query on a stream cannot be cancelled: its deadline drops it
            if timeout_s is None:
                return stream_response(await self.infer(request, spec, batch))
            try:
                return stream_response(await asyncio.wait_for(self.infer(request, spec, batch), timeout_s))
            except TimeoutError:
                raise DeadlineExceeded(f"not served within its timeout parameter ({timeout_s:.3g} s)") from None
        except KairosError as exc:
            return stream_response(error_response(request.id, exc.grpc_code).SerializeToString(), str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug fails this request, not the stream
            log.exception("ModelStreamInfer request for model %r failed", request.model_name)
            code = grpc.StatusCode.INTERNAL
            return stream_response(error_response(request.id, code).SerializeToString(),
                                   f"emulated instance internal error: {type(exc).__name__}: {exc}")

    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        await serve_stream(requests, context.write, self.answer_stream_request)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()


async def start_emulated_grpc_server(
    instance: EmulatedInstance, host: str, port: int, extensions: tuple[str, ...]
) -> grpc.aio.Server:
    """The front end's KServe v2 method table (`build_generic_handler`) with the instance's own
    ModelStreamInfer ahead of it (grpc asks the handlers in order)."""
    stream = grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(instance.model_stream_infer),  # bytes in and out
    })
    server = grpc.aio.server(
        handlers=[stream, build_generic_handler(instance, SERVER_NAME, extensions)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a silent share
            ("grpc.server.max_pending_requests", MAX_PENDING_RPCS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_RPCS),
        ],
        maximum_concurrent_rpcs=None,
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind {address}")
    await server.start()
    return server


@dataclass(frozen=True)
class HostedInstance:
    """One emulated instance of a host process: the type it emulates and its ports (HTTP: None for none)."""

    emulate: str
    port: int
    http_port: int | None = None


def parse_hosted(text: str) -> HostedInstance:
    """`TYPE:GRPC_PORT[:HTTP_PORT]` (the CLI's --instance) → HostedInstance. Raises ConfigError."""
    parts = text.rsplit(":", 2)
    if len(parts) < 2 or not all(x.isdigit() for x in parts[1:]) or not parts[0]:
        raise ConfigError(f"--instance {text!r}: expected TYPE:GRPC_PORT[:HTTP_PORT], e.g. r5n.large:9001:9000")
    return HostedInstance(parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None)


async def serve_host(
    repository: str,
    instances: Sequence[HostedInstance],
    data: str,
    models: Mapping[str, str],
    host: str,
    slots: int = 1,
    seed: int | None = None,
    grace_s: float = DEFAULT_GRACE_S,
) -> int:
    """Serve `instances` from this one process until SIGTERM/SIGINT (the first drains every instance for
    `grace_s`, a second stops at once). Each instance has its own servers, slots, queue and draws (seed
    + its index); they share the event loop, so several idle-waiting instances cost one process's
    wake-ups instead of one each."""
    from kairosd.backends.emulated_http import LeanHttpServer, lean_http_default, start_lean_http_server
    from kairosd.server.http_frontend import http_runner, start_http_server

    if not instances:
        raise ConfigError("no emulated instance to serve: give --emulate or at least one --instance")
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    forced = asyncio.Event()
    live: list[EmulatedInstance] = []

    def on_signal(sig: signal.Signals) -> None:
        if stopping.is_set():
            forced.set()
            return
        log.info("%s: draining for up to %.1f s", sig.name, grace_s)
        for inst in live:
            inst.start_draining()
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    servers: list[grpc.aio.Server] = []
    runners = []
    lean: list[LeanHttpServer] = []
    try:
        specs = load_repository(repository)
        specs = {name: spec for name, spec in specs.items() if name in models}
        if not specs:
            raise ConfigError(f"--models names none of the models in {repository}")
        data_path = data if data == "kairos" else str(Path(data))
        cells = {t: load_cells(t, data_path, {m: models[m] for m in specs}) for t in {h.emulate for h in instances}}
        for i, h in enumerate(instances):
            instance = EmulatedInstance(specs, cells[h.emulate], h.emulate, slots, None if seed is None else seed + i)
            live.append(instance)
            if stopping.is_set():
                instance.start_draining()
            extensions = (*EXTENSIONS, f"emulated:{h.emulate}")
            try:
                servers.append(await start_emulated_grpc_server(instance, host, h.port, extensions))
            except (OSError, RuntimeError) as exc:
                raise Unavailable(f"cannot listen on {host}:{h.port}: {exc}") from exc
            if h.http_port is not None and not lean_http_default():
                runners.append(await start_http_server(instance, host, h.http_port, MAX_MESSAGE_BYTES, SERVER_NAME,
                                                       extensions))
            elif h.http_port is not None:
                runner = await http_runner(instance, MAX_MESSAGE_BYTES, SERVER_NAME, extensions)
                runners.append(runner)
                assert runner.server is not None  # set up: it makes the full path's protocols
                try:
                    lean.append(await start_lean_http_server(instance, host, h.http_port, MAX_MESSAGE_BYTES,
                                                             runner.server))
                except OSError as exc:
                    raise Unavailable(f"cannot listen on {host}:{h.http_port}: {exc}") from exc
            timer = instance.timer()
            print(
                f"kairosd emulated ready: grpc={host}:{h.port} http={host}:{h.http_port} emulate={h.emulate} "
                f"data={data} models={','.join(f'{m}={models[m]}' for m in specs)} slots={slots} "
                f"precise_timer={timer.precise} pid={os.getpid()} load_s={time.monotonic() - started:.2f}",
                flush=True,
            )
        heap.settle("start-up")
        await stopping.wait()

        async def all_drained() -> bool:
            return all(await asyncio.gather(*(inst.drained(grace_s) for inst in live)))

        drained = asyncio.ensure_future(all_drained())
        force = asyncio.ensure_future(forced.wait())
        await asyncio.wait([drained, force], return_when=asyncio.FIRST_COMPLETED)
        force.cancel()
        if not (drained.done() and drained.result()):
            drained.cancel()
            log.warning("%d queries still waiting; cancelling them", sum(inst.in_flight for inst in live))
        for server in servers:
            await server.stop(0 if forced.is_set() else 0.5)
        for http_server in lean:
            await http_server.close()
        for runner in runners:
            await runner.cleanup()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for inst in live:
            inst.close()
    log.info("stopped")
    return 0
