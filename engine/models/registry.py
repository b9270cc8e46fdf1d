"""Model registry: `@register_model("name")` on a factory, `create_model("name", **kwargs)` to build one."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        assert name not in _MODELS, f"model {name!r} registered twice"
        _MODELS[name] = factory
        return factory

    return decorate


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the autoencoder registered as `name` (its `.encoder` exposes `features(x, layers)`)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_options(name: str) -> frozenset[str]:
    """The keyword options the factory registered as `name` accepts (e.g. whether it takes `input_size`)."""
    return frozenset(inspect.signature(_MODELS[name]).parameters) if name in _MODELS else frozenset()
