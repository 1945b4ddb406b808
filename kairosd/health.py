"""Readiness as a pure rule over the registry: a model is ready when a READY instance serves it.

An instance serves a model when it is READY and either unpinned (it serves every model) or pinned to
that model (`Instance.pinned_model`, a profile model index). The server is ready when its front ends
listen (and it accepts queries) and every served model is ready: one model with no instance is enough
to make it not ready, since its queries could only wait for their deadline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kairosd.registry import Instance, InstanceState


def ready_models(instances: Iterable[Instance], model_idx: Mapping[str, int]) -> set[str]:
    """The served models (`model_idx`: name → profile model index) with at least one READY instance
    serving them."""
    pinned: set[int] = set()
    for inst in instances:
        if inst.state is not InstanceState.READY:
            continue
        if inst.pinned_model is None:
            return set(model_idx)
        pinned.add(inst.pinned_model)
    return {m for m, i in model_idx.items() if i in pinned}


def is_ready(instances: Iterable[Instance], model_idx: Mapping[str, int], serving: bool) -> bool:
    """Whether the server is ready: `serving` (its front ends listen and it accepts queries) and every
    served model has a READY instance."""
    return serving and ready_models(instances, model_idx) == set(model_idx)


def model_ready(instances: Iterable[Instance], model_idx: Mapping[str, int], serving: bool, model: str) -> bool:
    """Whether one served model can take queries now: `serving` and a READY instance serves it."""
    return serving and model in model_idx and model in ready_models(instances, model_idx)
