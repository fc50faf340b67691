"""DCNv4's default verification suite, in the spirit of DCNv3's (ops/dcnv3/suite.py) and within what
the official kernels accept: 8 or 9 points, channels per group a multiple of 8, offset_mask lanes a
multiple of 8 (the DCNv4 module's width, and one wider). The packed padding lanes hold NaN, which a
correct kernel never reads; `v4-zero-lanes` holds zeros there (as a kernel that reads and discards
them would need). The softmax cases use the extension's flag, which DCNv4Function lacks: a
callable without a `softmax` parameter reports them `unsupported`.
"""

from __future__ import annotations

from functools import partial

from dcnbench.ops.dcnv3.suite import build, group_geometry
from dcnbench.ops.dcnv4.contract import Dcnv4Geometry
from dcnbench.ops.dcnv4.workloads import Dcnv4Case

_geo = partial(group_geometry, Dcnv4Geometry)

# name -> (seed, geometry, case options). Offsets spread ±2.5 px unless the options say otherwise.
_GEOMETRIES: dict[str, tuple[int, Dcnv4Geometry, dict]] = {
    "v4-default": (40000, _geo(g=4, d=16), {}),
    "v4-d8-g1": (40100, _geo(g=1, d=8), {}),
    "v4-d32-g2": (40200, _geo(n=1, g=2, d=32), {}),
    "v4-d64-g3": (40300, _geo(n=1, h=6, w=6, g=3, d=64), {}),
    "v4-d16-g8": (40400, _geo(n=1, h=6, w=7, g=8, d=16), {}),
    "v4-asym-3x3-s21-p10-d12-os0.5": (40500, _geo(h=9, w=11, g=3, d=8, stride=(2, 1), pad=(1, 0), dil=(1, 2), os=0.5),
                                      {"offset_scale": 5.0}),
    "v4-asym-2x4-s12-p01-d21": (40600, _geo(h=7, w=9, g=5, d=8, kh=2, kw=4, stride=(1, 2), pad=(0, 1), dil=(2, 1)), {}),
    "v4-os2-benchmark": (40700, _geo(g=2, d=16, os=2.0), {}),
    "v4-border-heavy": (40800, _geo(g=2, d=8), {"offsets": "border"}),
    "v4-interior-only": (40900, _geo(g=2, d=8), {"offsets": "interior"}),
    "v4-remove-center": (41000, _geo(g=6, d=8, os=0.5, rc=True), {}),
    # P = 8 packs 24·G lanes, already a multiple of 8: widen it so padding lanes exist.
    "v4-remove-center-wide": (41100, _geo(g=2, d=8, rc=True, offset_mask_dim=56), {}),
    "v4-softmax": (41200, _geo(g=4, d=8, softmax=True), {"mask": "logits"}),
    "v4-zero-lanes": (41300, _geo(g=3, d=8), {"pad_lanes": "zero"}),
    "v4-non-contiguous": (41400, _geo(g=2, d=8, stride=(2, 1), pad=(1, 0), dil=(1, 2)), {"contiguous": False}),
    "v4-batch0": (41500, _geo(n=0, g=2, d=8), {}),
    "v4-batch1": (41600, _geo(n=1, g=2, d=8), {}),
    "v4-batch5-step2": (41700, _geo(n=5, h=5, w=5, g=2, d=8, step=2), {}),
}

_HALF_TYPES_FOR = ("v4-default", "v4-d32-g2", "v4-border-heavy")

# Failure class "float16/bfloat16 overflow", as DCNv3's (ops/dcnv3/suite.py): 9 and 8 points.
_LARGE_VALUES: dict[str, tuple[int, Dcnv4Geometry, dict]] = {
    "v4-large-values-3x3": (44000, _geo(n=1, h=7, w=9, g=2, d=8), {}),
    "v4-large-values-2x4-s12-p01-d21": (44100, _geo(n=2, h=7, w=10, g=3, d=8, kh=2, kw=4, stride=(1, 2), pad=(0, 1),
                                                    dil=(2, 1)), {}),
}

# DCNv4 == DCNv3 on the offsets and mask its offset_mask packs (references.py).
_IDENTITIES: dict[str, tuple[int, Dcnv4Geometry, dict]] = {
    "v4-identity-dcnv3": (42000, _geo(g=3, d=8, kh=3, kw=3, stride=(2, 1), pad=(1, 2), dil=(1, 2), os=0.5),
                          {"check": "dcnv3", "offsets": "border"}),
    "v4-identity-dcnv3-softmax": (42100, _geo(g=2, d=8, softmax=True), {"check": "dcnv3", "mask": "logits"}),
}

_GRADCHECK: dict[str, tuple[int, Dcnv4Geometry, dict]] = {
    "v4-gradcheck": (43000, _geo(n=1, h=4, w=5, g=1, d=2, stride=(1, 2), pad=(0, 1), os=0.5), {"check": "gradcheck"}),
    "v4-gradcheck-softmax": (43100, _geo(n=1, h=4, w=4, g=1, d=2, stride=2, softmax=True),
                             {"check": "gradcheck", "mask": "logits"}),
}


def default_suite(seed: int = 0) -> list[Dcnv4Case]:
    return build(Dcnv4Case, _GEOMETRIES, _IDENTITIES, _GRADCHECK, _HALF_TYPES_FOR, seed, large_values=_LARGE_VALUES)


# ---- the covering array (covering.py): DCNv3's options within what DCNv4's kernels accept ----------
# 8 or 9 points (3x3 and its remove_center, 2x4, 9x1 and its remove_center: a 2x4 kernel without
# its centre would have 7, so that pair is excluded), channels per group 8 and 16, and DCNv4's own:
# the softmax flag (its mask then holds logits), the packed padding lanes (NaN or zeros) and an
# offset_mask 8 lanes wider than the module's.
def pair_options():
    from dcnbench.checking.covering import Constraint, Option, Options
    from dcnbench.ops.dcnv3.suite import _group_pair_options

    own = (Option("softmax", (False, True)), Option("pad_lanes", ("nan", "zero")), Option("wider", (False, True)))
    options = tuple(o for o in _group_pair_options(kernels=((3, 3), (2, 4), (9, 1)), channels=(8, 16), masks=("uniform",),
                                                   extra=own) if o.name != "mask")
    points = Constraint(("kernel", "remove_center"), lambda kernel, remove_center: kernel[0] * kernel[1] - remove_center in (8, 9),
                        "DCNv4's kernels take 8 or 9 points: a 2x4 kernel without its centre has 7")
    return Options(options=options, constraints=(points,), build=_pair_case, seed=50000,
                   prefix="v4-pairs")


def _pair_case(name: str, row: dict, seed: int) -> Dcnv4Case:
    from dcnbench.ops.dcnv3.suite import group_pair_case
    from dcnbench.ops.dcnv4.contract import packed_width

    points = row["kernel"][0] * row["kernel"][1] - row["remove_center"]
    wider = {"offset_mask_dim": packed_width(row["group"], points) + 8} if row["wider"] else {}
    return group_pair_case(Dcnv4Case, Dcnv4Geometry, name, row | {"mask": "logits" if row["softmax"] else "uniform"}, seed,
                           softmax=row["softmax"], pad_lanes=row["pad_lanes"], **wider)
