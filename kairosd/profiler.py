"""Measure latency profiles against live instances: for each model × instance type × batch, send
queries one at a time through the same gRPC client the scheduler uses and record their service times,
with their mean and p99."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from tritonclient.grpc import service_pb2

from kairosd.backends.client import BackendClient
from kairosd.errors import ConfigError
from kairosd.profiles import ProfilePoint
from kairosd.repository import NP_TO_DTYPE

DEFAULT_BATCHES: tuple[int, ...] = (1, 8, 32, 64, 128, 256, 512, 1024)
# rounds of timing the midpoints where a model's p99 crosses its QoS target (`crossing_midpoints`), and the
# gap between two timed batches at or below which none is timed between them
REFINE_ROUNDS = 5
REFINE_RESOLUTION = 8
# the most batches the rounds add per model and type: a p99 that crosses QoS at several batches (slow queries
# at scattered batches) would otherwise have each crossing bisected
REFINE_MAX_BATCHES = 4


def profile_batches(max_batch: int, batches: Sequence[int] = DEFAULT_BATCHES) -> list[int]:
    """The batches a model whose largest batch is `max_batch` is timed at: those of `batches` up to
    `max_batch`, and `max_batch` itself. E.g. max_batch 1000: 1, 8, 32, …, 512, 1000.

    Why: the profile's mean past its largest timed batch is extrapolated on the last two points' slope,
    which understates a latency that grows faster than linearly in the batch. A type whose extrapolated
    p99 at the model's largest batches falls just under QoS is then planned as serving the whole mix,
    and a fleet of it misses QoS at every rate."""
    if max_batch < 1:
        raise ConfigError(f"a model's largest batch must be at least 1, got {max_batch}")
    if min(batches, default=1) < 1:
        raise ConfigError(f"batch sizes must be at least 1, got {sorted(batches)}")
    return sorted({b for b in batches if b <= max_batch} | {max_batch})


def crossing_midpoints(p99_s: Mapping[int, float], qos_s: float, resolution: int = REFINE_RESOLUTION) -> list[int]:
    """The batches to time next: the midpoint of each two neighbouring timed batches more than `resolution`
    apart whose p99s (`p99_s`: batch → seconds) lie on either side of the QoS target. E.g. p99 4 ms at 256
    and 9 ms at 512, QoS 6 ms → [384].

    Why: which batches a type serves within QoS is what the planner's bound and dispatcher read first
    (a batch whose p99 misses QoS goes to another type), and between two timed batches the profile
    interpolates: the boundary can be off by half the gap, and a type then planned as serving the whole
    mix alone serves a few percent of it late at every rate. Timing where the p99 crosses QoS finds the
    boundary for a few batches more per type, where denser grids time every batch whether it decides
    anything or not. The p99s are the timed ones, not the profile's running maximum (`monotone`): a p99 that
    falls back under QoS is refined too, since the planner reads each type's tail from the timed queries of
    the batch nearest (bench/planner_robust.py's measured profiles choose better so)."""
    timed = sorted(p99_s)
    pairs = zip(timed[:-1], timed[1:], strict=True)
    return [(a + b) // 2 for a, b in pairs if b - a > resolution and (p99_s[a] <= qos_s) != (p99_s[b] <= qos_s)]


def refine_batches(p99_s: Mapping[int, float], qos_s: float, added: int, max_added: int = REFINE_MAX_BATCHES) -> list[int]:
    """The next round's batches: `crossing_midpoints`, the lowest first, as many as `max_added` less the
    `added` ones the earlier rounds timed allow. The lowest crossing is where the type first stops serving
    the mix within QoS. E.g. crossings at 16, 144 and 384 with 2 added already: 16 and 144."""
    return crossing_midpoints(p99_s, qos_s)[:max(max_added - added, 0)]


def next_round(timed: Mapping[int, np.ndarray], qos_s: float, first: int) -> list[int]:
    """`refine_batches` on timed service times (batch → seconds): their p99s, with the batches past the
    `first` ones counted as added by earlier rounds."""
    return refine_batches({b: float(np.percentile(v, 99)) for b, v in timed.items()}, qos_s, len(timed) - first)


def build_request(model: str, inputs: dict[str, np.ndarray], request_id: str = "") -> service_pb2.ModelInferRequest:
    """A ModelInferRequest carrying `inputs` as raw little-endian tensor bytes (what tritonclient sends)."""
    req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, arr in inputs.items():
        t = req.inputs.add()
        t.name = name
        t.datatype = NP_TO_DTYPE[arr.dtype]
        t.shape.extend(arr.shape)
        req.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
    return req


async def time_batches(
    client: BackendClient,
    model: str,
    batches: Sequence[int],
    reps: int,
    warmup: int = 3,
) -> dict[int, np.ndarray]:
    """Each batch's `reps` service times (seconds), timed one query at a time (one in flight, as the
    scheduler sends them to a 1-slot instance) after `warmup` untimed ones."""
    from kairosd.modelgen import example_inputs

    out: dict[int, np.ndarray] = {}
    for b in batches:
        req = build_request(model, example_inputs(model, b, seed=b))
        samples = []
        for k in range(warmup + reps):
            t0 = time.perf_counter()
            await client.infer(req, timeout_s=60.0)
            if k >= warmup:
                samples.append(time.perf_counter() - t0)
        out[b] = np.array(samples)
    return out


async def time_profile(client: BackendClient, model: str, batches: Sequence[int], reps: int, qos_s: float,
                       rounds: int = REFINE_ROUNDS) -> dict[int, np.ndarray]:
    """`time_batches` at `batches`, then up to `rounds` times at the midpoints where the p99 crosses
    `qos_s` (`refine_batches`: at most `REFINE_MAX_BATCHES` in all); every batch's service times, by batch."""
    timed = await time_batches(client, model, batches, reps)
    for _ in range(rounds):
        more = next_round(timed, qos_s, len(set(batches)))
        if not more:
            break
        timed.update(await time_batches(client, model, more, reps))
    return dict(sorted(timed.items()))


def points_of(instance_type: str, samples: Mapping[int, np.ndarray]) -> list[ProfilePoint]:
    """A profile row per timed batch: the mean and the 99th percentile of its service times."""
    return [ProfilePoint(instance_type, b, float(np.mean(v)), float(np.percentile(v, 99))) for b, v in samples.items()]


def monotone(points: Iterable[ProfilePoint]) -> list[ProfilePoint]:
    """Make latency non-decreasing in batch per type (measurement noise on a shared 2-core machine
    can make a larger batch look faster, which would make the matching prefer odd splits)."""
    out: list[ProfilePoint] = []
    by_type: dict[str, list[ProfilePoint]] = {}
    for p in points:
        by_type.setdefault(p.instance_type, []).append(p)
    for t, pts in by_type.items():
        mean = p99 = 0.0
        for p in sorted(pts, key=lambda p: p.batch):
            mean, p99 = max(mean, p.mean_s), max(p99, p.p99_s, p.mean_s)
            out.append(ProfilePoint(t, p.batch, mean, p99))
    return out
