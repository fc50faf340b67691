"""The operator's contract: argument normalisation, output geometry, shape validation and FLOPs.

Every backend is called with torchvision's `deform_conv2d` signature:

    deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None)

groups = C / weight.shape[1] and offset groups G = offset.shape[1] / (2·kh·kw) are implied by the
shapes, exactly as in torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass


OP_DEFORM_CONV2D = "deform_conv2d"


def pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


def out_size(size: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


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
        """The geometry a results record or worker spec describes (JSON turns tuples into lists)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def op(self) -> str:
        return OP_DEFORM_CONV2D

    @property
    def ho(self) -> int:
        return out_size(self.h, self.kh, self.stride[0], self.padding[0], self.dilation[0])

    @property
    def wo(self) -> int:
        return out_size(self.w, self.kw, self.stride[1], self.padding[1], self.dilation[1])

    @property
    def taps(self) -> int:
        return self.kh * self.kw

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
            raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    geo = geometry_of(input, offset, weight, stride, padding, dilation)
    if geo.groups == 0 or geo.c % weight.shape[1]:
        raise ValueError(f"weight.shape[1]={weight.shape[1]} must divide the {geo.c} input channels")
    if offset.shape[1] % (2 * geo.taps) or geo.offset_groups == 0:
        raise ValueError(f"offset has {offset.shape[1]} channels, expected a positive multiple of 2*kh*kw={2 * geo.taps}")
    problems = geo.problems()
    if problems:
        raise ValueError("; ".join(problems))
    expected = geo.shapes(mask is not None, bias is not None)
    got = {"input": input, "offset": offset, "weight": weight, "mask": mask, "bias": bias}
    for name, shape in expected.items():
        if tuple(got[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(got[name].shape)}, expected {shape}")
    return geo
