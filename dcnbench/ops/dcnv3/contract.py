"""DCNv3's contract (InternImage's core op), shared by DCNv4: geometry, validation, FLOPs, the shape
grammar and the presets. Torch-free at import.

Every backend is called with `DCNv3Function.apply`'s sixteen positional arguments:

    dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
          dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step, remove_center)

Channels-last throughout: input (N, H, W, G·D), offset (N, Ho, Wo, G·P·2) with each point's pair
stored (dx, dy), x first; mask (N, Ho, Wo, G·P), used as given; output (N, Ho, Wo, G·D). P is
kernel_h·kernel_w, less one when remove_center drops the centre tap. Points are enumerated
x-major: for i in range(kernel_w), for j in range(kernel_h), so the y index varies fastest.
Output (ho, wo), point (i, j) of group g samples channels g·D … g·D + D − 1 at

    x = wo·stride_w − pad_w + cx + (i·dilation_w − cx + dx)·offset_scale,  cx = dilation_w·(kernel_w − 1) // 2
    y = ho·stride_h − pad_h + cy + (j·dilation_h − cy + dy)·offset_scale,  cy = dilation_h·(kernel_h − 1) // 2

under rule Z, after the kernels' pre-test (−1 < y < H and −1 < x < W, else the point adds
nothing). offset_scale scales the kernel grid's displacement from the reference point too, and
the kernels take it as a C `float` (float32). im2col_step only bounds how many images a kernel
holds at once: it never changes a value, and any batch size is valid here (the official ops
also require N % min(N, im2col_step) == 0).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from dcnbench.errors import UsageError
from dcnbench.ops.contract import ContractError, geometry_from_dict, hw_text, out_size

OP = "dcnv3"
SIGNATURE = ("(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, "
             "group, group_channels, offset_scale, im2col_step, remove_center)")
IM2COL_STEP = 256  # what both modules pass


def float32(value: float) -> float:
    """The value a C `float` parameter holds (offset_scale reaches the kernels as one)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def kernel_points(kh: int, kw: int, remove_center: bool) -> list[tuple[int, int]]:
    """The op's point order as (i, j) = (x index, y index): x-major, y fastest; the centre tap
    (kw // 2, kh // 2) left out when remove_center."""
    return [(i, j) for i in range(kw) for j in range(kh)
            if not (remove_center and i == kw // 2 and j == kh // 2)]


@dataclass(frozen=True)
class GroupGeometry:
    """Everything about one DCNv3/DCNv4 call that does not depend on tensor values."""

    n: int
    h: int
    w: int
    group: int
    group_channels: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    offset_scale: float = 1.0  # the op's argument (not the spread of drawn offsets: that is case.offset_scale)
    remove_center: bool = False
    im2col_step: int = IM2COL_STEP

    @classmethod
    def from_dict(cls, d: dict) -> "GroupGeometry":
        return geometry_from_dict(cls, d)

    @property
    def op(self) -> str:
        return OP

    @property
    def c(self) -> int:
        return self.group * self.group_channels

    @property
    def ho(self) -> int:
        return out_size(self.h, self.kh, self.stride[0], self.padding[0], self.dilation[0])

    @property
    def wo(self) -> int:
        return out_size(self.w, self.kw, self.stride[1], self.padding[1], self.dilation[1])

    @property
    def points(self) -> int:
        return self.kh * self.kw - int(self.remove_center)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.ho, self.wo, self.c)

    @property
    def shape_text(self) -> str:
        return format_shape(self)

    def args(self) -> tuple:
        """The scalar arguments after the tensors, in the official order."""
        return (self.kh, self.kw, *self.stride, *self.padding, *self.dilation, self.group, self.group_channels,
                self.offset_scale, self.im2col_step, int(self.remove_center))

    def problems(self) -> list[str]:
        """Why this geometry is not a valid call (empty when it is)."""
        found = []
        if min(self.h, self.w, self.group, self.group_channels, self.kh, self.kw) < 1 or self.n < 0:
            found.append("sizes must be positive (N may be 0)")
        if min(*self.stride, *self.dilation) < 1 or min(self.padding) < 0:
            found.append("stride and dilation must be >= 1 and padding >= 0")
        if not math.isfinite(self.offset_scale):
            found.append(f"offset_scale {self.offset_scale} must be a finite number")
        if self.im2col_step < 1:
            found.append(f"im2col_step {self.im2col_step} must be >= 1")
        if self.points < 1:
            found.append("remove_center leaves no point of a 1x1 kernel")
        if not found and (self.ho < 1 or self.wo < 1):
            found.append(f"the output would be {self.ho}x{self.wo}: the kernel does not fit")
        return found

    @property
    def side_elements(self) -> int:
        """Offset and mask elements one call reads (DCNv3: two tensors, 3 values per point and group)."""
        return self.n * self.ho * self.wo * self.group * self.points * 3

    def work(self, direction: str, itemsize: int, mask: bool = True) -> tuple[int, int]:
        """(FLOPs, bytes) the least one call in `direction` can do and move: four multiply-adds per
        channel and point for the interpolation (the mask folded into the weights), as many again in
        the backward for the input gradient's scatter and for the four corner dot products the offset
        and mask gradients need; every tensor read once, every result written once. DCNv3/DCNv4 have
        no dense weight, so this is memory-bound (the roofline: dcnbench.timing.roofline)."""
        q = self.n * self.ho * self.wo
        x, y, side = self.n * self.h * self.w * self.c, q * self.c, self.side_elements
        sample = 8 * q * self.c * self.points
        fwd = (sample, (x + side + y) * itemsize)
        bwd = (2 * sample, (y + 2 * (x + side)) * itemsize)
        return {"fwd": fwd, "bwd": bwd, "fwdbwd": (fwd[0] + bwd[0], fwd[1] + bwd[1])}[direction]

    def flops(self) -> int:
        """Forward FLOPs of the equivalent depthwise convolution with P taps (2 per multiply-add);
        the sampling arithmetic is not counted, so GFLOP/s compares with the conv2d row."""
        return 2 * self.n * self.c * self.points * self.ho * self.wo


def check_shape(name: str, t, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != expected:
        raise ContractError(f"{name} has shape {tuple(t.shape)}, expected {expected}")


def check_geometry(geo: GroupGeometry) -> None:
    problems = geo.problems()
    if problems:
        raise ContractError("; ".join(problems))


def geometry_of(input, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                group_channels, offset_scale, im2col_step, remove_center, cls=GroupGeometry, **extra):
    """The geometry of a call, with "got X, expected Y" errors for the input."""
    if input.dim() != 4:
        raise ContractError(f"input must be 4-D (N, H, W, C), got shape {tuple(input.shape)}")
    n, h, w, c = input.shape
    if c != group * group_channels:
        raise ContractError(f"input has {c} channels, expected group*group_channels = {group}*{group_channels} "
                         f"= {group * group_channels} (the layout is channels-last: (N, H, W, C))")
    if remove_center not in (0, 1, False, True):
        raise ContractError(f"remove_center is {remove_center!r}, expected 0 or 1")
    geo = cls(n=n, h=h, w=w, group=int(group), group_channels=int(group_channels), kh=int(kernel_h),
              kw=int(kernel_w), stride=(int(stride_h), int(stride_w)), padding=(int(pad_h), int(pad_w)),
              dilation=(int(dilation_h), int(dilation_w)), offset_scale=float(offset_scale),
              remove_center=bool(remove_center), im2col_step=int(im2col_step), **extra)
    check_geometry(geo)
    return geo


def check_call(input, offset, mask, *args) -> GroupGeometry:
    """Validate a DCNv3 call (the sixteen official arguments)."""
    geo = geometry_of(input, *args)
    g, p = geo.group, geo.points
    check_shape("offset", offset, (geo.n, geo.ho, geo.wo, g * p * 2))
    check_shape("mask", mask, (geo.n, geo.ho, geo.wo, g * p))
    return geo


# ---- shape grammar and presets -------------------------------------------------------------------

SHAPE_GRAMMAR = "N,H,W,G,D:kh,kw[:stride,pad,dil[,offset_scale[,remove_center[,im2col_step]]]]"
SHAPE_EXAMPLE = "64,56,56,4,32:3,3:1,1,1"


def parse_group_shape(spec: str, op: str, cls, grammar: str = SHAPE_GRAMMAR, example: str = SHAPE_EXAMPLE):
    """Parse `N,H,W,G,D:kh,kw[:stride,pad,dil[,offset_scale[,remove_center[,im2col_step]]]]`.

    stride, pad and dil are one integer or `AxB` for (height, width); without the third part,
    stride 1, "same" padding and dilation 1; offset_scale 1, remove_center 0, im2col_step 256.
    """
    hint = f"write {grammar}, e.g. {example}"
    parts = spec.strip().split(":")
    if len(parts) not in (2, 3):
        raise UsageError(f"malformed --shape '{spec}' for {op}: expected 2 or 3 ':'-separated parts", hint=hint)

    def items(text: str, count: tuple[int, ...], what: str) -> list[str]:
        found = [t.strip() for t in text.split(",")]
        if len(found) not in count or not all(found):
            raise UsageError(f"malformed --shape '{spec}': {what} needs {' or '.join(map(str, count))} values", hint=hint)
        return found

    def num(text: str, kind=int):
        try:
            return kind(text)
        except ValueError:
            raise UsageError(f"malformed --shape '{spec}': '{text}' is not {'an integer' if kind is int else 'a number'}",
                             hint=hint) from None

    def hw(text: str) -> tuple[int, int]:
        a, _, b = text.partition("x")
        return (num(a), num(b or a))

    n, h, w, g, d = (num(t) for t in items(parts[0], (5,), "N,H,W,G,D"))
    kh, kw = (num(t) for t in items(parts[1], (2,), "kh,kw"))
    stride, pad, dil = (1, 1), ((kh - 1) // 2, (kw - 1) // 2), (1, 1)
    extra: dict = {}
    if len(parts) == 3:
        more = items(parts[2], (3, 4, 5, 6), "stride,pad,dil[,offset_scale[,remove_center[,im2col_step]]]")
        stride, pad, dil = hw(more[0]), hw(more[1]), hw(more[2])
        if len(more) > 3:
            extra["offset_scale"] = num(more[3], float)
        if len(more) > 4:
            rc = num(more[4])
            if rc not in (0, 1):
                raise UsageError(f"invalid --shape '{spec}': remove_center must be 0 or 1, got {rc}", hint=hint)
            extra["remove_center"] = bool(rc)
        if len(more) > 5:
            extra["im2col_step"] = num(more[5])
    geo = cls(n=n, h=h, w=w, group=g, group_channels=d, kh=kh, kw=kw, stride=stride, padding=pad, dilation=dil, **extra)
    problems = geo.problems()
    if problems:
        raise UsageError(f"invalid --shape '{spec}' for {op}: {'; '.join(problems)}", hint=hint)
    return geo


def parse_shape(spec: str) -> GroupGeometry:
    return parse_group_shape(spec, OP, GroupGeometry)


def format_shape(geo: GroupGeometry) -> str:
    return (f"{geo.n},{geo.h},{geo.w},{geo.group},{geo.group_channels}:{geo.kh},{geo.kw}:"
            f"{hw_text(geo.stride)},{hw_text(geo.padding)},{hw_text(geo.dilation)},{geo.offset_scale:g},"
            f"{int(geo.remove_center)},{geo.im2col_step}")


# Named speed workloads; the same names time DCNv4 (ops/dcnv4/contract.py).
# DCNv4's benchmark (scripts/test_dcnv4.py): batch 64, 3x3, 32 channels per group, the group count
# growing as the map shrinks (InternImage's stages). fp16 on a GPU there; float32 here.
BENCHMARK = tuple(f"64,{s},{s},{g},32:3,3:1,1,1" for s, g in ((56, 4), (28, 8), (14, 16), (7, 32)))
# The detection shapes of DCNv4's tuning grid (batch 1, an 800x1280 image's pyramid and a 64x64
# map), at one of its settings: 4 groups of 32 channels.
DETECTION = tuple(f"1,{h},{w},4,32:3,3:1,1,1" for h, w in ((200, 320), (100, 160), (50, 80), (25, 40), (64, 64)))
PRESETS: dict[str, tuple[str, ...]] = {"dcnv4-bench": BENCHMARK, "dcnv4-det": DETECTION}
