"""deform_conv2d's cases: the frozen case spec and the seeded tensors it stands for."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from dcnbench.errors import UsageError
from dcnbench.timing.limits import Cost
from dcnbench.ops.case import DTYPES, Case, non_finite_like
from dcnbench.ops.contract import ITEMSIZE
from dcnbench.ops.deform_conv2d.contract import ConvGeometry

# Offset distributions. Sampling coordinate p = base + offset, base = output*stride - pad + tap*dil.
#   uniform:     offset ~ U(-scale, scale), both components
#   anisotropic: dy ~ U(-scale, scale), dx ~ U(-scale/10, scale/10)
#   integer:     one integer shift (dy, dx) = (round(scale), -round(scale/2)) for every tap and position
#   zero:        all zero
#   border:      p drawn in the two border bands of each axis, [-1.5, 1] and [size-2, size+0.5]
#   interior:    p drawn inside [0.5, size-1.5], never near an edge
#   band-low:    py in the low band (-1, 0), px interior: where rules Z and C differ, one band at a time
#   band-high:   py in the high band (H-1, H), px interior
#   fenced:      py in [2.5, H-1.5], px in [0.5, W/2-1.5], and a quarter of the samples far outside
#                the map instead: no sample reads rows 0-1 or the columns from W/2 on (FENCED_OFF)
OFFSET_KINDS = ("uniform", "anisotropic", "integer", "zero", "border", "interior", "band-low", "band-high", "fenced")


@dataclass(frozen=True, kw_only=True)
class ConvCase(Case):
    geometry: ConvGeometry
    mask: bool = True  # DCNv2 when True, DCNv1 when False
    bias: bool = True
    # "large": input values near the half types' range (LARGE_VALUES); None: N(0, 1). Left out of
    # the definition when None, so older cases keep their digests.
    values: str | None = None

    differentiable: ClassVar[tuple[str, ...]] = ("input", "offset", "mask", "weight", "bias")
    geometry_type: ClassVar[type] = ConvGeometry

    @property
    def variant(self) -> str:
        return "v2" if self.mask else "v1"

    def inputs(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        return make_inputs(self, device)

    def call(self, fn, t: dict[str, torch.Tensor]):
        geo = self.geometry
        return fn(t["input"], t["offset"], t["weight"], t.get("bias"), stride=geo.stride,
                  padding=geo.padding, dilation=geo.dilation, mask=t.get("mask"))

    @classmethod
    def for_speed(cls, s) -> "ConvCase":
        """Offsets uniform in ±offset_scale, DCNv2 unless --dcn v1."""
        return cls(name="speed", geometry=s.geometry, mask=s.mask, dtype=s.dtype, offset_scale=s.offset_scale,
                   seed=s.seed, kink_margin=None)


def _base_coords(size: int, out: int, k: int, stride: int, pad: int, dil: int) -> torch.Tensor:
    """(K, out) integer grid positions before offsets, float64."""
    o = torch.arange(out, dtype=torch.float64)
    t = torch.arange(k, dtype=torch.float64)
    return o[None, :] * stride - pad + t[:, None] * dil


def nudge_from_integers(p: torch.Tensor, margin: float) -> torch.Tensor:
    """p moved to at least `margin` from the nearest integer (the bilinear kinks)."""
    nearest = torch.round(p)
    frac = p - nearest
    away = torch.where(frac >= 0, torch.full_like(p, margin), torch.full_like(p, -margin))
    return torch.where(frac.abs() < margin, nearest + away, p)


def _offsets(case: ConvCase, gen: torch.Generator) -> torch.Tensor:
    geo = case.geometry
    g, kh, kw, ho, wo = geo.offset_groups, geo.kh, geo.kw, geo.ho, geo.wo
    by = _base_coords(geo.h, ho, kh, geo.stride[0], geo.padding[0], geo.dilation[0])  # (kh, Ho)
    bx = _base_coords(geo.w, wo, kw, geo.stride[1], geo.padding[1], geo.dilation[1])  # (kw, Wo)
    # Broadcast to (N, G, kh, kw, Ho, Wo); taps row-major as the layout requires.
    by = by[None, None, :, None, :, None].expand(geo.n, g, kh, kw, ho, wo)
    bx = bx[None, None, None, :, None, :].expand(geo.n, g, kh, kw, ho, wo)
    shape = by.shape
    s = case.offset_scale

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)

    def in_bands(size):
        # Half the points in the low band, half in the high band.
        low = uniform(-1.5, 1.0)
        high = uniform(size - 2.0, size + 0.5)
        return torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5, low, high)

    kind = case.offsets
    if kind == "uniform":
        dy, dx = uniform(-s, s), uniform(-s, s)
    elif kind == "anisotropic":
        dy, dx = uniform(-s, s), uniform(-s / 10, s / 10)
    elif kind == "integer":
        dy = torch.full(shape, float(round(s)), dtype=torch.float64)
        dx = torch.full(shape, float(-round(s / 2)), dtype=torch.float64)
    elif kind == "zero":
        dy = dx = torch.zeros(shape, dtype=torch.float64)
    elif kind == "border":
        dy, dx = in_bands(geo.h) - by, in_bands(geo.w) - bx
    elif kind == "interior":
        dy = uniform(0.5, max(geo.h - 1.5, 0.5)) - by
        dx = uniform(0.5, max(geo.w - 1.5, 0.5)) - bx
    elif kind == "fenced":
        far = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.25
        above = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5
        py = torch.where(far, torch.where(above, uniform(-4.0, -1.5), uniform(geo.h + 0.5, geo.h + 3.0)),
                         uniform(2.5, max(geo.h - 1.5, 2.5)))
        dy = py - by
        dx = uniform(0.5, max(geo.w // 2 - 1.5, 0.5)) - bx
    elif kind in ("band-low", "band-high"):
        lo = -0.95 if kind == "band-low" else geo.h - 0.95
        dy = uniform(lo, lo + 0.9) - by
        dx = uniform(0.5, max(geo.w - 1.5, 0.5)) - bx
    else:
        raise UsageError(f"unknown offset distribution '{kind}'", hint=f"choose from: {', '.join(OFFSET_KINDS)}")
    if case.kink_margin is not None:
        # The margin must survive rounding to the case's dtype: at least two ulps of the largest offset.
        biggest = max(float(dy.abs().max()) if dy.numel() else 0.0, float(dx.abs().max()) if dx.numel() else 0.0, 1.0)
        ulp = torch.finfo(DTYPES[case.dtype]).eps * 2.0 ** math.floor(math.log2(biggest))
        margin = max(case.kink_margin, 2 * ulp)
        dy = nudge_from_integers(by + dy, margin) - by
        dx = nudge_from_integers(bx + dx, margin) - bx
    # (N, G, kh, kw, 2, Ho, Wo) -> (N, 2*G*K, Ho, Wo): channel 2*(g*K + k) is dy, the next dx.
    return torch.stack([dy, dx], dim=4).reshape(geo.n, 2 * g * kh * kw, ho, wo)


def make_inputs(case: ConvCase, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The case's tensors in its dtype on `device`: input, offset, weight and, if used, mask, bias.

    Values are drawn in float64 from the case's seed, so the same case gives the same tensors on
    every machine; the offsets are placed after rounding to the dtype, so the kink margin holds
    for the values the backend actually sees.
    """
    geo = case.geometry
    gen = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    fan_in = max(1, (geo.c // geo.groups) * geo.taps)
    tensors = {
        "input": torch.randn(geo.n, geo.c, geo.h, geo.w, generator=gen, dtype=torch.float64),
        "offset": _offsets(case, gen),
        "weight": torch.randn(geo.o, geo.c // geo.groups, geo.kh, geo.kw, generator=gen, dtype=torch.float64)
        / math.sqrt(fan_in),
    }
    if case.mask:
        # Modulation in [0.2, 1.8]: the range of MSRA's 2*sigmoid, away from 0 so gradients flow.
        m = 0.2 + 1.6 * torch.rand(geo.n, geo.offset_groups * geo.taps, geo.ho, geo.wo, generator=gen, dtype=torch.float64)
        tensors["mask"] = torch.ones_like(m) if case.check == "zero_offset" else m
        if case.check == "zero_mask":
            tensors["mask"] = torch.zeros_like(m)
    if case.bias:
        tensors["bias"] = torch.randn(geo.o, generator=gen, dtype=torch.float64)
    if case.values == "large":
        _large_values(case, tensors)
    elif case.values is not None:
        raise UsageError(f"unknown values '{case.values}'", hint="choose large, or leave it out")
    if case.poison:
        _poison(case, tensors)
    out = {}
    for name, t in tensors.items():
        t = t.to(dtype).to(device)
        out[name] = case.arrange(t)
    return out


# Values near the half types' range limits, by dtype (failure class "float16/bfloat16 overflow"):
#   float16:  ±2500, + for the first half of the channels, − for the rest, plus N(0, 1), and weights
#             |N(0, 1)|/4: a sum over C·kh·kw of about 500 terms passes 65504 half way through while
#             the result and every gradient stay below about 45000 (a kernel accumulating in float16
#             overflows to Inf where the float64 result is finite);
#   others:   +1e5 plus N(0, 1), the same weights: past float16's range, well inside bfloat16's (a
#             kernel that computes bfloat16 through float16 overflows).
LARGE_VALUES = {"float16": 2500.0}
LARGE_VALUES_ELSE = 1e5


def _large_values(case: ConvCase, tensors: dict[str, torch.Tensor]) -> None:
    x, c = tensors["input"], case.geometry.c
    if case.dtype in LARGE_VALUES:
        sign = torch.where(torch.arange(c) < c // 2, 1.0, -1.0).to(torch.float64).view(1, c, 1, 1)
        tensors["input"] = LARGE_VALUES[case.dtype] * sign + x
    else:
        tensors["input"] = LARGE_VALUES_ELSE + x
    fan_in = (c // case.geometry.groups) * case.geometry.taps
    tensors["weight"] = tensors["weight"].abs() * math.sqrt(fan_in) / 4  # undo the 1/sqrt(fan_in) drawn above


def _poison(case: ConvCase, tensors: dict[str, torch.Tensor]) -> None:
    """NaN and +-Inf in every pixel that "fenced" offsets never read (rows 0-1, among them pixel
    (0, 0), where a kernel that reads out-of-map corners at index 0 looks; the columns from W/2
    on); with poison "read" also in two pixels that some samples read and (DCNv2) one mask entry."""
    if case.offsets != "fenced":
        raise ValueError(f"{case.case_id}: a poisoned conv case needs offsets 'fenced' (its bad pixels must be unread)")
    x, w = tensors["input"], case.geometry.w
    x[..., :2, :] = non_finite_like(x[..., :2, :])
    x[..., w // 2:] = non_finite_like(x[..., w // 2:])
    if case.poison == "read":
        x[0, 0, 3, 1] = float("inf")
        x[-1, -1, case.geometry.h - 3, 2] = float("nan")
        if "mask" in tensors:
            tensors["mask"][0, 0, 0, 0] = float("nan")


def cost(case: ConvCase) -> Cost:
    """One forward and backward: the tensors and their gradients, plus an im2col formulation's
    sampling buffers (every output position reads K taps of C channels at four corners)."""
    g = case.geometry
    item = max(4, ITEMSIZE[case.dtype])  # half types are computed in float32
    tensors = (float(g.n) * g.c * g.h * g.w + float(g.n) * 3 * g.offset_groups * g.taps * g.ho * g.wo
               + float(g.o) * (g.c // max(g.groups, 1)) * g.taps + float(g.n) * g.o * g.ho * g.wo)
    columns = float(g.n) * g.c * g.taps * g.ho * g.wo
    return Cost(bytes=item * (2 * tensors + 8 * columns))


def probe_cases(dtype: str) -> list[ConvCase]:
    """DCNv2 then DCNv1 (a plugin may implement one); the output's shape differs from the input's."""
    geo = ConvGeometry(n=1, c=2, h=5, w=6, o=3, kh=3, kw=3, padding=(1, 1))
    return [ConvCase(name="probe", geometry=geo, mask=mask, dtype=dtype) for mask in (True, False)]
