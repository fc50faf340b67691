"""Workloads: a frozen case spec, the seeded tensors it stands for, the shape grammar, presets.

A case is hashable and fully describes its inputs (geometry, dtype, offset distribution, seed), so
it doubles as the key for grouping results and for comparing runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import torch

from dcnbench.errors import UsageError
from dcnbench.ops import OP_DEFORM_CONV2D, ConvGeometry

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Offset distributions. Sampling coordinate p = base + offset, base = output*stride - pad + tap*dil.
#   uniform:     offset ~ U(-scale, scale), both components
#   anisotropic: dy ~ U(-scale, scale), dx ~ U(-scale/10, scale/10)
#   integer:     one integer shift (dy, dx) = (round(scale), -round(scale/2)) for every tap and position
#   zero:        all zero
#   border:      p drawn in the two border bands of each axis, [-1.5, 1] and [size-2, size+0.5]
#   interior:    p drawn inside [0.5, size-1.5], never near an edge
#   band-low:    py in the low band (-1, 0), px interior: where rules Z and C differ, one band at a time
#   band-high:   py in the high band (H-1, H), px interior
OFFSET_KINDS = ("uniform", "anisotropic", "integer", "zero", "border", "interior", "band-low", "band-high")

# Checks a case can ask for. "oracle" compares with the float64 oracle; the identities compare
# with a plain convolution; "gradcheck" runs torch.autograd.gradcheck.
CHECKS = ("oracle", "zero_offset", "integer_offset", "zero_mask", "gradcheck")


@dataclass(frozen=True)
class ConvCase:
    name: str
    geometry: ConvGeometry
    mask: bool = True  # DCNv2 when True, DCNv1 when False
    bias: bool = True
    dtype: str = "float64"
    offsets: str = "uniform"
    offset_scale: float = 1.0
    contiguous: bool = True
    check: str = "oracle"
    seed: int = 0
    # Every sampling coordinate stays at least this far from an integer (bilinear kinks), so
    # gradients are two-sided; None leaves coordinates as drawn (identities need integers).
    kink_margin: float | None = 1e-3

    # The interface verify and speed use for every op's cases (PoolCase has the same).
    op = OP_DEFORM_CONV2D
    differentiable = ("input", "offset", "weight", "mask", "bias")

    @property
    def case_id(self) -> str:
        return f"{self.name}/{self.dtype}"

    @property
    def variant(self) -> str:
        return "v2" if self.mask else "v1"

    @property
    def shape_text(self) -> str:
        return format_shape(self.geometry)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.geometry.output_shape

    def inputs(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        return make_inputs(self, device)

    def call(self, fn, t: dict[str, torch.Tensor]):
        geo = self.geometry
        return fn(t["input"], t["offset"], t["weight"], t.get("bias"), stride=geo.stride,
                  padding=geo.padding, dilation=geo.dilation, mask=t.get("mask"))

    def definition(self) -> dict:
        return asdict(self)

    def digest(self, **extra) -> str:
        """Hash of everything that defines the workload (for comparing runs), plus `extra`."""
        return digest_of(self.definition() | extra)


def digest_of(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _base_coords(size: int, out: int, k: int, stride: int, pad: int, dil: int) -> torch.Tensor:
    """(K, out) integer grid positions before offsets, float64."""
    o = torch.arange(out, dtype=torch.float64)
    t = torch.arange(k, dtype=torch.float64)
    return o[None, :] * stride - pad + t[:, None] * dil


def _nudge_from_integers(p: torch.Tensor, margin: float) -> torch.Tensor:
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
        dy = _nudge_from_integers(by + dy, margin) - by
        dx = _nudge_from_integers(bx + dx, margin) - bx
    # (N, G, kh, kw, 2, Ho, Wo) -> (N, 2*G*K, Ho, Wo): channel 2*(g*K + k) is dy, the next dx.
    return torch.stack([dy, dx], dim=4).reshape(geo.n, 2 * g * kh * kw, ho, wo)


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as a strided, non-contiguous view (every other element of a wider buffer)."""
    return torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]


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
    out = {}
    for name, t in tensors.items():
        t = t.to(dtype).to(device)
        out[name] = t if case.contiguous else noncontiguous(t)
    return out



# ---- shape grammar -------------------------------------------------------------------------

SHAPE_GRAMMAR = "N,C,H,W:O,kh,kw[:stride,pad,dil[,groups[,offset_groups]]]"


def parse_shape(spec: str) -> ConvGeometry:
    """Parse `N,C,H,W:O,kh,kw[:stride,pad,dil[,groups[,offset_groups]]]`.

    stride, pad and dil are one integer or `AxB` for (height, width), e.g. `2x1`.
    """
    hint = f"write {SHAPE_GRAMMAR}, e.g. 8,64,56,56:64,3,3:1,1,1"
    parts = spec.strip().split(":")
    if len(parts) not in (2, 3):
        raise UsageError(f"malformed --shape '{spec}': expected 2 or 3 ':'-separated parts", hint=hint)

    def ints(text: str, count: tuple[int, ...], what: str) -> list[str]:
        items = [t.strip() for t in text.split(",")]
        if len(items) not in count or not all(items):
            raise UsageError(f"malformed --shape '{spec}': {what} needs {' or '.join(map(str, count))} values", hint=hint)
        return items

    def num(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"malformed --shape '{spec}': '{text}' is not an integer", hint=hint) from None

    def hw(text: str) -> tuple[int, int]:
        a, _, b = text.partition("x")
        return (num(a), num(b or a))

    n, c, h, w = (num(t) for t in ints(parts[0], (4,), "N,C,H,W"))
    o, kh, kw = (num(t) for t in ints(parts[1], (3,), "O,kh,kw"))
    stride = pad = dil = (1, 1)
    if len(parts) == 2:
        pad = ((kh - 1) // 2, (kw - 1) // 2)  # "same" padding when not given
    groups = offset_groups = 1
    if len(parts) == 3:
        extra = ints(parts[2], (3, 4, 5), "stride,pad,dil[,groups[,offset_groups]]")
        stride, pad, dil = hw(extra[0]), hw(extra[1]), hw(extra[2])
        groups = num(extra[3]) if len(extra) > 3 else 1
        offset_groups = num(extra[4]) if len(extra) > 4 else 1
    geo = ConvGeometry(n=n, c=c, h=h, w=w, o=o, kh=kh, kw=kw, stride=stride, padding=pad,
                       dilation=dil, groups=groups, offset_groups=offset_groups)
    problems = geo.problems()
    if problems:
        raise UsageError(f"invalid --shape '{spec}': {'; '.join(problems)}", hint=hint)
    return geo


def format_shape(geo: ConvGeometry) -> str:
    def hw(p):
        return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"

    return (f"{geo.n},{geo.c},{geo.h},{geo.w}:{geo.o},{geo.kh},{geo.kw}:"
            f"{hw(geo.stride)},{hw(geo.padding)},{hw(geo.dilation)},{geo.groups},{geo.offset_groups}")


# Named speed workloads (DCN.md section 3).
PRESETS: dict[str, tuple[str, ...]] = {
    # The shape measured in DCN.md's baselines: N=8, C=O=64, 56x56, 3x3.
    "dcn-56": ("8,64,56,56:64,3,3:1,1,1",),
    # The paper's placement: ResNet-101 conv5's 3x3 layers, 512->512, dilation 2, ~38x63 map.
    "resnet101-conv5": ("1,512,38,63:512,3,3:1,2,2",),
    # DCNv4's benchmark: batch 64, 56x56, 4 groups x 32 channels. DCNv4's core op is depthwise
    # (channels mix in separate linear layers), so the NCHW equivalent is groups=C, offset_groups=4.
    "dcnv4-56": ("64,128,56,56:128,3,3:1,1,1,128,4",),
    # torchvision chunks the batch by its largest divisor <= 32: cliffs at prime and 33.
    "batch-cliffs": tuple(f"{n},32,28,28:32,3,3:1,1,1" for n in (1, 31, 32, 33, 37, 64)),
}


def preset_shapes(name: str) -> list[ConvGeometry]:
    if name not in PRESETS:
        raise UsageError(f"unknown preset '{name}'", hint=f"choose from: {', '.join(PRESETS)}")
    return [parse_shape(s) for s in PRESETS[name]]


def parse_dtype(name: str) -> str:
    if name not in DTYPES:
        raise UsageError(f"unknown dtype '{name}'", hint=f"choose from: {', '.join(DTYPES)}")
    return name
