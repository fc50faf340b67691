"""deform_conv2d's default verification suite: small seeded cases, each aimed at a way kernels go wrong.

Every geometry runs in float64 and float32; a few also in float16 and bfloat16. A case's seed is
written next to it: it is part of the case's identity (results compare by it), so adding a case
never reseeds the others.
"""

from __future__ import annotations

from dataclasses import replace

from dcnbench.ops.deform_conv2d.contract import ConvGeometry
from dcnbench.ops.deform_conv2d.workloads import ConvCase


def _geo(n=2, c=4, h=9, w=9, o=6, kh=3, kw=3, stride=1, pad=1, dil=1, groups=1, og=1) -> ConvGeometry:
    def hw(v):
        return v if isinstance(v, tuple) else (v, v)

    return ConvGeometry(n=n, c=c, h=h, w=w, o=o, kh=kh, kw=kw, stride=hw(stride), padding=hw(pad),
                        dilation=hw(dil), groups=groups, offset_groups=og)


# name -> (seed, geometry, case options). What each case is for is in its name.
_GEOMETRIES: dict[str, tuple[int, ConvGeometry, dict]] = {
    "v2": (0, _geo(), {}),
    "v1": (1000, _geo(), {"mask": False}),
    "v2-nobias": (2000, _geo(), {"bias": False}),
    "v1-nobias": (3000, _geo(), {"mask": False, "bias": False}),
    "groups2": (4000, _geo(c=8, o=6, groups=2), {}),
    "offset-groups2": (5000, _geo(c=8, og=2), {"offset_scale": 2.0}),
    "groups2-offset-groups4": (6000, _geo(c=8, o=4, groups=2, og=4), {}),
    "stride2": (7000, _geo(h=11, w=11, stride=2), {}),
    "dilation2": (8000, _geo(h=11, w=11, pad=2, dil=2), {}),
    "asymmetric-2x3-s21-p10-d12": (9000, _geo(h=10, w=11, kh=2, kw=3, stride=(2, 1), pad=(1, 0), dil=(1, 2)), {}),
    "rect-kernel-3x1": (10000, _geo(kh=3, kw=1, pad=(1, 0)), {}),
    "non-square-7x13": (11000, _geo(h=7, w=13), {}),
    "batch0": (12000, _geo(n=0), {}),
    "batch1": (13000, _geo(n=1), {}),
    "batch37": (14000, _geo(n=37, c=2, h=6, w=6, o=3), {}),
    "non-contiguous": (15000, _geo(c=8, og=2), {"contiguous": False}),
    "offsets-near-zero": (16000, _geo(), {"offset_scale": 0.01}),
    "offsets-large": (17000, _geo(h=12, w=12), {"offset_scale": 5.0}),
    "anisotropic": (18000, _geo(), {"offsets": "anisotropic", "offset_scale": 3.0}),
    "border-heavy": (19000, _geo(c=4, og=2), {"offsets": "border"}),
    "interior-only": (20000, _geo(), {"offsets": "interior"}),
    # One border band at a time (DCN.md's rules Z and C differ only there), DCNv1 and DCNv2.
    "band-low-v1": (21000, _geo(), {"offsets": "band-low", "mask": False}),
    "band-high-v1": (22000, _geo(), {"offsets": "band-high", "mask": False}),
    "band-low-v2": (23000, _geo(), {"offsets": "band-low"}),
    "band-high-v2": (24000, _geo(), {"offsets": "band-high"}),
    "interior-only-v1": (25000, _geo(), {"offsets": "interior", "mask": False}),
    # Every 4-D argument in channels-last memory (non-contiguous covers strided views).
    "channels-last": (26000, _geo(c=8, og=2), {"memory_format": "channels_last"}),
    # Batch sizes at the 32-image boundary, where kernels that chunk the batch go wrong (torchvision
    # runs chunks of the largest divisor <= 32, so 33 is one image past a chunk).
    "batch31": (27000, _geo(n=31, c=2, h=6, w=6, o=3), {}),
    "batch32": (28000, _geo(n=32, c=2, h=6, w=6, o=3), {}),
    "batch33": (29000, _geo(n=33, c=2, h=6, w=6, o=3), {}),
    # NaN and Inf in the input (issue: a bad pixel must poison only the outputs that read it): in
    # pixels no sample reads (the result must be the one zeros there give), and also in pixels and a
    # mask entry some samples read (exactly those outputs and gradients non-finite, the rest exact).
    "nonfinite-unread-v2": (32000, _geo(c=4, h=12, w=16, o=4, groups=2, og=2), {"offsets": "fenced", "poison": "unread"}),
    "nonfinite-unread-v1": (33000, _geo(c=4, h=12, w=16, o=4, groups=2, og=2), {"offsets": "fenced", "poison": "unread", "mask": False}),
    "nonfinite-read-v2": (34000, _geo(c=4, h=12, w=16, o=4, groups=2, og=2), {"offsets": "fenced", "poison": "read"}),
    "nonfinite-read-v1": (35000, _geo(c=4, h=12, w=16, o=4, groups=2, og=2), {"offsets": "fenced", "poison": "read", "mask": False}),
}

# One image past ext's CPU column chunk (2^23 column elements: 14 images of 64x9x32x32): the
# batch runs as 14 + 1. Large, so one dtype each (the reference is float64 either way): float32,
# except where float32 itself cannot meet verify's fixed tolerance (_LARGE_FLOAT64); and the random
# cotangent alone (ext makes the cotangent contiguous before it chunks the batch, so a layout cannot
# meet the chunk; every smaller case runs the layouts, which cost 45 % of these cases' rows).
_LARGE_OPTIONS = {"offset_scale": 2.0, "cotangent_layouts": False}
_LARGE: dict[str, tuple[int, ConvGeometry, dict]] = {
    "batch15-past-column-chunk": (30000, _geo(n=15, c=64, h=32, w=32, o=8), _LARGE_OPTIONS),
    # A second, independent geometry past the chunk: 3.6M column elements an image, so chunks of 2
    # images and a last chunk of 1 (asymmetric 2x3 kernel, 251x300 map).
    "batch3-past-column-chunk-2x3": (30500, _geo(n=3, c=8, h=251, w=300, o=4, kh=2, kw=3, pad=(0, 1)), _LARGE_OPTIONS),
}
# Its weight gradient sums 3 x 75300 products per element: under the expanded cotangent (one
# cotangent repeated over the batch, so the roundoff adds up coherently) every float32 formulation
# misses the fixed 1e-5 by a hair (measured: the float32 oracle, torchvision and ext all 1.03e-5).
# Its point is the chunk boundary, which float64 shows as well.
_LARGE_FLOAT64 = ("batch3-past-column-chunk-2x3",)

# Failure class "grid limits" (float64 only: past 2^16 rows a float32 kernel's sampling coordinates
# are 2^-7 apart, and the float32 oracle itself misses 1e-5 there, by 9e-4): more output rows than a
# CUDA grid's y or z dimension may hold (65535). A launch that maps rows to blockIdx.y fails here;
# ext's 1-D grid-stride launches do not.
_GRID: dict[str, tuple[int, ConvGeometry, dict]] = {
    "grid-tall-image-65600x2": (37000, _geo(n=1, c=1, h=65600, w=2, o=1, kh=2, kw=1, pad=0), {}),
}

# Failure class "float16/bfloat16 overflow" (workloads.py's LARGE_VALUES), in the half types only:
# C·kh·kw of 576 and 480 terms whose float16 partial sums pass 65504 while the results stay below 2e4.
_LARGE_VALUES: dict[str, tuple[int, ConvGeometry, dict]] = {
    "large-values-c64-3x3": (36000, _geo(n=1, c=64, h=7, w=9, o=4), {"values": "large"}),
    "large-values-c48-2x5": (36500, _geo(n=1, c=48, h=6, w=11, o=3, kh=2, kw=5, stride=(1, 2), pad=(1, 2)),
                             {"values": "large"}),
}

_HALF_TYPES_FOR = ("v2", "v1", "groups2-offset-groups4", "border-heavy")

# Identities: exact statements about the function that need no oracle. Integer sampling points
# are the point of these cases, so the kink margin is off.
_IDENTITIES: dict[str, tuple[int, ConvGeometry, dict]] = {
    "identity-zero-offset-v2": (500, _geo(c=8, o=4, groups=2, og=2), {"check": "zero_offset", "offsets": "zero"}),
    "identity-zero-offset-v1": (1500, _geo(h=10, w=8, stride=2, dil=2, pad=2), {"check": "zero_offset", "offsets": "zero", "mask": False}),
    "identity-integer-offset": (2500, _geo(c=8, o=4, groups=2, og=2, h=8, w=10), {"check": "integer_offset", "offsets": "integer", "offset_scale": 2.0, "mask": False}),
    "identity-zero-mask": (3500, _geo(c=8, og=2), {"check": "zero_mask"}),
}

# Under torch.compile(fullgraph=True) against the backend itself, eager (float64 only: one trace).
_COMPILE: dict[str, tuple[int, ConvGeometry, dict]] = {
    "compile-v2": (31000, _geo(c=4, og=2), {"check": "compile"}),
}

_GRADCHECK: dict[str, tuple[int, ConvGeometry, dict]] = {
    "gradcheck-v2": (700, _geo(n=1, c=4, h=4, w=5, o=2, groups=2, og=2), {"check": "gradcheck"}),
    "gradcheck-v1-border": (1700, _geo(n=1, c=2, h=4, w=4, o=2, stride=2), {"check": "gradcheck", "mask": False, "offsets": "border"}),
}


# The ONNX export check (onnx_export.py): a small layer around each backend's kernel exported with
# torch.onnx.export and run in onnxruntime, on samples in the border bands, asymmetric stride,
# padding and dilation, groups and offset groups; DCNv2 with bias, and DCNv1 without (ONNX's
# optional inputs, an inner one left out).
_EXPORT: dict[str, tuple[int, ConvGeometry, dict]] = {
    "export-v2-border-asym-groups2-og2": (800, _geo(c=8, h=10, w=11, o=6, stride=(2, 1), pad=(1, 2), dil=(1, 2), groups=2, og=2),
                                          {"check": "export", "offsets": "border"}),
    "export-v1-nobias-border-2x3": (1800, _geo(h=9, w=8, kh=2, kw=3, stride=(1, 2), pad=(0, 1), dil=(2, 1), og=2),
                                    {"check": "export", "offsets": "border", "mask": False, "bias": False}),
}


def default_suite(seed: int = 0) -> list[ConvCase]:
    cases = []
    for name, (offset, geo, opts) in _GEOMETRIES.items():
        dtypes = ("float64", "float32") + (("float16", "bfloat16") if name in _HALF_TYPES_FOR else ())
        base = ConvCase(name=name, geometry=geo, seed=seed + offset, **opts)
        cases += [replace(base, dtype=d) for d in dtypes]
    for name, (offset, geo, opts) in _LARGE.items():
        dtype = "float64" if name in _LARGE_FLOAT64 else "float32"
        cases.append(ConvCase(name=name, geometry=geo, seed=seed + offset, dtype=dtype, **opts))
    for name, (offset, geo, opts) in _GRID.items():
        cases.append(ConvCase(name=name, geometry=geo, seed=seed + offset, dtype="float64", **opts))
    for name, (offset, geo, opts) in _LARGE_VALUES.items():
        cases += [ConvCase(name=name, geometry=geo, seed=seed + offset, dtype=d, **opts) for d in ("float16", "bfloat16")]
    for name, (offset, geo, opts) in _IDENTITIES.items():
        base = ConvCase(name=name, geometry=geo, seed=seed + offset, kink_margin=None, **opts)
        cases += [replace(base, dtype=d) for d in ("float64", "float32")]
    for name, (offset, geo, opts) in (_GRADCHECK | _COMPILE).items():
        cases.append(ConvCase(name=name, geometry=geo, seed=seed + offset, **opts))
    for name, (offset, geo, opts) in _EXPORT.items():
        base = ConvCase(name=name, geometry=geo, seed=seed + offset, **opts)
        cases += [replace(base, dtype=d) for d in ("float64", "float32")]
    return cases


# ---- the covering array (covering.py): every pair of these option values in some case --------------
# Asymmetric throughout: no kernel is square, stride, padding and dilation differ per axis, H != W,
# and C = 3·L, O = 5·L (L = lcm(groups, offset groups)) are not multiples of each other. Nothing is
# excluded: the sizes follow the row (H and W so the output is 4x5 or more; C and O so every group
# divides them, O by the offset groups too, as MXNet and paddle require). No stride is 3 across
# (with dilation 2 down that is the corner only `verify --fuzz` must find, tests/test_fuzz.py).
def pair_options():
    from dcnbench.checking.covering import Option, Options

    return Options(
        options=(
            Option("kernel", ((3, 2), (2, 4), (1, 3))),
            Option("stride", ((1, 2), (2, 1), (3, 1))),
            Option("padding", ((0, 1), (1, 0), (2, 1))),
            Option("dilation", ((1, 2), (2, 1), (1, 3))),
            Option("groups", (1, 2, 3)),
            Option("offset_groups", (1, 2, 3)),
            Option("mask", (True, False)),
            Option("bias", (True, False)),
            Option("n", (1, 2, 3)),
            Option("offsets", ("uniform", "border")),
            Option("layout", ("contiguous", "strided", "channels_last")),
            Option("dtype", ("float64", "float32", "float16", "bfloat16")),
        ),
        build=_pair_case,
        seed=50000,
    )


def fitted(out: int, k: int, stride: int, pad: int, dil: int) -> int:
    """The input size (3 at least) whose output along this axis is `out` or, where 3 is larger, more."""
    return max(3, (out - 1) * stride + dil * (k - 1) + 1 - 2 * pad)


def _pair_case(name: str, row: dict, seed: int) -> ConvCase:
    from math import lcm

    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = row["kernel"], row["stride"], row["padding"], row["dilation"]
    h, w = fitted(4, kh, sh, ph, dh), fitted(5, kw, sw, pw, dw)
    w += w == h
    per = lcm(row["groups"], row["offset_groups"])
    geo = ConvGeometry(n=row["n"], c=3 * per, h=h, w=w, o=5 * per, kh=kh, kw=kw, stride=(sh, sw), padding=(ph, pw),
                       dilation=(dh, dw), groups=row["groups"], offset_groups=row["offset_groups"])
    layout = {"contiguous": {}, "strided": {"contiguous": False}, "channels_last": {"memory_format": "channels_last"}}
    spread = {"offset_scale": 2.0} if row["offsets"] == "uniform" else {}
    return ConvCase(name=name, geometry=geo, seed=seed, dtype=row["dtype"], mask=row["mask"], bias=row["bias"],
                    offsets=row["offsets"], **spread, **layout[row["layout"]])
