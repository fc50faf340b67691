"""DCNv4's cases: DCNv3's (ops/dcnv3/workloads.py) with the offsets and mask packed into offset_mask,
and its padding lanes filled with NaN (a kernel that reads them, even to multiply by 0, fails)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch

from dcnbench.errors import UsageError
from dcnbench.ops.dcnv3.workloads import Dcnv3Case, drawn, placed
from dcnbench.ops.dcnv4.contract import Dcnv4Geometry
from dcnbench.ops.dcnv4.oracle import pack

PAD_LANES = {"nan": float("nan"), "zero": 0.0}


def takes_softmax(fn) -> bool:
    """Whether `fn` accepts the `softmax` keyword (True when its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "softmax" or p.kind == p.VAR_KEYWORD for p in params)


@dataclass(frozen=True, kw_only=True)
class Dcnv4Case(Dcnv3Case):
    geometry: Dcnv4Geometry
    mask: str = "uniform"
    pad_lanes: str = "nan"  # what the packed padding lanes hold

    differentiable: ClassVar[tuple[str, ...]] = ("input", "offset_mask")
    geometry_type: ClassVar[type] = Dcnv4Geometry

    @property
    def variant(self) -> str:
        return "v4"

    def inputs(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        if self.pad_lanes not in PAD_LANES:
            raise UsageError(f"unknown pad_lanes '{self.pad_lanes}'", hint=f"choose from: {', '.join(PAD_LANES)}")
        gen = torch.Generator().manual_seed(self.seed)
        t = drawn(self, gen)
        packed = pack(t["offset"], t["mask"], self.geometry.group, self.geometry.cpad, PAD_LANES[self.pad_lanes])
        return {"input": placed(self, t["input"], device), "offset_mask": placed(self, packed, device)}

    def call(self, fn, t: dict[str, torch.Tensor]):
        extra = {"softmax": True} if self.geometry.softmax else {}
        return fn(t["input"], t["offset_mask"], *self.geometry.args(), **extra)

    def unsupported_by(self, fn) -> str | None:
        if self.geometry.softmax and not takes_softmax(fn):
            return "takes no softmax argument (DCNv4Function has none; the flag is the extension's)"
        return None

    @classmethod
    def for_speed(cls, s) -> "Dcnv4Case":
        """Offsets uniform in ±offset_scale px, an unnormalised mask, zero padding lanes."""
        return cls(name="speed", geometry=s.geometry, dtype=s.dtype, offset_scale=s.offset_scale, seed=s.seed,
                   kink_margin=None, pad_lanes="zero")


def probe_cases(dtype: str) -> list[Dcnv4Case]:
    """One small call whose output's shape differs from the input's (finite padding lanes: the
    probe asks only whether the callable runs)."""
    geo = Dcnv4Geometry(n=1, h=5, w=6, group=2, group_channels=8, kh=3, kw=3)
    return [Dcnv4Case(name="probe", geometry=geo, dtype=dtype, pad_lanes="zero")]
