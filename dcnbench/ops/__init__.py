"""The operators dcnbench knows: one folder each, listed once here.

Each folder (`deform_conv2d/`, `deform_roi_pool/`, `deform_psroi_pool/`, `dcnv3/`, `dcnv4/`, `ms_deform_attn/`) holds the operator's
contract (geometry, validation, shape grammar, presets), its workloads (case spec and seeded
inputs), its default suite, its references and identities, and its float64 oracle; its
`__init__` exposes one `SPEC` (spec.py). Adding an operator is adding a folder and one line below.
"""

from __future__ import annotations

import importlib

from dcnbench.errors import UsageError
from dcnbench.ops.spec import OpSpec

# Display and suite order.
_BUILTIN = (
    "deform_conv2d",
    "deform_roi_pool",
    "deform_psroi_pool",
    "dcnv3",
    "dcnv4",
    "ms_deform_attn",
)

_registry: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    """Add an operator (the built-ins register on first use; tests and extensions may add more)."""
    _registry[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _registry.pop(name, None)


def _load_builtins() -> None:
    for name in _BUILTIN:
        if name not in _registry:
            register(importlib.import_module(f"dcnbench.ops.{name}").SPEC)


def is_builtin(name: str) -> bool:
    """Whether `name` is a built-in operator (one a fresh process knows without being told)."""
    return name in _BUILTIN


def all_ops() -> list[OpSpec]:
    _load_builtins()
    builtin = [_registry[n] for n in _BUILTIN]
    return builtin + [s for n, s in _registry.items() if n not in _BUILTIN]


def names() -> list[str]:
    return [s.name for s in all_ops()]


def get(name: str) -> OpSpec:
    _load_builtins()
    if name not in _registry:
        raise UsageError(f"unknown --op '{name}'", hint=f"choose from: {', '.join(names())}")
    return _registry[name]


def check_ops(ops: list[str] | None) -> list[str] | None:
    for op in ops or []:
        get(op)
    return ops


def preset_names() -> list[str]:
    return list(dict.fromkeys(p for s in all_ops() for p in s.presets))


def preset(name: str, op: str | None = None) -> list:
    """The geometries a preset names (of `op` only, when given), parsed in each op's grammar."""
    if name not in preset_names():
        raise UsageError(f"unknown preset '{name}'", hint=f"choose from: {', '.join(preset_names())}")
    found = [spec.parse_shape(text) for spec in all_ops() if op in (None, spec.name)
             for text in spec.presets.get(name, ())]
    if not found:
        raise UsageError(f"preset '{name}' has no {op} workload", hint=f"drop --op, or pick a preset for {op}")
    return found


def of(geometry_or_case) -> OpSpec:
    """The spec of a geometry or case (both carry the op's name as `.op`)."""
    return get(geometry_or_case.op)
