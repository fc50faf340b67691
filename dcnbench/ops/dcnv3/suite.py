"""DCNv3's default verification suite: small seeded cases, each aimed at a way kernels go wrong.

Channels per group from DCNv3's own test.py (1, 16, 30, 32, 64, 71 and 1025, which pick different
backward reductions in the CUDA op), groups 1 to 8, asymmetric kernels, strides, paddings and
dilations (a swapped axis changes the answer), offset_scale != 1, border-heavy, interior-only
and mostly-outside offsets, remove_center, non-contiguous inputs, batches of 0, 1 and one that
is not a multiple of im2col_step. Every geometry runs in float64 and float32; a few also in
float16 and bfloat16. Seeds sit next to the cases: adding one never reseeds the others.
"""

from __future__ import annotations

from dataclasses import replace

from dcnbench.ops.dcnv3.contract import GroupGeometry
from dcnbench.ops.dcnv3.workloads import Dcnv3Case


def group_geometry(cls=GroupGeometry, n=2, h=8, w=8, g=4, d=8, kh=3, kw=3, stride=1, pad=1, dil=1, os=1.0, rc=False,
                   step=256, **extra):
    def hw(v):
        return v if isinstance(v, tuple) else (v, v)

    return cls(n=n, h=h, w=w, group=g, group_channels=d, kh=kh, kw=kw, stride=hw(stride), padding=hw(pad),
               dilation=hw(dil), offset_scale=os, remove_center=rc, im2col_step=step, **extra)


_geo = group_geometry
_ASYM = {"kh": 3, "kw": 5, "stride": (2, 1), "pad": (1, 2), "dil": (1, 2)}

# name -> (seed, geometry, case options). Offsets spread ±2.5 px unless the options say otherwise.
_GEOMETRIES: dict[str, tuple[int, GroupGeometry, dict]] = {
    "v3-default": (30000, _geo(), {}),
    "v3-d1-g8": (30100, _geo(g=8, d=1), {}),
    "v3-d16-g4": (30200, _geo(n=1, g=4, d=16), {}),
    "v3-d30-g3": (30300, _geo(n=1, h=6, w=7, g=3, d=30), {}),
    "v3-d32-g2": (30400, _geo(n=1, h=6, w=6, g=2, d=32), {}),
    "v3-d64-g1": (30500, _geo(n=1, h=6, w=5, g=1, d=64), {}),
    "v3-d71-g5": (30600, _geo(n=1, h=5, w=5, g=5, d=71), {}),
    "v3-d1025-g1": (30700, _geo(n=1, h=4, w=4, g=1, d=1025), {}),
    "v3-asym-3x5-s21-p12-d12-os0.5": (30800, _geo(h=9, w=11, g=3, d=5, os=0.5, **_ASYM), {"offset_scale": 5.0}),
    "v3-asym-5x3-s12-p20-d21-os1.5": (30900, _geo(n=1, h=10, w=7, g=7, d=2, kh=5, kw=3, stride=(1, 2), pad=(2, 0),
                                                  dil=(2, 1), os=1.5), {}),
    "v3-even-2x4-p01-d12-os0.5": (31000, _geo(h=6, w=9, g=6, d=3, kh=2, kw=4, pad=(0, 1), dil=(1, 2), os=0.5), {}),
    "v3-os2-testpy": (31100, _geo(g=4, d=4, os=2.0), {}),
    "v3-mostly-outside": (31200, _geo(g=4, d=4, os=2.0), {"offsets": "positive", "offset_scale": 10.0}),
    "v3-border-heavy": (31300, _geo(g=2, d=4), {"offsets": "border"}),
    "v3-interior-only": (31400, _geo(g=2, d=4), {"offsets": "interior"}),
    "v3-remove-center": (31500, _geo(g=4, d=2, os=0.5, rc=True), {}),
    "v3-remove-center-5x5-d2-p34": (31600, _geo(n=1, h=9, w=10, g=2, d=3, kh=5, kw=5, pad=(3, 4), dil=2, os=0.75,
                                                rc=True), {}),
    "v3-mask-unnormalised": (31700, _geo(g=3, d=4), {"mask": "uniform"}),
    "v3-non-contiguous": (31800, _geo(g=2, d=4, **_ASYM), {"contiguous": False}),
    "v3-batch0": (31900, _geo(n=0), {}),
    "v3-batch1": (32000, _geo(n=1), {}),
    "v3-batch5-step2": (32100, _geo(n=5, h=5, w=5, g=2, d=2, step=2), {}),
}

_HALF_TYPES_FOR = ("v3-default", "v3-d16-g4", "v3-border-heavy")

# Failure class "float16/bfloat16 overflow" (ops/case.py's LARGE_VALUES, workloads.py's `halves` mask), in the half types only:
# large values and the `halves` mask take the running sum over the points past 65504 half way through
# while the results stay in range. Interior points: a corner outside the map reads 0 beside a pixel of
# 2400, an offset gradient of the order of mask · value summed over the channels, past the range too.
_LARGE_VALUES: dict[str, tuple[int, GroupGeometry, dict]] = {
    "v3-large-values-3x3": (35000, _geo(n=1, h=7, w=9, g=2, d=8), {}),
    "v3-large-values-2x4-s12-p01-d21": (35100, _geo(n=2, h=7, w=10, g=3, d=5, kh=2, kw=4, stride=(1, 2), pad=(0, 1),
                                                    dil=(2, 1)), {}),
}

# DCNv3 == depthwise torchvision.ops.deform_conv2d after the layout conversions (references.py).
_IDENTITIES: dict[str, tuple[int, GroupGeometry, dict]] = {
    "v3-identity-deform-conv2d": (33000, _geo(), {"check": "deform_conv2d"}),
    "v3-identity-deform-conv2d-asym-os0.5": (33100, _geo(g=3, d=5, os=0.5, **_ASYM), {"check": "deform_conv2d"}),
    "v3-identity-deform-conv2d-remove-center": (33200, _geo(g=2, d=3, kh=5, kw=5, pad=(3, 4), dil=2, os=0.75, rc=True),
                                                {"check": "deform_conv2d", "offsets": "border"}),
}

_GRADCHECK: dict[str, tuple[int, GroupGeometry, dict]] = {
    "v3-gradcheck": (34000, _geo(n=1, h=4, w=5, g=2, d=2, kh=2, kw=3, stride=(1, 2), pad=(0, 1), dil=(2, 1), os=0.5),
                     {"check": "gradcheck"}),
    "v3-gradcheck-border": (34100, _geo(n=1, h=4, w=4, g=1, d=2, stride=2, rc=True), {"check": "gradcheck",
                                                                                       "offsets": "border"}),
}


def build(case_class, geometries: dict, identities: dict, gradcheck: dict, half: tuple[str, ...], seed: int,
          spread: float = 2.5, large_values: dict | None = None) -> list:
    """Every geometry in float64 and float32 (the `half` ones in float16 and bfloat16 too), the
    identities in float64 and float32, gradcheck in float64, the large-values cases in float16 and
    bfloat16 (large values, the `halves` mask, interior points)."""
    cases = []
    for name, (offset, geo, opts) in geometries.items():
        dtypes = ("float64", "float32") + (("float16", "bfloat16") if name in half else ())
        base = case_class(name=name, geometry=geo, seed=seed + offset, **({"offset_scale": spread} | opts))
        cases += [replace(base, dtype=d) for d in dtypes]
    for name, (offset, geo, opts) in identities.items():
        base = case_class(name=name, geometry=geo, seed=seed + offset, **({"offset_scale": spread} | opts))
        cases += [replace(base, dtype=d) for d in ("float64", "float32")]
    for name, (offset, geo, opts) in gradcheck.items():
        cases.append(case_class(name=name, geometry=geo, seed=seed + offset, **({"offset_scale": spread} | opts)))
    for name, (offset, geo, opts) in (large_values or {}).items():
        base = case_class(name=name, geometry=geo, seed=seed + offset,
                          **({"offset_scale": spread, "values": "large", "mask": "halves", "offsets": "interior"} | opts))
        cases += [replace(base, dtype=d) for d in ("float16", "bfloat16")]
    return cases


def default_suite(seed: int = 0) -> list[Dcnv3Case]:
    return build(Dcnv3Case, _GEOMETRIES, _IDENTITIES, _GRADCHECK, _HALF_TYPES_FOR, seed, large_values=_LARGE_VALUES)


# ---- the covering array (covering.py): every pair of these option values in some case --------------
# Asymmetric throughout (non-square kernels, stride, padding and dilation different per axis, H != W),
# channels per group 3, 5 and 8 with 1, 3 or 4 groups, batches 1, 3 and 5 against im2col_step 2, 4
# and 256 (so some steps do not divide the batch). Nothing is excluded: H and W follow the row so the
# output is at least 4x5 (deform_conv2d's `fitted`).
def pair_options():
    from dcnbench.checking.covering import Option, Options

    return Options(options=_group_pair_options(kernels=((3, 5), (5, 3), (2, 4), (1, 3)), channels=(3, 5, 8),
                                               masks=("softmax", "uniform")),
                   build=lambda name, row, seed: group_pair_case(Dcnv3Case, GroupGeometry, name, row, seed), seed=50000, prefix="v3-pairs")


def _group_pair_options(kernels: tuple, channels: tuple, masks: tuple, extra: tuple = ()) -> tuple:
    """The options DCNv3 and DCNv4 share (DCNv4 narrows the kernels and channels, adds its own)."""
    from dcnbench.checking.covering import Option

    return (
        Option("kernel", kernels),
        Option("stride", ((1, 2), (2, 1))),
        Option("padding", ((0, 1), (1, 0), (2, 1))),
        Option("dilation", ((1, 2), (2, 1), (3, 1))),
        Option("group", (1, 3, 4)),
        Option("group_channels", channels),
        Option("offset_scale", (0.5, 1.0, 1.5)),
        Option("remove_center", (False, True)),
        Option("mask", masks),
        Option("n", (1, 3, 5)),
        Option("im2col_step", (2, 4, 256)),
        Option("offsets", ("uniform", "border")),
        Option("contiguous", (True, False)),
        Option("dtype", ("float64", "float32", "float16", "bfloat16")),
        *extra,
    )


def group_pair_case(case_class, geometry_class, name: str, row: dict, seed: int, **extra):
    """A DCNv3/DCNv4 case from a covering-array row (`extra`: the geometry's and case's own fields)."""
    from dcnbench.ops.deform_conv2d.suite import fitted

    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = row["kernel"], row["stride"], row["padding"], row["dilation"]
    h, w = fitted(4, kh, sh, ph, dh), fitted(5, kw, sw, pw, dw)
    w += w == h
    geo_extra = {k: v for k, v in extra.items() if k in ("softmax", "offset_mask_dim")}
    geo = geometry_class(n=row["n"], h=h, w=w, group=row["group"], group_channels=row["group_channels"], kh=kh, kw=kw,
                         stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), offset_scale=row["offset_scale"],
                         remove_center=row["remove_center"], im2col_step=row["im2col_step"], **geo_extra)
    case_extra = {k: v for k, v in extra.items() if k not in geo_extra}
    return case_class(name=name, geometry=geo, seed=seed, dtype=row["dtype"], mask=row["mask"], offsets=row["offsets"],
                      offset_scale=2.5, contiguous=row["contiguous"], **case_extra)
