"""The readiness rule (`kairosd.health`) over hand-built registries, pinned instances included."""

from __future__ import annotations

from typing import Any, cast

from kairosd.backends.client import BackendClient
from kairosd.health import is_ready, model_ready, ready_models
from kairosd.registry import Instance, InstanceState, Registry

MODELS = {"dlrm": 0, "ncf": 1}


def make_instance(id: str, state: InstanceState = InstanceState.READY, pinned_model: int | None = None,
                  **kw: Any) -> Instance:
    return Instance(id=id, type="ort-1t", type_idx=0, address="127.0.0.1:1", slots=1,
                    client=cast(BackendClient, None), state=state, pinned_model=pinned_model, **kw)


def registry(*instances: Instance) -> Registry:
    r = Registry()
    for i in instances:
        r.add(i)
    return r


def test_no_instance_no_model_ready() -> None:
    assert ready_models(registry(), MODELS) == set()
    assert not is_ready(registry(), MODELS, serving=True)
    assert not model_ready(registry(), MODELS, True, "dlrm")


def test_one_unpinned_ready_instance_serves_every_model() -> None:
    r = registry(make_instance("a"))
    assert ready_models(r, MODELS) == {"dlrm", "ncf"}
    assert is_ready(r, MODELS, serving=True)
    assert model_ready(r, MODELS, True, "ncf")


def test_front_ends_not_listening_is_not_ready() -> None:
    r = registry(make_instance("a"))
    assert not is_ready(r, MODELS, serving=False)
    assert not model_ready(r, MODELS, False, "dlrm")


def test_only_ready_instances_count() -> None:
    for state in (InstanceState.LAUNCHING, InstanceState.SUSPECT, InstanceState.DRAINING):
        r = registry(make_instance("a", state), make_instance("b", state, pinned_model=1))
        assert ready_models(r, MODELS) == set(), state
        assert not is_ready(r, MODELS, serving=True)


def test_a_pinned_instance_counts_for_its_model_only() -> None:
    r = registry(make_instance("a", pinned_model=0), make_instance("b", InstanceState.LAUNCHING, pinned_model=1))
    assert ready_models(r, MODELS) == {"dlrm"}
    assert not is_ready(r, MODELS, serving=True)  # ncf has no ready instance: not ready
    assert model_ready(r, MODELS, True, "dlrm") and not model_ready(r, MODELS, True, "ncf")
    r.set_state("b", InstanceState.READY)
    assert ready_models(r, MODELS) == {"dlrm", "ncf"} and is_ready(r, MODELS, serving=True)


def test_an_unpinned_instance_covers_the_models_no_pinned_one_serves() -> None:
    r = registry(make_instance("a", pinned_model=0), make_instance("b", InstanceState.DRAINING),
                 make_instance("c"))
    assert is_ready(r, MODELS, serving=True)
    r.set_state("c", InstanceState.SUSPECT)
    assert ready_models(r, MODELS) == {"dlrm"} and not is_ready(r, MODELS, serving=True)


def test_unknown_model_is_not_ready() -> None:
    r = registry(make_instance("a"))
    assert not model_ready(r, MODELS, True, "nope")
