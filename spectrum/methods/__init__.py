"""The registry of merge methods: one module per method, each exporting ``METHOD``."""

from __future__ import annotations

import importlib

from spectrum.methods.base import MergeMethod, Param, Parents

__all__ = ["MergeMethod", "Param", "Parents", "REGISTRY", "get_method", "method_names"]

# Order is the order users see (CLI listing, UI dropdown).
_MODULES = ("linear",)

REGISTRY: dict[str, MergeMethod] = {}
for _module in _MODULES:
    _method = importlib.import_module(f"spectrum.methods.{_module}").METHOD
    REGISTRY[_method.name] = _method


def method_names() -> list[str]:
    return list(REGISTRY)


def get_method(name: str) -> MergeMethod:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise ValueError(f"unknown merge method {name!r}; known methods: {known}") from None
