"""What every operator's cases share: the frozen case base (id, digest, serialisation), dtypes,
the seeded cotangent and the non-contiguous view.

A case is hashable and fully describes its inputs (geometry, dtype, offset distribution, seed), so
it doubles as the key for grouping results and for comparing runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def digest_of(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Where a case plants non-finite values (Case.poison), and the values it plants, in turn.
POISONS = ("unread", "read")
NON_FINITE = (float("inf"), float("nan"), float("-inf"))


def non_finite_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor of t's shape holding +Inf, NaN and -Inf in turn."""
    cycle = torch.tensor(NON_FINITE, dtype=t.dtype, device=t.device)
    return cycle[torch.arange(t.numel(), device=t.device) % 3].reshape(t.shape)


# Failure class "float16/bfloat16 overflow": values L·(1 + N(0, 1)/50), L = 2400, in both half types,
# for the ops whose sums run over many samples of one sign (DCNv3/DCNv4's points under a +8/-4 mask,
# the RoI poolings' bins): the sums pass 65504 while the results stay in range (each op's suite says
# how), so a kernel that sums in float16, or computes bfloat16 through float16, gives Inf where the
# float64 result is finite. (Values past 65504 themselves would give terms of both signs infinite,
# so NaN, which names nothing.)
LARGE_VALUES = 2400.0


def drawn_values(x: torch.Tensor, values: str | None) -> torch.Tensor:
    """The N(0, 1) draws `x` as the case's `values` ask: as they are (None) or "large" (LARGE_VALUES)."""
    if values == "large":
        return LARGE_VALUES * (1 + x / 50)
    if values is not None:
        from dcnbench.errors import UsageError

        raise UsageError(f"unknown values '{values}'", hint="choose large, or leave it out")
    return x


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as a strided, non-contiguous view (every other element of a wider buffer)."""
    return torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]


@dataclass(frozen=True, kw_only=True)
class Case:
    """One seeded problem for one operator. Subclasses add the operator's own options and say how
    to draw the tensors (`inputs`) and how to call a backend with them (`call`)."""

    name: str
    geometry: object  # the op's frozen geometry dataclass; its `op` names the operator
    dtype: str = "float64"
    offsets: str = "uniform"
    offset_scale: float = 1.0
    contiguous: bool = True
    check: str = "oracle"  # "oracle", an identity the op's spec names, "gradcheck", or "export" (onnx_export.py)
    seed: int = 0
    # Every sampling coordinate stays at least this far from the op's kinks, so gradients are
    # two-sided; None leaves coordinates as drawn (identities need integers).
    kink_margin: float | None = 1e-3
    # "channels_last": every 4-D tensor the backend receives is in channels-last memory (None: as
    # `contiguous` says). Left out of the definition when None, so older cases keep their digests.
    memory_format: str | None = None
    # Non-finite values planted in the inputs (POISONS): "unread" puts NaN/Inf only in pixels no
    # sample reads, "read" also in a few that some samples read. None (no poison) is left out of the
    # definition.
    poison: str | None = None
    # False: the backward runs under the random cotangent alone, not also under the other layouts
    # (checking/runs.py). For the largest cases, whose point is elsewhere (a batch chunk): every
    # other case runs the layouts, and three more backwards there cost 45 % of their rows. None (every
    # layout) is left out of the definition, so the other cases keep their digests.
    cotangent_layouts: bool | None = None

    differentiable: ClassVar[tuple[str, ...]] = ()
    geometry_type: ClassVar[type]  # the op's geometry dataclass

    @property
    def op(self) -> str:
        return self.geometry.op

    @property
    def case_id(self) -> str:
        return f"{self.name}/{self.dtype}"

    @property
    def variant(self) -> str:
        """A short label of the op's variant (e.g. DCNv1/v2): backends may declare a dialect per variant."""
        raise NotImplementedError

    @property
    def shape_text(self) -> str:
        return self.geometry.shape_text

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.geometry.output_shape

    def inputs(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def call(self, fn, tensors: dict[str, torch.Tensor]):
        raise NotImplementedError

    def arrange(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor laid out as the case asks: contiguous, a strided view, or channels-last."""
        if self.memory_format == "channels_last" and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t if self.contiguous else noncontiguous(t)

    def reference_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inputs the reference computes with. With poison "unread" the non-finite pixels are
        zeroed: nothing reads them, so the result must be the one the same map with zeros gives
        (which does not trust the oracle's own isolation). With "read" the reference sees them:
        the oracle's non-finite pattern is checked against an independent model in the tests."""
        if self.poison != "unread":
            return inputs
        x = inputs["input"]
        return inputs | {"input": torch.where(x.isfinite(), x, torch.zeros_like(x))}

    def unsupported_by(self, fn) -> str | None:
        """Why the callable `fn` cannot take this case although its backend runs the op (e.g. an
        optional argument its signature lacks), or None."""
        return None

    def definition(self) -> dict:
        """The case as plain data (optional fields left at None are not part of it)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k == "kink_margin"}

    def digest(self, **extra) -> str:
        """Hash of everything that defines the workload (for comparing runs), plus `extra`."""
        return digest_of(self.definition() | extra)

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        """The case a `definition()` describes (a results record's `case`, a worker's spec)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known} | {"geometry": cls.geometry_type.from_dict(d["geometry"])})

    @classmethod
    def for_speed(cls, s) -> "Case":
        """The case whose inputs `speed` times every backend on, for the SpeedCase `s`."""
        raise NotImplementedError


def cotangent(case: Case, device: str = "cpu") -> torch.Tensor:
    """The seeded cotangent every backward receives (verify, speed, out-of-process backends), in
    the case's dtype. Random, never ones: sum() hides sign and permutation errors."""
    gen = torch.Generator().manual_seed(case.seed + 104729)
    c = torch.randn(case.output_shape, generator=gen, dtype=torch.float64)
    return c.to(DTYPES[case.dtype]).to(device)

