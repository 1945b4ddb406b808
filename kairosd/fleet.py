"""The fleet: the reconcile loop that makes the provider's instances match the target, and the only
writer of provider instances into the registry.

Each period: list every provider (the truth), adopt what carries the fleet tag and is not known yet,
notice what vanished (crash, interruption, a terminate behind kairosd's back: GONE within one
period, replaced by the ordinary deficit logic), take the target (the static counts, or the
planner's choice for the observed load), run the pure `decide`, and apply its actions, one log line
each. Readiness and health probing live here: a LAUNCHING instance becomes READY once it answers
ServerReady and ModelReady for every served model; a SUSPECT one (the scheduler reported a transport
failure) goes back to READY when it answers ServerReady again. Every step is guarded: one failing
call is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from kairosd.autoscale.decide import committed_usd_per_hour, decide, unavailable_types
from kairosd.autoscale.types import (
    Action,
    AutoscaleParams,
    DecideState,
    Decision,
    Drain,
    Launch,
    Member,
    MemberState,
    Terminate,
)
from kairosd.backends.client import BackendClient
from kairosd.backends.http_client import HttpBackendClient
from kairosd.errors import Unavailable
from kairosd.pools import parse_pool, pool_offerings
from kairosd.profiles import ProfileTable
from kairosd.providers.base import (
    FLEET_TAG,
    POOL_TAG,
    InsufficientCapacity,
    Offering,
    Provider,
    ProviderInstance,
    ProviderState,
)
from kairosd.registry import Instance, InstanceState, Registry

log = logging.getLogger(__name__)

START_REPLACEMENTS = 3  # instances that exit during start-up and are replaced before start fails
READY_POLL_S = 0.05  # how often a launching instance is asked ServerReady/ModelReady
SUSPECT_POLL_S = 0.5  # how often a suspect one is

# target(now_s, unavailable types) → instance type → count
TargetFn = Callable[[float, frozenset[str]], Mapping[str, int]]


@runtime_checkable
class PreparedTarget(Protocol):
    """A target whose work splits in two: `prepare` reads what the event loop owns (the observed load)
    and returns the rest, which may take long (planning a fleet), for the reconcile to run off the event
    loop, so that dispatch does not stall while it runs."""

    def prepare(self, now_s: float, unavailable: frozenset[str]) -> Callable[[], Mapping[str, int]]: ...

_MEMBER_STATE = {
    InstanceState.LAUNCHING: MemberState.LAUNCHING,
    InstanceState.READY: MemberState.READY,
    InstanceState.SUSPECT: MemberState.SUSPECT,
    InstanceState.DRAINING: MemberState.DRAINING,
}


@dataclass
class FleetStats:
    """Counters and gauges for metrics and `kairosd fleet status`."""

    actions: Counter[str] = field(default_factory=Counter)  # by kind: launch, drain, terminate
    launched: int = 0
    reconciles: int = 0
    reconcile_errors: int = 0
    last_reconcile_s: float = 0.0  # duration of the last reconcile
    committed_usd_per_hour: float = 0.0
    target: Mapping[str, int] = field(default_factory=dict)
    members: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (type, member state) → count
    vanished: int = 0


def static_target(counts: Mapping[str, int]) -> TargetFn:
    """A target that never changes (`[fleet.static]`): a dead instance is replaced, nothing else moves."""
    fixed = dict(counts)
    return lambda _now, _unavailable: fixed


class Fleet:
    def __init__(
        self,
        registry: Registry,
        profiles: ProfileTable,
        providers: Sequence[Provider],
        target: TargetFn,
        budget_usd_per_hour: float,
        params: AutoscaleParams,
        *,
        models: Collection[str],
        fleet_name: str = "kairosd",
        period_s: float = 5.0,
        slots: Mapping[str, int] | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        terminate_on_stop: bool = True,
    ) -> None:
        self.registry = registry
        self.profiles = profiles
        self.providers = list(providers)
        managed = [p for p in self.providers if p.managed]
        if len(managed) > 1:
            raise ValueError("at most one managed provider (local or ec2) per fleet")
        self.managed: Provider | None = managed[0] if managed else None
        self.target_fn = target
        self.budget_usd_per_hour = budget_usd_per_hour
        self.params = params
        self.models = sorted(models)
        self.fleet_name = fleet_name
        self.period_s = period_s
        self.slots = dict(slots or {})
        self.max_message_bytes = max_message_bytes
        self.terminate_on_stop = terminate_on_stop
        self.state = DecideState()
        self.stats = FleetStats()
        self.last_decision: Decision | None = None
        self.listing: list[ProviderInstance] = []
        self._provider_of: dict[str, Provider] = {}
        self._terminating: set[str] = set()  # terminate called; billed until the provider lists it terminated
        self._first_seen_s: dict[str, float] = {}  # listed but not (yet) in the registry
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._token_seq = 0
        self._token_epoch = f"{time.time_ns():x}"  # tokens never repeat across daemon restarts
        self._pending_token: dict[str, str] = {}  # type → the token of a launch not known to have succeeded
        self._prices: dict[str, float] = {}  # type → $/h set by reconfigure (else each instance's own price)
        self._loop_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        registry.on_change(self._watch_suspects)

    # ---- the loop -------------------------------------------------------------------------------
    async def start(self, wait_ready_timeout_s: float | None = 180.0) -> None:
        """Reconcile once (adopt what exists, launch the first target); with a timeout, wait until every
        listed instance is READY (raises Unavailable naming the laggard or the one that exited); then
        reconcile every period in the background."""
        await self.reconcile_once()
        if wait_ready_timeout_s is not None:
            await self._wait_ready(wait_ready_timeout_s)
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _wait_ready(self, timeout_s: float) -> None:
        """Wait until every listed instance is READY. An instance that exits while starting (e.g. another
        process took the port it was given) is replaced by a reconcile, up to START_REPLACEMENTS times
        in all; the next one raises Unavailable with its output."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        replaced = 0
        while True:
            listing = await self._list()
            dead = [p for p in listing if not p.state.billed or
                    (p.state is ProviderState.SHUTTING_DOWN and p.id not in self._terminating)]
            if dead:
                tail = self._log_tail(dead[0].id)
                if replaced >= START_REPLACEMENTS:
                    raise Unavailable(f"instance {dead[0].id} ({dead[0].type}) exited while starting{tail}")
                replaced += len(dead)
                log.warning("instance %s (%s) exited while starting; replacing it%s", dead[0].id, dead[0].type, tail)
                await self.reconcile_once()
                continue
            pending = [i for i in self.registry if i.state is not InstanceState.READY]
            unadopted = [p.id for p in listing if p.id not in self.registry and p.id not in self._terminating]
            if not pending and not unadopted:
                return
            if loop.time() > deadline:
                names = ", ".join([f"{i.id} ({i.address}, {i.state.value})" for i in pending] + unadopted)
                tail = self._log_tail(pending[0].id) if pending else ""
                raise Unavailable(f"instances not ready within {timeout_s:.0f} s: {names}{tail}")
            await asyncio.sleep(0.1)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a control loop never dies of one error
                self.stats.reconcile_errors += 1
                log.exception("reconcile failed; retrying next period")

    async def reconcile_once(self) -> Decision | None:
        """One period: list, sync the registry, plan, decide, act. Returns the decision (None when the
        fleet has nothing to manage)."""
        async with self._lock:
            t0 = time.monotonic()
            self.stats.reconciles += 1
            listing = await self._list()
            self._sync(listing)
            now = time.monotonic()
            members = self._members(listing, now)
            self._record(members)
            unavailable = frozenset(parse_pool(t)[0] for t in unavailable_types(self.state, now))
            try:
                if isinstance(self.target_fn, PreparedTarget):
                    target = dict(await asyncio.to_thread(self.target_fn.prepare(now, unavailable)))
                else:
                    target = dict(self.target_fn(now, unavailable))
            except Exception:  # noqa: BLE001 - keep the current target rather than act on a failed plan
                log.exception("planning the target failed; keeping the current target")
                target = dict(self.state.acted_target)
            self.stats.target = target
            offerings = await self._offerings(target)
            decision = decide(target, members, offerings, self.budget_usd_per_hour, now, self.state, self.params)
            self.state = decision.state
            self.last_decision = decision
            for note in decision.notes:
                log.info("autoscaler: %s", note)
            for action in decision.actions:
                try:
                    await self._apply(action)
                except Exception:  # noqa: BLE001 - one failed action must not stop the others
                    log.exception("fleet action failed: %s", action)
            self._record(self._members(self.listing, time.monotonic()))
            self.stats.last_reconcile_s = time.monotonic() - t0
            return decision

    def _record(self, members: Sequence[Member]) -> None:
        self.stats.committed_usd_per_hour = committed_usd_per_hour(members)
        self.stats.members = dict(Counter((m.type, m.state.value) for m in members))

    async def _list(self) -> list[ProviderInstance]:
        listing: list[ProviderInstance] = []
        for p in self.providers:
            for inst in await p.list():
                if inst.tags.get(FLEET_TAG, self.fleet_name) != self.fleet_name:
                    continue  # another fleet's
                self._provider_of[inst.id] = p
                listing.append(inst)
        self.listing = listing
        return listing

    async def _offerings(self, target: Mapping[str, int]) -> dict[str, Offering]:
        """The managed provider's offerings by type, and by pool for the target's pinned pools."""
        if self.managed is None:
            return {}
        return pool_offerings({o.type: o for o in await self.managed.offerings()}, target)

    # ---- registry sync --------------------------------------------------------------------------
    def _sync(self, listing: Sequence[ProviderInstance]) -> None:
        live = {p.id: p for p in listing if p.state in (ProviderState.PENDING, ProviderState.RUNNING)}
        billed = {p.id for p in listing if p.state.billed}
        for inst in list(self.registry):
            if inst.id not in live:
                self.stats.vanished += 1
                log.warning("instance vanished instance=%s type=%s state=%s: the provider lists it %s", inst.id,
                            inst.type, inst.state.value, next((p.state.value for p in listing if p.id == inst.id), "nowhere"))
                self._forget(inst)
        self._terminating &= billed
        for pid in list(self._first_seen_s):
            if pid not in billed or pid in self.registry:
                del self._first_seen_s[pid]
        for p in live.values():
            if p.id in self.registry or p.id in self._terminating:
                continue
            if p.address is None or p.type not in self.profiles.types:
                self._first_seen_s.setdefault(p.id, time.monotonic())
                continue
            self._adopt(p)

    def _adopt(self, p: ProviderInstance) -> Instance:
        provider = self._provider_of.get(p.id)
        pool = _pool_of(p)
        model = parse_pool(pool)[1]
        inst = Instance(
            id=p.id,
            type=p.type,
            type_idx=self.profiles.type_index(p.type),
            address=p.address or "",
            slots=self.slots.get(p.type, 1),
            client=BackendClient(p.address or "", self.max_message_bytes),
            http=HttpBackendClient(p.http_address) if p.http_address is not None else None,
            price_usd_per_hour=p.price_usd_per_hour,
            managed=provider.managed if provider is not None else True,
            provider=provider.name if provider is not None else "",
            launched_at_s=p.launched_at_s,
            pool=pool,
            pinned_model=self.profiles.models.index(model) if model in self.profiles.models else None,
        )
        self._first_seen_s.pop(p.id, None)
        self.registry.add(inst)  # LAUNCHING until it answers ServerReady and ModelReady
        log.info("instance adopted instance=%s pool=%s address=%s provider=%s", inst.id, pool, inst.address, inst.provider)
        self._start_watcher(inst)
        return inst

    def _forget(self, inst: Instance) -> None:
        watcher = self._watchers.pop(inst.id, None)
        if watcher is not None:
            watcher.cancel()
        if self.registry.get(inst.id) is inst:
            self.registry.set_state(inst.id, InstanceState.GONE)
        asyncio.get_running_loop().create_task(_close_clients(inst))

    def _members(self, listing: Sequence[ProviderInstance], now: float) -> list[Member]:
        members = []
        for p in listing:
            if not p.state.billed:
                continue
            provider = self._provider_of.get(p.id)
            managed = provider.managed if provider is not None else True
            inst = self.registry.get(p.id)
            if inst is not None and inst.state in _MEMBER_STATE:
                state, since, in_flight = _MEMBER_STATE[inst.state], inst.state_since_s, inst.in_flight
            elif p.id in self._terminating or p.state is ProviderState.SHUTTING_DOWN:
                state, since, in_flight = MemberState.TERMINATING, now, 0
            else:
                state, since, in_flight = MemberState.LAUNCHING, self._first_seen_s.get(p.id, now), 0
            launched = now - max(time.time() - p.launched_at_s, 0.0) if p.launched_at_s else since
            price = self._prices.get(p.type, p.price_usd_per_hour)
            members.append(Member(p.id, _pool_of(p), state, price, launched, since, in_flight, managed))
        return members

    # ---- actions --------------------------------------------------------------------------------
    async def _apply(self, action: Action) -> None:
        self.stats.actions[type(action).__name__.lower()] += 1
        if isinstance(action, Launch):
            await self._launch(action)
        elif isinstance(action, Drain):
            inst = self.registry.get(action.id)
            log.info("drain instance=%s reason=%s", action.id, action.reason)
            if inst is not None and inst.managed and inst.state is not InstanceState.DRAINING:
                self.registry.set_state(inst.id, InstanceState.DRAINING)
        elif isinstance(action, Terminate):
            await self._terminate(action.id, action.reason)

    async def _launch(self, action: Launch) -> None:
        if self.managed is None:
            log.warning("launch %d × %s wanted but the fleet has no launching provider", action.count, action.type)
            return
        pool = action.type
        instance_type, model = parse_pool(pool)
        token = self._pending_token.get(pool)
        if token is None:
            self._token_seq += 1
            token = f"{self.fleet_name}.{instance_type}.{self._token_epoch}.{self._token_seq}"
            self._pending_token[pool] = token
        log.info("launch type=%s pool=%s count=%d token=%s reason=%s", instance_type, pool, action.count, token,
                 action.reason)
        try:
            started = await self.managed.launch(instance_type, action.count, token,
                                                tags={POOL_TAG: pool} if model is not None else None)
        except InsufficientCapacity as exc:
            until = time.monotonic() + self.params.unavailable_s
            self.state = replace(self.state, unavailable_until_s={**self.state.unavailable_until_s, action.type: until})
            self._pending_token.pop(action.type, None)
            log.warning("no capacity for type=%s (%s); planning without it for %.0f s", action.type, exc,
                        self.params.unavailable_s)
            return
        del self._pending_token[action.type]  # done: the next launch of this type gets a new token
        self.stats.launched += len(started)
        listed = {p.id for p in self.listing}
        self.listing.extend(p for p in started if p.id not in listed)
        for p in started:
            self._provider_of[p.id] = self.managed
            if p.id not in self.registry and p.address is not None and p.id not in self._terminating:
                self._adopt(p)
            elif p.address is None:
                self._first_seen_s.setdefault(p.id, time.monotonic())

    async def _terminate(self, instance_id: str, reason: str) -> None:
        provider = self._provider_of.get(instance_id, self.managed)
        if provider is None or not provider.managed:
            return
        inst = self.registry.get(instance_id)
        if inst is not None and inst.state is InstanceState.READY:
            # decided on a LAUNCHING or SUSPECT snapshot, READY by now (the readiness probe ran during the
            # reconcile's awaits): drain it instead, so no query sent to it meanwhile fails; it stays billed
            log.info("drain instance=%s reason=%s (ready since the decision to terminate it)", instance_id, reason)
            self.registry.set_state(instance_id, InstanceState.DRAINING)
            return
        log.info("terminate instance=%s reason=%s%s", instance_id, reason,
                 f" in_flight={inst.in_flight}" if inst is not None else "")
        self._terminating.add(instance_id)
        if inst is not None:
            self._forget(inst)
        await provider.terminate([instance_id])

    # ---- readiness and health -------------------------------------------------------------------
    def _start_watcher(self, inst: Instance) -> None:
        if inst.id in self._watchers:
            return
        task = asyncio.get_running_loop().create_task(self._watch(inst))
        self._watchers[inst.id] = task
        task.add_done_callback(lambda _t: self._watchers.pop(inst.id, None))

    def _watch_suspects(self) -> None:
        for inst in self.registry:
            if inst.state is InstanceState.SUSPECT and inst.id not in self._watchers:
                self._start_watcher(inst)

    async def _watch(self, inst: Instance) -> None:
        """LAUNCHING → READY once ServerReady and every model's ModelReady answer true; SUSPECT → READY
        once ServerReady does. Ends when the instance leaves those states or the registry."""
        while self.registry.get(inst.id) is inst and inst.state in (InstanceState.LAUNCHING, InstanceState.SUSPECT):
            launching = inst.state is InstanceState.LAUNCHING
            if await _answers(inst, self.models if launching else ()):
                if self.registry.get(inst.id) is inst and inst.state in (InstanceState.LAUNCHING, InstanceState.SUSPECT):
                    log.info("instance %s instance=%s type=%s", "ready" if launching else "back", inst.id, inst.type)
                    self.registry.set_state(inst.id, InstanceState.READY)
                return
            await asyncio.sleep(READY_POLL_S if launching else SUSPECT_POLL_S)

    def _log_tail(self, instance_id: str) -> str:
        for p in self.providers:
            tail = getattr(p, "log_tail", None)
            if tail is not None:
                text = tail(instance_id, 3000)
                if text:
                    return f"; its output:\n{text}"
        return ""

    # ---- stop -----------------------------------------------------------------------------------
    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop reconciling; drain every managed instance (wait for in-flight queries), close clients;
        terminate the managed provider's instances when `terminate_on_stop` (local ones always stop), and
        stop the target's background work (a planner's Kairos+ walk) if it has a `close`."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        close = getattr(self.target_fn, "close", None)
        if callable(close):
            close()
        async with self._lock:
            for inst in list(self.registry):
                if inst.state in (InstanceState.READY, InstanceState.SUSPECT, InstanceState.LAUNCHING):
                    self.registry.set_state(inst.id, InstanceState.DRAINING)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + drain_timeout_s
            while any(i.in_flight for i in self.registry) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            for task in list(self._watchers.values()):
                task.cancel()
            instances = list(self.registry)
            for inst in instances:
                self.registry.set_state(inst.id, InstanceState.GONE)
            await asyncio.gather(*(_close_clients(i) for i in instances))
            for p in self.providers:
                if p.managed and (self.terminate_on_stop or p.name == "local"):
                    ids = [i.id for i in await p.list() if i.state.billed]
                    if ids:
                        log.info("terminating instances=%d provider=%s (daemon stopping)", len(ids), p.name)
                        await p.terminate(ids)
                await p.close()
        log.info("fleet stopped")

    # ---- reload ---------------------------------------------------------------------------------
    async def reconfigure(
        self,
        budget_usd_per_hour: float,
        params: AutoscaleParams,
        target_fn: TargetFn,
        *,
        period_s: float | None = None,
        prices: Mapping[str, float] | None = None,
        terminate_on_stop: bool | None = None,
    ) -> None:
        """Swap the fleet's settings between reconciles (under the reconcile lock, so one period sees
        either the old ones or the new ones): the budget, `decide`'s parameters, the target, the period.
        With `prices` (type → $/h), the providers offer and launch at the new prices and every billed
        instance counts at its type's new price in the committed cost."""
        async with self._lock:
            self.budget_usd_per_hour = budget_usd_per_hour
            self.params = params
            self.target_fn = target_fn
            if period_s is not None:
                self.period_s = period_s
            if terminate_on_stop is not None:
                self.terminate_on_stop = terminate_on_stop
            if prices is not None:
                self._prices = dict(prices)
                for p in self.providers:
                    types = getattr(p, "types", None)  # local, static and ec2 price their offerings from it
                    if isinstance(types, Mapping):
                        p.types = {n: replace(t, price_usd_per_hour=prices.get(n, t.price_usd_per_hour))  # type: ignore[attr-defined]
                                   for n, t in types.items()}
            self._record(self._members(self.listing, time.monotonic()))

    # ---- views ----------------------------------------------------------------------------------
    def committed_usd_per_hour(self) -> float:
        return sum(self._prices.get(p.type, p.price_usd_per_hour) for p in self.listing if p.state.billed)

    def members(self) -> list[Member]:
        return self._members(self.listing, time.monotonic())


def _pool_of(p: ProviderInstance) -> str:
    """The pool an instance counts in: its pool tag, else its type (shared)."""
    return p.tags.get(POOL_TAG, p.type)


async def _answers(inst: Instance, models: Sequence[str], timeout_s: float = 2.0) -> bool:
    try:
        control = inst.client.control
        if not await control.is_server_ready(client_timeout=timeout_s):
            return False
        for m in models:
            if not await control.is_model_ready(m, client_timeout=timeout_s):
                return False
        return True
    except Exception:  # noqa: BLE001 - not reachable (yet) means not ready
        return False


async def _close_clients(inst: Instance) -> None:
    try:
        await inst.client.close()
        if inst.http is not None:
            inst.http.close()
    except Exception:  # noqa: BLE001 - closing a dead channel may fail; nothing to do about it
        log.debug("closing clients of %s failed", inst.id, exc_info=True)


def budget_for(counts: Mapping[str, int], prices: Mapping[str, float]) -> float:
    """The hourly cost of a configuration (a static fleet's budget is its own cost)."""
    return float(sum(n * prices[t] for t, n in counts.items()))
