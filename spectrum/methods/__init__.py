"""The registry of merge methods: one module per method, each exporting ``METHOD``;
shared building blocks live in ``common/``.

``resolve_params(method, given)`` is the one place parameter values are checked: it fills
defaults, converts CLI strings ("0.8", "2") to the declared type and raises ``UserError``
naming the parameter and what is allowed.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Mapping
from typing import Any

from spectrum.errors import UserError
from spectrum.methods.common.base import MergeMethod, Param, Parents

__all__ = [
    "MergeMethod",
    "Param",
    "Parents",
    "REGISTRY",
    "get_method",
    "method_names",
    "resolve_params",
]

# Every module of this package but ``common`` is one method: adding a method is adding a file.
_found = [
    importlib.import_module(f"{__name__}.{module.name}").METHOD
    for module in pkgutil.iter_modules(__path__)
    if module.name != "common"
]
REGISTRY: dict[str, MergeMethod] = {
    method.name: method for method in sorted(_found, key=lambda m: (m.listed, m.name))
}


def method_names() -> list[str]:
    return list(REGISTRY)


def get_method(name: str) -> MergeMethod:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise UserError(f"unknown merge method {name!r}; known methods: {known}") from None


def _convert(param: Param, value: Any) -> Any:
    """``value`` as ``param.type``, or ValueError; bools are never numbers here."""
    if isinstance(value, bool):
        raise ValueError
    if param.type is int:
        number = float(value) if isinstance(value, str) else value
        if not isinstance(number, int | float) or number != int(number):
            raise ValueError
        return int(number)
    if param.type is float:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    if not isinstance(value, param.type):
        raise ValueError
    return value


def _check(method: MergeMethod, param: Param, value: Any) -> Any:
    label = f"{method.name} parameter {param.name}={value!r}"
    try:
        value = _convert(param, value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{label} is not a valid {param.type.__name__}") from None
    if param.choices is not None and value not in param.choices:
        raise UserError(f"{label} is not one of {', '.join(map(str, param.choices))}")
    if param.type not in (int, float):
        return value
    low = -math.inf if param.minimum is None else param.minimum
    high = math.inf if param.maximum is None else param.maximum
    if not low <= value <= high:
        raise UserError(f"{label} is out of range: allowed [{low}, {high}]")
    return value


def resolve_params(
    method: MergeMethod | str, given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Every declared parameter of ``method``: ``given`` values checked and typed, else defaults."""
    method = get_method(method) if isinstance(method, str) else method
    given = dict(given or {})
    declared = {param.name: param for param in method.params}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        allowed = ", ".join(declared) or "none"
        raise UserError(
            f"method {method.name} has no parameter {unknown[0]!r}; its parameters: {allowed}"
        )
    return {
        name: _check(method, param, given[name]) if name in given else param.default
        for name, param in declared.items()
    }
