"""The dispatcher's side of the front-end processes (`[server] workers` > 1).

The main process runs the dispatcher (registry, scheduler, fleet, metrics) and one front end of its
own; `workers − 1` more processes (`kairosd frontend`, `kairosd.frontproc`) listen on the same client
ports (SO_REUSEPORT) and send their queries' bytes to the instances themselves. Each holds one
`kairosd.ipc` link to this pool: it submits a descriptor per query (model, batch, arrival, deadline,
size), the scheduler matches it with every other waiting query — the Kairos matching stays global —
and the grant goes back naming the instance; the front end reports the outcome, which frees the slot,
so each instance's busy time T_j stays exact. Instance addresses and readiness are pushed to the
front ends when they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

import grpc

from kairosd import ipc
from kairosd.backends.process import ChildProcess, kairosd_argv
from kairosd.config import Config
from kairosd.errors import BackendError, KairosError, ModelNotFound, Overloaded, Unavailable
from kairosd.registry import Instance, InstanceState, Registry
from kairosd.scheduler import Query, Scheduler

log = logging.getLogger(__name__)

_STATUS_OF_CODE: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def status_of(code: int) -> grpc.StatusCode:
    return _STATUS_OF_CODE.get(code, grpc.StatusCode.UNKNOWN)


def error_message(qid: int, exc: BaseException) -> bytes:
    """The ERROR message that makes the front end raise what the local path would raise."""
    if isinstance(exc, Overloaded):
        return ipc.error(qid, ipc.E_OVERLOADED, exc.grpc_code.value[0], str(exc), exc.retry_after_s)
    if isinstance(exc, ModelNotFound):
        return ipc.error(qid, ipc.E_NOT_FOUND, exc.grpc_code.value[0], str(exc))
    if isinstance(exc, Unavailable):
        return ipc.error(qid, ipc.E_UNAVAILABLE, exc.grpc_code.value[0], str(exc))
    if isinstance(exc, BackendError):
        return ipc.error(qid, ipc.E_BACKEND, exc.status.value[0], str(exc))
    if isinstance(exc, KairosError):
        return ipc.error(qid, ipc.E_OTHER, exc.grpc_code.value[0], str(exc))
    return ipc.error(qid, ipc.E_OTHER, grpc.StatusCode.INTERNAL.value[0], f"kairosd internal error: {exc!r}")


class _Link:
    """One front-end process: its queries by id, and the channel to it."""

    def __init__(self, pool: FrontEndPool) -> None:
        self.pool = pool
        self.channel = ipc.Channel(self._on_message, self._on_lost, pool.scheduler.busy)
        self.queries: dict[int, Query] = {}
        self.index = -1
        self.submitted = 0
        self.counters: dict[str, Any] = {}  # the process's own front-end counters (kairosd.metrics.FrontEndCollector)

    def _on_message(self, m: tuple[Any, ...]) -> None:
        kind = m[0]
        if kind == ipc.SUBMIT:
            self._submit(*m[1:])
        elif kind == ipc.DONE:
            _, qid, outcome, status, retryable, end_s, message = m
            q = self.queries.get(qid)
            if q is None:
                return
            sched = self.pool.scheduler
            if outcome in (ipc.OK, ipc.OK_HTTP, ipc.CANCELLED):
                del self.queries[qid]
                if outcome == ipc.OK_HTTP:
                    sched.stats.http_forwarded += 1
                sched.remote_done(q, end_s, cancelled=outcome == ipc.CANCELLED)
            else:  # retried (granted again later) or ended (on_end sends the error)
                error = BackendError(message.decode(errors="replace"), status=status_of(status),
                                     retryable=bool(retryable), instance=q.grant[0].id if q.grant else "")
                sched.remote_done(q, end_s, error)
        elif kind == ipc.CANCEL:
            q = self.queries.get(m[1])
            if q is not None and not q.future.done():  # granted already: its DONE (cancelled) frees the slot
                del self.queries[m[1]]
                q.future.cancel()
        elif kind == ipc.COUNTERS:
            self.counters = json.loads(m[1])
        elif kind == ipc.UP:
            self.index = m[1]
            self.pool._up(self)

    def _submit(self, qid: int, model: int, batch: int, arrival_s: float, timeout_s: float, size: int) -> None:
        pool = self.pool
        self.submitted += 1
        try:
            q = pool.scheduler.remote_submit(pool.models[model], batch, None if math.isnan(timeout_s) else timeout_s,
                                             arrival_s, size, self._granted, self._ended)
        except KairosError as exc:
            self.channel.send(error_message(qid, exc))
            return
        q.tag = qid
        self.queries[qid] = q

    def _granted(self, q: Query, inst: Instance, timeout_s: float) -> None:
        self.channel.send(ipc.grant(q.tag, self.pool.slot(inst), timeout_s))

    def _ended(self, q: Query, exc: BaseException) -> None:
        if self.queries.pop(q.tag, None) is not None:
            self.channel.send(error_message(q.tag, exc))

    def _on_lost(self) -> None:
        """The process is gone: its queued queries leave the queue, its sent ones free their slots."""
        sched = self.pool.scheduler
        now = asyncio.get_running_loop().time()
        for q in self.queries.values():
            if q.grant is not None:
                sched.remote_done(q, now, cancelled=True)
            elif not q.future.done():
                q.future.cancel()
        self.queries.clear()
        self.pool._lost(self)


class FrontEndPool:
    """Starts `workers − 1` front-end processes and serves their links; `state()` is what they report
    for health (`{"accepting": bool, "ready": [model, ...]}`)."""

    def __init__(self, config: Config, scheduler: Scheduler, registry: Registry,
                 state: Callable[[], dict[str, Any]]) -> None:
        self.config = config
        self.scheduler = scheduler
        self.registry = registry
        self.models = sorted(config.qos_s)  # the served models, indexed as the front ends index them
        self._state = state
        self._links: list[_Link] = []
        self._children: list[ChildProcess] = []
        self._slots: dict[str, int] = {}
        self._sent_instances = b""
        self._sent_state = b""
        self._up_waiters: dict[int, asyncio.Future[None]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False
        self._gone_submitted: dict[int, int] = {}

    def slot(self, inst: Instance) -> int:
        s = self._slots.get(inst.id)
        if s is None:
            s = self._slots[inst.id] = len(self._slots)
            self._push_instances()
        return s

    async def start(self, timeout_s: float = 60.0) -> None:
        n = self.config.server.workers - 1
        if n <= 0:
            return
        if self.config.path is None:
            raise KairosError("server.workers > 1 needs the daemon started from a config file (the front-end "
                              "processes read it)")
        loop = asyncio.get_running_loop()
        name = f"kairosd-fronts-{os.getpid()}-{secrets.token_hex(4)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("\0" + name)  # an abstract socket: no file to clean up, gone with the process
        self._server = await loop.create_unix_server(self._accept, sock=sock)
        self.registry.on_change(self.push)
        for k in range(1, n + 1):
            self._up_waiters[k] = loop.create_future()
            child = ChildProcess(kairosd_argv("frontend", "--config", str(self.config.path), "--dispatcher", name,
                                              "--index", str(k)), name=f"kairosd-frontend-{k}").start()
            self._children.append(child)
        deadline = loop.time() + timeout_s
        for k, child in enumerate(self._children, start=1):
            while not self._up_waiters[k].done():
                if child.returncode is not None:
                    raise KairosError(f"front-end process {k} exited with code {child.returncode} while starting; "
                                      f"its output:\n{child.log_tail()}")
                if loop.time() > deadline:
                    raise KairosError(f"front-end process {k} not listening after {timeout_s:g} s; its output:\n"
                                      f"{child.log_tail()}")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._up_waiters[k]), 0.2)
        log.info("front-end processes listening count=%d pids=%s", n, ",".join(str(c.pid) for c in self._children))

    def _accept(self) -> ipc.Channel:
        link = _Link(self)
        self._links.append(link)
        return link.channel

    def _up(self, link: _Link) -> None:
        self._sent_instances = self._sent_state = b""  # a new link gets everything
        self.push()
        w = self._up_waiters.get(link.index)
        if w is not None and not w.done():
            w.set_result(None)

    def _lost(self, link: _Link) -> None:
        if link in self._links:
            self._links.remove(link)
            self._gone_submitted[link.index] = self._gone_submitted.get(link.index, 0) + link.submitted
        if not self._stopping:
            log.error("front-end process %d went away; the others keep serving", link.index)

    def push(self) -> None:
        """Send the instances and the state to every front end when they changed."""
        self._push_instances()
        state = json.dumps(self._state(), sort_keys=True).encode()
        if state != self._sent_state:
            self._sent_state = state
            for link in self._links:
                link.channel.send(ipc.blob(ipc.STATE, state))

    def _push_instances(self) -> None:
        rows = []
        for inst in self.registry:
            if inst.state is InstanceState.GONE:
                continue
            s = self._slots.get(inst.id)
            if s is None:
                s = self._slots[inst.id] = len(self._slots)
            http = inst.http.address if inst.http is not None else None
            rows.append([s, inst.id, inst.address, http])
        payload = json.dumps(rows).encode()
        if payload != self._sent_instances:
            self._sent_instances = payload
            for link in self._links:
                link.channel.send(ipc.blob(ipc.INSTANCES, payload))

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop the front-end processes (each closes its ports and finishes what it holds first)."""
        self._stopping = True
        await asyncio.gather(*(c.stop_async(grace_s) for c in self._children))
        for link in list(self._links):
            link.channel.close()
        if self._server is not None:
            self._server.close()
        self._children.clear()

    def counters(self) -> list[dict[str, Any]]:
        """Each front-end process's own counters, as it last reported them."""
        return [link.counters for link in self._links if link.counters]

    def submitted(self) -> dict[int, int]:
        """Queries each front-end process submitted, by its index (counted by the dispatcher)."""
        out = dict(self._gone_submitted)
        for link in self._links:
            out[link.index] = out.get(link.index, 0) + link.submitted
        return out

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._children if c.pid is not None]
