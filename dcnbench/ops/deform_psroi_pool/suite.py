"""deform_psroi_pool's default verification suite (float64 and float32 each; gradcheck in float64).

MXNet takes spatial_scale and trans_std as float32 parameters, so the suite uses values float32
holds exactly (0.5, 0.25, ...). A case's seed is written next to it: it is part of its identity.
"""

from __future__ import annotations

from dcnbench.ops.deform_psroi_pool.contract import PSRoIPoolGeometry
from dcnbench.ops.deform_psroi_pool.workloads import PSRoIPoolCase


def _psroi(n=2, d=2, group=3, h=10, w=12, k=12, pooled=3, part=3, spp=2, scale=0.5, std=0.25, classes=1) -> PSRoIPoolGeometry:
    return PSRoIPoolGeometry(n=n, c=d * group * group, h=h, w=w, rois=k, pooled_size=pooled, spatial_scale=scale,
                             sample_per_part=spp, trans_std=std, group_size=group, part_size=part, classes=classes)


# name -> (seed, geometry, case options)
_CASES: dict[str, tuple[int, PSRoIPoolGeometry, dict]] = {
    "psroi-inside": (12300, _psroi(), {"rois": "inside"}),
    "psroi-border": (13300, _psroi(), {"rois": "border"}),
    "psroi-outside": (14300, _psroi(), {"rois": "outside"}),
    "psroi-tiny-degenerate": (15300, _psroi(scale=1.0), {"rois": "tiny"}),
    "psroi-large": (16300, _psroi(h=6, w=7, scale=0.25), {"rois": "large"}),
    "psroi-many-3-images-2-classes": (17300, _psroi(n=3, d=4, k=60, classes=2), {"rois": "mixed"}),
    "psroi-group1-plain": (18300, _psroi(d=4, group=1, pooled=3, part=3), {"rois": "mixed"}),
    "psroi-part2-pooled4-spp3": (19300, _psroi(d=2, group=2, pooled=4, part=2, spp=3), {"rois": "mixed"}),
    "psroi-offsets-zero": (20300, _psroi(), {"rois": "mixed", "offsets": "zero"}),
    "psroi-offsets-small": (21300, _psroi(), {"rois": "mixed", "offset_scale": 0.1}),
    "psroi-offsets-large": (22300, _psroi(std=0.5), {"rois": "mixed", "offset_scale": 3.0}),
    "psroi-no-trans": (23300, _psroi(), {"rois": "mixed", "no_offset": True, "check": "no_offset"}),
    "psroi-non-contiguous": (24300, _psroi(), {"rois": "mixed", "contiguous": False}),
    # With zero offsets MXNet's operator is (ps_)roi_align on moved RoIs, where every sample lies inside the map.
    "identity-psroi-ps-roi-align": (27300, _psroi(spp=3), {"rois": "inside", "offsets": "zero", "check": "ps_roi_align"}),
    "identity-psroi-group1-roi-align": (28300, _psroi(group=1, d=3), {"rois": "inside", "offsets": "zero", "check": "ps_roi_align"}),
    # NaN and Inf in an image no RoI reads (the result must be the one zeros there give), and also in
    # two pixels that some RoIs read (exactly the bins and gradients that read them non-finite).
    "psroi-nonfinite-unread": (34300, _psroi(n=3), {"rois": "mixed", "poison": "unread"}),
    "psroi-nonfinite-read": (35300, _psroi(n=3), {"rois": "mixed", "poison": "read"}),
}

# Failure class "grid limits" (float32 only): more RoIs than a CUDA grid's y or z dimension may hold.
GRID_CASES: dict[str, tuple[int, PSRoIPoolGeometry, dict]] = {
    "psroi-grid-65600-rois": (37400, _psroi(n=2, d=1, group=1, h=6, w=7, k=65600, pooled=2, part=2, spp=1, scale=1.0),
                              {"rois": "inside"}),
}

# Failure class "float16/bfloat16 overflow" (ops/case.py's LARGE_VALUES), in the half types only: 8x8 and
# 7x7 samples a bin (sample_per_part), so a bin's sum passes 65504 while its average stays near 2400.
_LARGE_VALUES: dict[str, tuple[int, PSRoIPoolGeometry, dict]] = {
    "psroi-large-values-spp8": (38400, _psroi(n=1, d=2, group=2, h=12, w=15, k=4, pooled=2, part=2, spp=8, scale=0.5),
                                {"rois": "inside", "values": "large"}),
    "psroi-large-values-spp7-pooled3": (38900, _psroi(n=2, d=2, group=3, h=10, w=13, k=6, pooled=3, part=3, spp=7,
                                                      scale=1.0, classes=2), {"rois": "inside", "values": "large"}),
}

# Under torch.compile(fullgraph=True) against the backend itself, eager (float64 only: one trace).
_COMPILE = {"compile-psroi": (32300, _psroi(), {"rois": "mixed", "check": "compile"})}

_GRADCHECK: dict[str, tuple[int, PSRoIPoolGeometry, dict]] = {
    "gradcheck-psroi": (1900, _psroi(n=2, d=1, group=2, h=6, w=7, k=4, pooled=2, part=2, scale=1.0, classes=1),
                        {"rois": "mixed", "check": "gradcheck"}),
}


def default_suite(seed: int = 0) -> list[PSRoIPoolCase]:
    return PSRoIPoolCase.suite(seed, _CASES, _GRADCHECK | _COMPILE, float32_only=GRID_CASES, half_only=_LARGE_VALUES)


# ---- the covering array (covering.py): every pair of these option values in some case --------------
# On a 10x13 map; C = output_dim·group², output_dim = classes·(2 per class), so every row is a valid
# call. Offsets are never all zero here (zero offsets keep MXNet's rounded RoI corners on the skip
# lines -0.5 and size-0.5, where no sample may sit: the hand-written cases cover them). Excluded: position-sensitive groups finer than the bins (group > pooled) and offset parts
# finer than the bins (part > pooled), which MXNet's operator does not define.
def pair_options():
    from dcnbench.checking.covering import Constraint, Option, Options

    return Options(
        options=(
            Option("pooled", (3, 4, 2)),
            Option("group", (1, 2, 3)),
            Option("part", (2, 3, 1)),
            Option("sample_per_part", (1, 2, 3)),
            Option("spatial_scale", (0.5, 0.25, 1.0)),
            Option("trans_std", (0.25, 0.5)),
            Option("classes", (1, 2)),
            Option("rois", ("inside", "border", "outside", "large", "tiny")),
            Option("offset_scale", (0.1, 1.0, 3.0)),
            Option("n", (1, 2, 3)),
            Option("contiguous", (True, False)),
            Option("dtype", ("float64", "float32", "float16", "bfloat16")),
        ),
        constraints=(Constraint(("group", "pooled"), lambda group, pooled: group <= pooled,
                                "position-sensitive groups finer than the bins"),
                     Constraint(("part", "pooled"), lambda part, pooled: part <= pooled, "offset parts finer than the bins")),
        build=_pair_case, seed=50000, prefix="psroi-pairs")


def _pair_case(name: str, row: dict, seed: int) -> PSRoIPoolCase:
    geo = _psroi(n=row["n"], d=2 * row["classes"], group=row["group"], h=10, w=13, k=8, pooled=row["pooled"],
                 part=row["part"], spp=row["sample_per_part"], scale=row["spatial_scale"], std=row["trans_std"],
                 classes=row["classes"])
    return PSRoIPoolCase(name=name, geometry=geo, seed=seed, dtype=row["dtype"], rois=row["rois"],
                         offset_scale=row["offset_scale"], contiguous=row["contiguous"])
