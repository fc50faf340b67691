"""DCNv4's contract: DCNv3's geometry (ops/dcnv3/contract.py) with the offsets and the mask packed
into one tensor, and the extension's softmax flag. Torch-free at import.

Every backend is called with `DCNv4Function.apply`'s fifteen positional arguments, plus
`softmax=True` as a keyword only in the cases that set it:

    dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
          dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step, remove_center)

offset_mask (N, Ho, Wo, Cpad): group g owns lanes g·3P … g·3P + 3P − 1, first its P offset pairs
(dx, dy) in DCNv3's point order, then its P mask values; lanes from G·3P up to Cpad are padding
the op never reads (their gradient is 0). Cpad is a multiple of 8 (the kernels assert it); the
DCNv4 module builds Cpad = ceil(G·P·3 / 8)·8. The mask is used as given (DCNv4 removed DCNv3's
softmax); the extension's trailing `softmax` flag, which `DCNv4Function` always passes as False,
applies a softmax over each group's P mask values first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dcnbench.ops.dcnv3.contract import BENCHMARK, DETECTION, GroupGeometry, check_shape, geometry_of, parse_group_shape
from dcnbench.ops.dcnv3.contract import format_shape as format_group_shape
from dcnbench.ops.contract import ContractError

OP = "dcnv4"
SIGNATURE = ("(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, "
             "group, group_channels, offset_scale, im2col_step, remove_center, softmax=False)")
LANE_MULTIPLE = 8


def packed_width(group: int, points: int) -> int:
    """Cpad as the DCNv4 module builds it: G·P·3 rounded up to a multiple of 8."""
    return int(math.ceil(group * points * 3 / LANE_MULTIPLE) * LANE_MULTIPLE)


@dataclass(frozen=True)
class Dcnv4Geometry(GroupGeometry):
    softmax: bool = False  # the extension's flag (DCNv4Function passes False)
    offset_mask_dim: int | None = None  # Cpad; None: the module's packed_width(G, P)

    @property
    def op(self) -> str:
        return OP

    @property
    def cpad(self) -> int:
        return self.offset_mask_dim if self.offset_mask_dim is not None else packed_width(self.group, self.points)

    def problems(self) -> list[str]:
        found = super().problems()
        need = self.group * self.points * 3
        if not found and (self.cpad % LANE_MULTIPLE or self.cpad < need):
            found.append(f"offset_mask has {self.cpad} lanes, expected a multiple of {LANE_MULTIPLE} >= G*P*3 = {need}")
        return found

    @property
    def shape_text(self) -> str:
        extra = (",softmax" if self.softmax else "") + (f",cpad={self.cpad}" if self.offset_mask_dim is not None else "")
        return format_group_shape(self) + extra


def check_call(input, offset_mask, *args, softmax: bool = False) -> Dcnv4Geometry:
    """Validate a DCNv4 call (the fifteen official arguments and the softmax flag)."""
    if offset_mask.dim() != 4:
        raise ContractError(f"offset_mask must be 4-D (N, Ho, Wo, Cpad), got shape {tuple(offset_mask.shape)}")
    geo = geometry_of(input, *args, cls=Dcnv4Geometry, softmax=bool(softmax), offset_mask_dim=offset_mask.shape[-1])
    check_shape("offset_mask", offset_mask, (geo.n, geo.ho, geo.wo, geo.cpad))
    return geo


SHAPE_GRAMMAR = "N,H,W,G,D:kh,kw[:stride,pad,dil[,offset_scale[,remove_center[,im2col_step]]]]"
SHAPE_EXAMPLE = "64,56,56,4,32:3,3:1,1,1"


def parse_shape(spec: str) -> Dcnv4Geometry:
    return parse_group_shape(spec, OP, Dcnv4Geometry, SHAPE_GRAMMAR, SHAPE_EXAMPLE)


# The same workloads as DCNv3's presets of the same names, so one preset times both.
PRESETS: dict[str, tuple[str, ...]] = {"dcnv4-bench": BENCHMARK, "dcnv4-det": DETECTION}
