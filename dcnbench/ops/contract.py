"""Contract helpers every operator shares; torch-free, so shape grammars and presets can be read
(for `--help` and usage errors) without importing torch."""

from __future__ import annotations

from dataclasses import fields


# Bytes per element of each dtype a case may name (torch-free, for cost estimates).
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


def out_size(size: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


def geometry_from_dict(cls, d: dict):
    """A geometry dataclass from its asdict() form (JSON turns tuples into lists)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def hw_text(p: tuple[int, int]) -> str:
    """(h, w) as the shape grammars write it: `2` when equal, else `2x1`."""
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"
