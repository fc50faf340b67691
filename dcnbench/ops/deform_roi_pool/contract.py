"""mmcv's deform_roi_pool: signature, geometry, validation, shape grammar and presets (torch-free).

    deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1)

offset (K, 2, ph, pw) or None; channel 0 shifts x, channel 1 shifts y, by gamma * offset * RoI
width (height). RoIAlign sampling: RoI = coordinates * scale - 0.5, no rounding; sampling_ratio^2
points per bin (0: ceil(RoI size / bins) per axis), centred in sub-bins; a point outside
[-1, size] reads 0, others are clamped into the map. Output (K, C, ph, pw).
"""

from __future__ import annotations

from dataclasses import dataclass

from dcnbench.ops.contract import ContractError, geometry_from_dict, pair
from dcnbench.ops.roi_contract import check_offset, check_rois, map_problems, parse_roi_shape

OP = "deform_roi_pool"
SIGNATURE = "(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1)"


@dataclass(frozen=True)
class RoIPoolGeometry:
    """One deform_roi_pool call, apart from tensor values."""

    n: int
    c: int
    h: int
    w: int
    rois: int
    output_size: tuple[int, int] = (7, 7)
    spatial_scale: float = 1.0
    sampling_ratio: int = 0
    gamma: float = 0.1
    op: str = OP

    @classmethod
    def from_dict(cls, d: dict) -> "RoIPoolGeometry":
        return geometry_from_dict(cls, d)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.rois, self.c, *self.output_size)

    @property
    def offset_shape(self) -> tuple[int, ...]:
        return (self.rois, 2, *self.output_size)

    def kwargs(self) -> dict:
        return {"output_size": self.output_size, "spatial_scale": self.spatial_scale,
                "sampling_ratio": self.sampling_ratio, "gamma": self.gamma}

    def problems(self) -> list[str]:
        found = map_problems(self)
        if min(self.output_size) < 1:
            found.append(f"output_size {self.output_size} must be positive")
        if self.sampling_ratio < 0:
            found.append(f"sampling_ratio {self.sampling_ratio} must be >= 0 (0: adaptive)")
        return found

    @property
    def shape_text(self) -> str:
        ph, pw = self.output_size
        out = str(ph) if ph == pw else f"{ph}x{pw}"
        return f"{self.n},{self.c},{self.h},{self.w}:{self.rois},{out}:{self.spatial_scale:g},{self.sampling_ratio},{self.gamma:g}"


def check_call(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1) -> RoIPoolGeometry:
    check_rois(input, rois)
    n, c, h, w = input.shape
    geo = RoIPoolGeometry(n=n, c=c, h=h, w=w, rois=rois.shape[0], output_size=pair(output_size),
                          spatial_scale=float(spatial_scale), sampling_ratio=int(sampling_ratio), gamma=float(gamma))
    problems = geo.problems()
    if problems:
        raise ContractError("; ".join(problems))
    check_offset("offset", offset, input, geo.offset_shape)
    return geo


SHAPE_GRAMMAR = "N,C,H,W:K,PH[xPW][:spatial_scale[,sampling_ratio[,gamma]]]"
SHAPE_EXAMPLE = "1,256,38,63:300,7:0.0625,2,0.1"


def parse_shape(spec: str) -> RoIPoolGeometry:
    def build(n, c, h, w, k, bins, values, num):
        a, _, b = bins.partition("x")
        return RoIPoolGeometry(n=n, c=c, h=h, w=w, rois=k, output_size=(num(a), num(b or a)),
                               **({"spatial_scale": 0.0625} | values))

    return parse_roi_shape(OP, spec, SHAPE_GRAMMAR, SHAPE_EXAMPLE, ("spatial_scale", "sampling_ratio", "gamma"),
                           (float, int, float), build)


# Named workloads (DCN.md section 3); deform_psroi_pool has presets of the same names on the same maps.
PRESETS: dict[str, tuple[str, ...]] = {
    # R-FCN head on ResNet-101 (600x1000 image, stride 16: a 38x63 map), 300 RoIs, 7x7 bins, adaptive grid.
    "rfcn": ("1,1024,38,63:300,7:0.0625,0,0.1",),
    # The deformable Faster R-CNN head: 256 channels.
    "faster-rcnn": ("1,256,38,63:300,7:0.0625,0,0.1",),
}
