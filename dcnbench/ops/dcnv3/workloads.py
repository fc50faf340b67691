"""DCNv3's cases: the frozen case spec and the seeded tensors it stands for (DCNv4's cases build on it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from dcnbench.errors import UsageError
from dcnbench.ops.case import DTYPES, Case, drawn_values, noncontiguous
from dcnbench.ops.dcnv3.contract import GroupGeometry, float32, kernel_points
from dcnbench.ops.deform_conv2d.workloads import nudge_from_integers

# Offset distributions; s = case.offset_scale (the spread, in pixels of offset before the op's
# offset_scale multiplies it). A sampling coordinate is p = p0 + (k·dil + offset)·os.
#   uniform:   offset ~ U(-s, s), both components
#   positive:  offset ~ U(0, s), both components (InternImage's test.py: rand·10, most points
#              leave an 8x8 map to the right and below, many outputs are exactly 0)
#   zero:      all zero (the plain grid; integer positions when os = 1)
#   border:    p drawn in the two border bands of each axis, [-1.5, 1] and [size-2, size+0.5]
#   interior:  p drawn inside [0.5, size-1.5], never near an edge
OFFSET_KINDS = ("uniform", "positive", "zero", "border", "interior")
# Mask distributions:
#   softmax:  a per-group softmax over the P points of N(0, 1) logits (what the DCNv3 module feeds)
#   uniform:  U(0.2, 1.8), unnormalised (what DCNv4's linear layer gives)
#   logits:   N(0, 1), for the DCNv4 softmax flag to normalise
#   halves:   +8 for the first half of each group's points (P // 2 of them, in the op's order), -4 for
#             the rest: unnormalised, so the running sum over the points peaks half way through
MASK_KINDS = ("softmax", "uniform", "logits", "halves")
HALVES = (8.0, -4.0)

# Large values (ops/case.py's LARGE_VALUES) with the `halves` mask: the four points at +8 take the
# running sum over the points to about 78000, past 65504, while the output (about 3.1e4 for 9 points,
# 4.0e4 for 8) and every gradient stay in float16's range. The mask is 8, not 1, so that the values
# stay small enough for the mask gradient (a sum over a group's channels of value times cotangent) to
# stay in range too.


@dataclass(frozen=True, kw_only=True)
class Dcnv3Case(Case):
    geometry: GroupGeometry
    mask: str = "softmax"
    # "large": input values whose point sums pass float16's range (case.py's LARGE_VALUES); None: N(0, 1). Left out of
    # the definition when None, so older cases keep their digests.
    values: str | None = None

    differentiable: ClassVar[tuple[str, ...]] = ("input", "offset", "mask")
    geometry_type: ClassVar[type] = GroupGeometry

    @property
    def variant(self) -> str:
        return "v3"

    def inputs(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        tensors = drawn(self, gen)
        return {name: placed(self, t, device) for name, t in tensors.items()}

    def call(self, fn, t: dict[str, torch.Tensor]):
        return fn(t["input"], t["offset"], t["mask"], *self.geometry.args())

    @classmethod
    def for_speed(cls, s) -> "Dcnv3Case":
        """Offsets uniform in ±offset_scale px, a softmaxed mask as the DCNv3 module feeds."""
        return cls(name="speed", geometry=s.geometry, dtype=s.dtype, offset_scale=s.offset_scale, seed=s.seed,
                   kink_margin=None)


def placed(case: Case, t: torch.Tensor, device: str) -> torch.Tensor:
    t = t.to(DTYPES[case.dtype]).to(device)
    return t if case.contiguous else noncontiguous(t)


def grid(geo: GroupGeometry) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The coordinates p0 + k·dil·os where zero offsets sample, as y (1, Ho, 1, 1, P) and x (1, 1, Wo, 1, P)."""
    os_ = float32(geo.offset_scale)
    pts = kernel_points(geo.kh, geo.kw, geo.remove_center)
    cy = geo.dilation[0] * (geo.kh - 1) // 2
    cx = geo.dilation[1] * (geo.kw - 1) // 2
    kj = torch.tensor([j * geo.dilation[0] for _, j in pts], dtype=torch.float64)
    ki = torch.tensor([i * geo.dilation[1] for i, _ in pts], dtype=torch.float64)
    p0y = torch.arange(geo.ho, dtype=torch.float64) * geo.stride[0] + cy - geo.padding[0] - cy * os_
    p0x = torch.arange(geo.wo, dtype=torch.float64) * geo.stride[1] + cx - geo.padding[1] - cx * os_
    return (p0y.view(1, -1, 1, 1, 1) + kj * os_), (p0x.view(1, 1, -1, 1, 1) + ki * os_), os_


def offsets(case: Case, gen: torch.Generator) -> torch.Tensor:
    """(N, Ho, Wo, G, P, 2) float64 offsets (dx, dy) of the case's kind, every sampling coordinate
    kept at least the kink margin (and two ulps of the dtype, scaled by os) from an integer."""
    geo = case.geometry
    shape = (geo.n, geo.ho, geo.wo, geo.group, geo.points)
    gy, gx, os_ = grid(geo)
    s = case.offset_scale

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)

    def in_bands(size):
        low, high = uniform(-1.5, 1.0), uniform(size - 2.0, size + 0.5)
        return torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5, low, high)

    kind = case.offsets
    if kind == "uniform":
        dy, dx = uniform(-s, s), uniform(-s, s)
    elif kind == "positive":
        dy, dx = uniform(0, s), uniform(0, s)
    elif kind == "zero":
        dy = dx = torch.zeros(shape, dtype=torch.float64)
    elif kind in ("border", "interior"):
        if kind == "border":
            py, px = in_bands(geo.h), in_bands(geo.w)
        else:
            py, px = uniform(0.5, max(geo.h - 1.5, 0.5)), uniform(0.5, max(geo.w - 1.5, 0.5))
        if os_ == 0:
            raise UsageError("border and interior offsets need offset_scale != 0", hint="pick another offset kind")
        dy, dx = (py - gy) / os_, (px - gx) / os_
    else:
        raise UsageError(f"unknown offset distribution '{kind}'", hint=f"choose from: {', '.join(OFFSET_KINDS)}")
    if case.kink_margin is not None and os_ != 0:
        # The margin must survive rounding the offset to the case's dtype, which moves p by up to
        # half an ulp of the offset times os.
        biggest = max(float(dy.abs().max()) if dy.numel() else 0.0, float(dx.abs().max()) if dx.numel() else 0.0, 1.0)
        ulp = torch.finfo(DTYPES[case.dtype]).eps * 2.0 ** math.floor(math.log2(biggest))
        margin = max(case.kink_margin, 2 * ulp * max(abs(os_), 1.0))
        dy = (nudge_from_integers(gy + dy * os_, margin) - gy) / os_
        dx = (nudge_from_integers(gx + dx * os_, margin) - gx) / os_
    return torch.stack([dx, dy], dim=-1)


def mask(case: Case, gen: torch.Generator) -> torch.Tensor:
    """(N, Ho, Wo, G, P) float64 mask of the case's kind."""
    geo = case.geometry
    shape = (geo.n, geo.ho, geo.wo, geo.group, geo.points)
    if case.mask == "softmax":
        return torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), dim=-1)
    if case.mask == "uniform":
        return 0.2 + 1.6 * torch.rand(shape, generator=gen, dtype=torch.float64)
    if case.mask == "logits":
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    if case.mask == "halves":
        high, low = HALVES
        return torch.where(torch.arange(geo.points) < geo.points // 2, high, low).to(torch.float64).expand(shape).clone()
    raise UsageError(f"unknown mask distribution '{case.mask}'", hint=f"choose from: {', '.join(MASK_KINDS)}")


def drawn(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """input (N, H, W, C), offset (N, Ho, Wo, G·P·2) and mask (N, Ho, Wo, G·P), float64, from the seed."""
    geo = case.geometry
    x = torch.randn(geo.n, geo.h, geo.w, geo.c, generator=gen, dtype=torch.float64)
    x = drawn_values(x, case.values)
    off = offsets(case, gen).reshape(geo.n, geo.ho, geo.wo, geo.group * geo.points * 2)
    m = mask(case, gen).reshape(geo.n, geo.ho, geo.wo, geo.group * geo.points)
    return {"input": x, "offset": off, "mask": m}


def probe_cases(dtype: str) -> list[Dcnv3Case]:
    """One small call whose output's shape differs from the input's."""
    geo = GroupGeometry(n=1, h=5, w=6, group=2, group_channels=8, kh=3, kw=3)
    return [Dcnv3Case(name="probe", geometry=geo, dtype=dtype)]
