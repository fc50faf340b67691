"""deform_conv2d's contract: argument normalisation, output geometry, validation, FLOPs, the shape
grammar and the presets. Torch-free at import.

Every backend is called with torchvision's `deform_conv2d` signature:

    deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None)

groups = C / weight.shape[1] and offset groups G = offset.shape[1] / (2·kh·kw) are implied by the
shapes, exactly as in torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcnbench.errors import UsageError
from dcnbench.ops.contract import ContractError, geometry_from_dict, hw_text, out_size, pair

OP = "deform_conv2d"
SIGNATURE = "(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None)"


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about one deform_conv2d call that does not depend on tensor values."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "ConvGeometry":
        return geometry_from_dict(cls, d)

    @property
    def op(self) -> str:
        return OP

    @property
    def ho(self) -> int:
        return out_size(self.h, self.kh, self.stride[0], self.padding[0], self.dilation[0])

    @property
    def wo(self) -> int:
        return out_size(self.w, self.kw, self.stride[1], self.padding[1], self.dilation[1])

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    def work(self, direction: str, itemsize: int, mask: bool = True) -> tuple[int, int]:
        """(FLOPs, bytes) the least one call in `direction` (fwd, bwd, fwdbwd) can do and move: the GEMM
        (2 per multiply-add), four multiply-adds per sampled value (N*C*K*L of them) for the
        interpolation, and three more per sampled value in the backward (the offset gradient's two
        slopes and the mask's value) besides the input gradient's scatter; every tensor read once
        and every result written once, nothing recomputed. The roofline's inputs (dcnbench.timing.roofline)."""
        taps_l, og = self.taps * self.ho * self.wo, self.offset_groups
        x, y = self.n * self.c * self.h * self.w, self.n * self.o * self.ho * self.wo
        side = self.n * og * taps_l * (3 if mask else 2)  # offsets and mask
        weight, bias = self.o * (self.c // self.groups) * self.taps, self.o
        gemm, sample = self.conv_flops(), 8 * self.n * self.c * taps_l
        fwd = (gemm + sample, (x + side + weight + bias + y) * itemsize)
        bwd = (2 * gemm + 4 * sample, (y + 2 * (x + side + weight) + bias) * itemsize)
        return {"fwd": fwd, "bwd": bwd, "fwdbwd": (fwd[0] + bwd[0], fwd[1] + bwd[1])}[direction]

    def problems(self) -> list[str]:
        """Why this geometry is not a valid deform_conv2d call (empty when it is)."""
        found = []
        if min(self.c, self.h, self.w, self.o, self.kh, self.kw) < 1 or self.n < 0:
            found.append("sizes must be positive (N may be 0)")
        if min(*self.stride, *self.dilation) < 1 or min(self.padding) < 0:
            found.append("stride and dilation must be >= 1 and padding >= 0")
        if self.groups < 1 or self.c % self.groups or self.o % self.groups:
            found.append(f"groups={self.groups} must divide C={self.c} and O={self.o}")
        if self.offset_groups < 1 or self.c % self.offset_groups:
            found.append(f"offset_groups={self.offset_groups} must divide C={self.c}")
        if not found and (self.ho < 1 or self.wo < 1):
            found.append(f"the output would be {self.ho}x{self.wo}: the kernel does not fit")
        return found

    def shapes(self, mask: bool, bias: bool) -> dict[str, tuple[int, ...]]:
        out = {
            "input": (self.n, self.c, self.h, self.w),
            "offset": (self.n, 2 * self.offset_groups * self.taps, self.ho, self.wo),
            "weight": (self.o, self.c // self.groups, self.kh, self.kw),
        }
        if mask:
            out["mask"] = (self.n, self.offset_groups * self.taps, self.ho, self.wo)
        if bias:
            out["bias"] = (self.o,)
        return out

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.o, self.ho, self.wo)

    @property
    def shape_text(self) -> str:
        return format_shape(self)

    def conv_flops(self) -> int:
        """Forward FLOPs of the equivalent plain convolution (2 per multiply-add).

        Sampling arithmetic is not counted, so GFLOP/s compares directly with the conv2d row.
        """
        return 2 * self.n * self.o * (self.c // self.groups) * self.taps * self.ho * self.wo


def geometry_of(input, offset, weight, stride=1, padding=0, dilation=1) -> ConvGeometry:
    """Read the geometry implied by tensors passed in torchvision's convention."""
    n, c, h, w = input.shape
    o, cg, kh, kw = weight.shape
    return ConvGeometry(
        n=n, c=c, h=h, w=w, o=o, kh=kh, kw=kw,
        stride=pair(stride), padding=pair(padding), dilation=pair(dilation),
        groups=c // cg if cg else 0,
        offset_groups=offset.shape[1] // (2 * kh * kw) if kh * kw else 0,
    )


def check_call(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None) -> ConvGeometry:
    """Validate a call the way torchvision does, with "got X, expected Y" messages."""
    for name, t, dims in (("input", input, 4), ("offset", offset, 4), ("weight", weight, 4)):
        if t.dim() != dims:
            raise ContractError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    geo = geometry_of(input, offset, weight, stride, padding, dilation)
    if geo.groups == 0 or geo.c % weight.shape[1]:
        raise ContractError(f"weight.shape[1]={weight.shape[1]} must divide the {geo.c} input channels")
    if offset.shape[1] % (2 * geo.taps) or geo.offset_groups == 0:
        raise ContractError(f"offset has {offset.shape[1]} channels, expected a positive multiple of 2*kh*kw={2 * geo.taps}")
    problems = geo.problems()
    if problems:
        raise ContractError("; ".join(problems))
    expected = geo.shapes(mask is not None, bias is not None)
    got = {"input": input, "offset": offset, "weight": weight, "mask": mask, "bias": bias}
    for name, shape in expected.items():
        if tuple(got[name].shape) != shape:
            raise ContractError(f"{name} has shape {tuple(got[name].shape)}, expected {shape}")
    return geo


# ---- shape grammar and presets -------------------------------------------------------------------

SHAPE_GRAMMAR = "N,C,H,W:O,kh,kw[:stride,pad,dil[,groups[,offset_groups]]]"
SHAPE_EXAMPLE = "8,64,56,56:64,3,3:1,1,1"


def parse_shape(spec: str) -> ConvGeometry:
    """Parse `N,C,H,W:O,kh,kw[:stride,pad,dil[,groups[,offset_groups]]]`.

    stride, pad and dil are one integer or `AxB` for (height, width), e.g. `2x1`.
    """
    hint = f"write {SHAPE_GRAMMAR}, e.g. {SHAPE_EXAMPLE}"
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
    return (f"{geo.n},{geo.c},{geo.h},{geo.w}:{geo.o},{geo.kh},{geo.kw}:"
            f"{hw_text(geo.stride)},{hw_text(geo.padding)},{hw_text(geo.dilation)},{geo.groups},{geo.offset_groups}")


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
