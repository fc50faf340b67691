"""MXNet's DeformablePSROIPooling (the authors'): signature, geometry, validation, shape grammar
and presets (torch-free).

    deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size,
                      part_size=0, sample_per_part=1, trans_std=0.0, no_trans=False)

trans (K, 2 * classes, part, part); channel 2c shifts x and 2c+1 shifts y for the output channels
of class c, by trans_std * trans * RoI width (height); bin (ph, pw) reads offset cell
(ph * part // pooled, pw * part // pooled). RoI = round(x1) * scale - 0.5 .. (round(x2) + 1) *
scale - 0.5 (round half away from zero), at least 0.1 wide; sample_per_part^2 points per bin at
bin start + i * bin / sample_per_part; points outside [-0.5, size - 0.5] are skipped and the rest
clamped into the map; the bin is the mean of the points kept (0 if none). Position-sensitive:
output channel d of bin (ph, pw) reads input channel (d * group + gh) * group + gw, gh = ph *
group // pooled, so C = output_dim * group^2; group_size = 1 is plain deformable RoI pooling.
part_size 0 means pooled_size. no_trans ignores trans. Output (K, output_dim, pooled, pooled).
"""

from __future__ import annotations

from dataclasses import dataclass

from dcnbench.ops.contract import ContractError, geometry_from_dict
from dcnbench.ops.roi_contract import check_offset, check_rois, map_problems, parse_roi_shape

OP = "deform_psroi_pool"
SIGNATURE = ("(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0, "
             "sample_per_part=1, trans_std=0.0, no_trans=False)")


@dataclass(frozen=True)
class PSRoIPoolGeometry:
    """One deform_psroi_pool call, apart from tensor values (output_dim = C / group_size^2)."""

    n: int
    c: int
    h: int
    w: int
    rois: int
    pooled_size: int = 7
    spatial_scale: float = 0.0625
    sample_per_part: int = 4
    trans_std: float = 0.1
    group_size: int = 7
    part_size: int = 7
    classes: int = 1  # offset classes: trans has 2 * classes channels
    op: str = OP

    @classmethod
    def from_dict(cls, d: dict) -> "PSRoIPoolGeometry":
        return geometry_from_dict(cls, d)

    @property
    def output_dim(self) -> int:
        return self.c // (self.group_size ** 2) if self.group_size > 0 else 0

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.rois, self.output_dim, self.pooled_size, self.pooled_size)

    @property
    def offset_shape(self) -> tuple[int, ...]:
        return (self.rois, 2 * self.classes, self.part_size, self.part_size)

    def kwargs(self) -> dict:
        return {"spatial_scale": self.spatial_scale, "output_dim": self.output_dim, "group_size": self.group_size,
                "pooled_size": self.pooled_size, "part_size": self.part_size,
                "sample_per_part": self.sample_per_part, "trans_std": self.trans_std}

    def problems(self) -> list[str]:
        found = map_problems(self)
        if min(self.pooled_size, self.group_size, self.part_size, self.sample_per_part, self.classes) < 1:
            found.append("pooled_size, group_size, part_size, sample_per_part and classes must be positive")
        elif self.c % (self.group_size ** 2) or self.output_dim < 1:
            found.append(f"C={self.c} must be output_dim * group_size^2 = a positive multiple of {self.group_size ** 2}")
        elif self.output_dim % self.classes:
            found.append(f"classes={self.classes} must divide output_dim={self.output_dim}")
        return found

    @property
    def shape_text(self) -> str:
        return (f"{self.n},{self.c},{self.h},{self.w}:{self.rois},{self.pooled_size}:{self.spatial_scale:g},"
                f"{self.sample_per_part},{self.trans_std:g},{self.group_size},{self.part_size},{self.classes}")


def check_call(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
               sample_per_part=1, trans_std=0.0, no_trans=False) -> PSRoIPoolGeometry:
    check_rois(input, rois)
    n, c, h, w = input.shape
    part = int(part_size) or int(pooled_size)
    if trans is not None and not no_trans and (trans.dim() != 4 or trans.shape[1] < 2 or trans.shape[1] % 2):
        raise ContractError(f"trans must be (K, 2 * classes, part_size, part_size), got shape {tuple(trans.shape)}")
    classes = 1 if no_trans or trans is None else trans.shape[1] // 2
    if not no_trans and trans is None:
        raise ContractError("trans is None but no_trans is False: pass offsets, or no_trans=True")
    geo = PSRoIPoolGeometry(n=n, c=c, h=h, w=w, rois=rois.shape[0], pooled_size=int(pooled_size),
                            spatial_scale=float(spatial_scale), sample_per_part=int(sample_per_part),
                            trans_std=float(trans_std), group_size=int(group_size), part_size=part, classes=classes)
    problems = geo.problems()
    if problems:
        raise ContractError("; ".join(problems))
    if geo.output_dim != output_dim:
        raise ContractError(f"output_dim={output_dim} does not match the input's {c} channels: expected "
                         f"C / group_size^2 = {geo.output_dim}")
    if not no_trans:
        check_offset("trans", trans, input, geo.offset_shape)
    return geo


SHAPE_GRAMMAR = "N,C,H,W:K,pooled[:spatial_scale[,sample_per_part[,trans_std[,group_size[,part_size[,classes]]]]]]"
SHAPE_EXAMPLE = "1,1029,38,63:300,7:0.0625,4,0.1,7,7"


def parse_shape(spec: str) -> PSRoIPoolGeometry:
    def build(n, c, h, w, k, bins, values, num):
        pooled = num(bins)
        return PSRoIPoolGeometry(n=n, c=c, h=h, w=w, rois=k, pooled_size=pooled,
                                 **({"group_size": pooled, "part_size": pooled} | values))

    return parse_roi_shape(OP, spec, SHAPE_GRAMMAR, SHAPE_EXAMPLE,
                           ("spatial_scale", "sample_per_part", "trans_std", "group_size", "part_size", "classes"),
                           (float, int, float, int, int, int), build)


# Named workloads (DCN.md section 3); deform_roi_pool has presets of the same names on the same maps.
PRESETS: dict[str, tuple[str, ...]] = {
    # R-FCN head on ResNet-101 (600x1000 image, stride 16: a 38x63 map), 300 RoIs, 7x7 bins. The
    # position-sensitive map has 7*7*(20+1) = 1029 channels (VOC).
    "rfcn": ("1,1029,38,63:300,7:0.0625,4,0.1,7,7",),
    # The authors' deformable Faster R-CNN head: plain deformable RoI pooling (group_size 1) of 256 channels.
    "faster-rcnn": ("1,256,38,63:300,7:0.0625,4,0.1,1,7",),
}
