"""deform_roi_pool's default verification suite (float64 and float32 each; gradcheck in float64).

A case's seed is written next to it: it is part of the case's identity (results compare by it).
"""

from __future__ import annotations

from dcnbench.ops.deform_roi_pool.contract import RoIPoolGeometry
from dcnbench.ops.deform_roi_pool.workloads import RoIPoolCase


def _roi(n=2, c=3, h=10, w=12, k=12, out=(3, 4), scale=0.5, sr=2, gamma=0.1) -> RoIPoolGeometry:
    return RoIPoolGeometry(n=n, c=c, h=h, w=w, rois=k, output_size=out, spatial_scale=scale, sampling_ratio=sr, gamma=gamma)


# name -> (seed, geometry, case options)
_CASES: dict[str, tuple[int, RoIPoolGeometry, dict]] = {
    "roi-inside": (300, _roi(), {"rois": "inside"}),
    "roi-border-adaptive": (1300, _roi(sr=0), {"rois": "border"}),
    "roi-outside": (2300, _roi(), {"rois": "outside"}),
    "roi-tiny-degenerate": (3300, _roi(sr=0, scale=1.0), {"rois": "tiny"}),
    "roi-tiny-degenerate-sr2": (4300, _roi(sr=2, scale=1.0), {"rois": "tiny"}),
    "roi-large-adaptive": (5300, _roi(sr=0, h=6, w=7, scale=0.25), {"rois": "large"}),
    "roi-many-3-images": (6300, _roi(n=3, k=60, out=(2, 2), sr=0), {"rois": "mixed"}),
    "roi-offsets-zero": (7300, _roi(), {"rois": "mixed", "offsets": "zero"}),
    "roi-offsets-small": (8300, _roi(), {"rois": "mixed", "offset_scale": 0.1}),
    "roi-offsets-large": (9300, _roi(gamma=0.5), {"rois": "mixed", "offset_scale": 3.0}),
    "roi-no-offset": (10300, _roi(), {"rois": "mixed", "no_offset": True, "check": "no_offset"}),
    "roi-non-contiguous": (11300, _roi(), {"rois": "mixed", "contiguous": False}),
    # With zero offsets mmcv's operator is roi_align(aligned=True), in any setting.
    "identity-roi-align": (25300, _roi(sr=0), {"rois": "mixed", "offsets": "zero", "check": "roi_align"}),
    "identity-roi-align-sr2": (26300, _roi(), {"rois": "mixed", "offsets": "zero", "check": "roi_align"}),
    # NaN and Inf in an image no RoI reads (the result must be the one zeros there give), and also in
    # two pixels that some RoIs read (exactly the bins and gradients that read them non-finite).
    "roi-nonfinite-unread": (33300, _roi(n=3), {"rois": "mixed", "poison": "unread"}),
    "roi-nonfinite-read": (34300, _roi(n=3), {"rois": "mixed", "poison": "read"}),
}

# Failure class "grid limits" (float32 only): more RoIs than a CUDA grid's y or z dimension may hold
# (65535): a launch that maps RoIs to blockIdx.y fails here; ext's 1-D grid-stride launches do not.
GRID_CASES: dict[str, tuple[int, RoIPoolGeometry, dict]] = {
    "roi-grid-65600-rois": (37300, _roi(n=2, c=1, h=6, w=7, k=65600, out=(2, 1), sr=1, scale=1.0), {"rois": "inside"}),
}

# Failure class "float16/bfloat16 overflow" (ops/case.py's LARGE_VALUES), in the half types only: adaptive
# sampling on RoIs much larger than the bins, so a bin averages up to 90 or 99 samples whose sum passes
# 65504 while the average stays near 2400.
_LARGE_VALUES: dict[str, tuple[int, RoIPoolGeometry, dict]] = {
    "roi-large-values-adaptive-2x3": (38300, _roi(n=1, c=2, h=10, w=12, k=3, out=(2, 3), sr=0, scale=1.0),
                                      {"rois": "large", "values": "large"}),
    "roi-large-values-adaptive-3x2-s0.5": (38800, _roi(n=2, c=3, h=30, w=36, k=6, out=(3, 2), sr=0, scale=0.5),
                                           {"rois": "proposals", "values": "large"}),
}

# Under torch.compile(fullgraph=True) against the backend itself, eager (float64 only: one trace).
_COMPILE = {"compile-roi": (31300, _roi(), {"rois": "mixed", "check": "compile"})}

_GRADCHECK: dict[str, tuple[int, RoIPoolGeometry, dict]] = {
    "gradcheck-roi": (900, _roi(n=2, c=2, h=6, w=7, k=4, out=(2, 2), sr=0, scale=1.0), {"rois": "mixed", "check": "gradcheck"}),
}


def default_suite(seed: int = 0) -> list[RoIPoolCase]:
    return RoIPoolCase.suite(seed, _CASES, _GRADCHECK | _COMPILE, float32_only=GRID_CASES, half_only=_LARGE_VALUES)


# ---- the covering array (covering.py): every pair of these option values in some case --------------
# On a 10x13 map with 3 channels (H != W, bins never square); nothing is excluded.
def pair_options():
    from dcnbench.checking.covering import Option, Options

    return Options(
        options=(
            Option("output_size", ((3, 4), (2, 5), (4, 1))),
            Option("spatial_scale", (0.5, 0.25, 1.0)),
            Option("sampling_ratio", (0, 2, 3)),
            Option("gamma", (0.1, 0.5)),
            Option("rois", ("inside", "border", "outside", "large", "tiny")),
            Option("offsets", ("uniform", "zero")),
            Option("n", (1, 2, 3)),
            Option("contiguous", (True, False)),
            Option("dtype", ("float64", "float32", "float16", "bfloat16")),
        ),
        build=_pair_case, seed=50000, prefix="roi-pairs")


def _pair_case(name: str, row: dict, seed: int) -> RoIPoolCase:
    geo = _roi(n=row["n"], h=10, w=13, k=8, out=row["output_size"], scale=row["spatial_scale"], sr=row["sampling_ratio"],
               gamma=row["gamma"])
    return RoIPoolCase(name=name, geometry=geo, seed=seed, dtype=row["dtype"], rois=row["rois"], offsets=row["offsets"],
                       contiguous=row["contiguous"])
