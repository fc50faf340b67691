"""Multi-scale deformable attention's default verification suite: small seeded cases, each aimed at
a way kernels (and their users) go wrong.

Options covered, each at both ends of what the models use: levels L 1, 2, 4 and 5, non-square and
of very different sizes (a 1x1 level beside a 16x24 one); points P 1, 2, 4 and 8; heads M 1, 2 and
8; channels D 1, 4 and 32; queries Lq 1 and 513; batch N 0, 1, 2, 5 with im2col_step 2 and 7 with
im2col_step 3 (not multiples); locations in [0, 1], outside it (a little, and mostly a pixel or more), in the border
bands, exactly on the edges 0 and 1 and exactly on pixel centres; attention weights softmaxed,
unnormalised and signed (not summing to 1) and halves (+1 then -1/2); values N(0, 1) and large ones
whose partial sums pass float16's range; non-contiguous arguments; NaN and Inf in pixels no sample
reads, and in pixels and locations some do. Every geometry in float64 and float32, five also in
float16 and bfloat16; every gradient under the cotangent layouts (verify's); the grid_sample and
pixel-centre identities; gradcheck; torch.compile; the ONNX export. Seeds sit next to the cases:
adding one never reseeds the others.
"""

from __future__ import annotations

from dataclasses import replace

from dcnbench.ops.dcnv3.suite import build
from dcnbench.ops.ms_deform_attn.contract import MsdaGeometry
from dcnbench.ops.ms_deform_attn.workloads import MsdaCase


def _geo(n=2, levels=((6, 9), (3, 5)), m=2, d=4, lq=7, p=2, step=64) -> MsdaGeometry:
    return MsdaGeometry(n=n, levels=tuple(levels), heads=m, channels=d, queries=lq, points=p, im2col_step=step)


_PYRAMID = ((8, 12), (4, 6), (2, 3), (1, 2))  # Deformable DETR's four levels, tiny
_SPREAD = ((16, 24), (1, 1), (2, 30), (9, 2), (5, 5))  # five levels of very different sizes and aspects
_TINY = ((2, 2), (1, 3))  # many points on few pixels: every pixel's gradient sums many samples

# name -> (seed, geometry, case options). Locations uniform in [0, 1] unless the options say otherwise.
_GEOMETRIES: dict[str, tuple[int, MsdaGeometry, dict]] = {
    "ms-default": (60000, _geo(), {}),
    "ms-l1": (60100, _geo(levels=((5, 7),), p=4), {}),
    "ms-l4-m8-p4": (60200, _geo(levels=_PYRAMID, m=8, d=4, lq=6, p=4), {}),
    "ms-l5-spread-sizes": (60300, _geo(levels=_SPREAD, lq=9, p=3), {"offsets": "outside"}),
    "ms-p1": (60400, _geo(p=1), {}),
    "ms-p8": (60500, _geo(n=1, p=8), {}),
    "ms-m1-d8": (60600, _geo(m=1, d=8), {}),
    "ms-m8-d32": (60700, _geo(n=1, levels=_PYRAMID, m=8, d=32, lq=4, p=4), {}),
    "ms-d1": (60800, _geo(d=1, m=3), {}),
    "ms-lq1": (60900, _geo(lq=1, levels=_PYRAMID), {}),
    "ms-lq513": (61000, _geo(n=1, lq=513, m=2, d=2, levels=((7, 5), (4, 3))), {}),
    "ms-batch0": (61100, _geo(n=0), {}),
    "ms-batch1": (61200, _geo(n=1), {}),
    "ms-batch5-step2": (61300, _geo(n=5, step=2, lq=3), {}),
    # A second batch past its last full chunk (7 = 2·3 + 1), on other levels and heads: a kernel that
    # drops or misplaces the partial chunk fails two geometries, not one.
    "ms-batch7-step3": (62500, _geo(n=7, step=3, lq=4, levels=((5, 3), (2, 4)), m=1, d=2, p=3), {}),
    "ms-outside": (61400, _geo(levels=_PYRAMID, p=3), {"offsets": "outside", "offset_scale": 0.3}),
    "ms-far-outside": (61500, _geo(), {"offsets": "outside", "offset_scale": 2.0}),
    "ms-border": (61600, _geo(levels=((5, 7), (3, 2))), {"offsets": "border"}),
    "ms-edges": (61700, _geo(levels=((4, 6), (3, 3))), {"offsets": "edges"}),
    "ms-weights-unnormalised": (61800, _geo(levels=_PYRAMID), {"weights": "uniform"}),
    "ms-weights-signed": (61900, _geo(), {"weights": "signed", "offsets": "outside"}),
    "ms-shared-pixels": (62000, _geo(levels=_TINY, lq=12, p=4), {"offsets": "outside", "offset_scale": 0.2}),
    "ms-non-contiguous": (62100, _geo(levels=_PYRAMID, p=3), {"contiguous": False, "offsets": "outside"}),
    # Large values, weights +1 for the first half of the L·P = 40 points and -1/2 for the rest: partial
    # sums reach 70000 (past float16's 65504), the output is about 35000. Interior points: a corner
    # outside the map would make a location gradient of 3500·W per channel, past the range too.
    "ms-large-partial-sums": (62200, _geo(n=1, levels=((4, 6), (3, 4), (3, 3), (4, 3), (3, 5)), m=1, d=8, lq=5,
                                          p=8), {"values": "large", "weights": "halves", "offsets": "interior"}),
    # The same class on another geometry: L·P = 4·12 = 48 points (partial sums to 84000, output about
    # 42000), two heads, two images.
    "ms-large-partial-sums-m2": (62600, _geo(n=2, levels=((5, 4), (3, 6), (2, 2), (4, 4)), m=2, d=4, lq=3, p=12),
                                 {"values": "large", "weights": "halves", "offsets": "interior"}),
    # NaN and Inf (README "Non-finite values"): in pixels no sample reads (the result must be what
    # zeros there give), and also in pixels some samples read and in two locations.
    "nonfinite-unread": (62300, _geo(levels=((6, 8), (5, 6))), {"offsets": "fenced", "poison": "unread"}),
    "nonfinite-read": (62400, _geo(levels=((6, 8), (5, 6))), {"offsets": "fenced", "poison": "read"}),
}

_HALF_TYPES_FOR = ("ms-default", "ms-l4-m8-p4", "ms-border", "ms-large-partial-sums", "ms-large-partial-sums-m2")

_IDENTITIES: dict[str, tuple[int, MsdaGeometry, dict]] = {
    # The direct bilinear formula and grid_sample's (mmcv's and transformers' eager code) agree.
    "ms-grid-sample-identity": (63000, _geo(levels=_PYRAMID, p=3), {"check": "grid_sample", "offsets": "outside"}),
    "ms-grid-sample-identity-border": (63100, _geo(levels=_SPREAD, m=1, d=3), {"check": "grid_sample",
                                                                              "offsets": "border"}),
    # Exactly on pixel centres (and one pixel outside): a gather, no interpolation. Levels of
    # power-of-two sizes, so (i + 0.5) / size is exact in every dtype.
    "ms-pixel-centres": (63200, _geo(levels=((4, 8), (8, 2), (2, 4)), m=2, d=3, lq=6, p=3),
                         {"check": "pixel_centres", "offsets": "centres", "kink_margin": None}),
}

_GRADCHECK: dict[str, tuple[int, MsdaGeometry, dict]] = {
    "ms-gradcheck": (64000, _geo(n=1, levels=((3, 4), (2, 2)), m=2, d=2, lq=3, p=2), {"check": "gradcheck",
                                                                                   "offsets": "outside"}),
    "ms-gradcheck-border": (64100, _geo(n=2, levels=((2, 3),), m=1, d=2, lq=2, p=3), {"check": "gradcheck",
                                                                                 "offsets": "border"}),
}

# Under torch.compile(fullgraph=True) against the backend itself eager (float64: one trace).
_COMPILE: dict[str, tuple[int, MsdaGeometry, dict]] = {
    "ms-compile": (65000, _geo(levels=_PYRAMID), {"check": "compile", "offsets": "outside"}),
}

# The ONNX export check: one attention call around the backend's kernel, exported and run by onnxruntime.
_EXPORT: dict[str, tuple[int, MsdaGeometry, dict]] = {
    "ms-export": (66000, _geo(levels=_PYRAMID, p=3), {"check": "export", "offsets": "outside"}),
}


def default_suite(seed: int = 0) -> list[MsdaCase]:
    cases = build(MsdaCase, _GEOMETRIES, _IDENTITIES, _GRADCHECK, _HALF_TYPES_FOR, seed, spread=0.5)
    for name, (offset, geo, opts) in _COMPILE.items():
        cases.append(MsdaCase(name=name, geometry=geo, seed=seed + offset, **opts))
    for name, (offset, geo, opts) in _EXPORT.items():
        base = MsdaCase(name=name, geometry=geo, seed=seed + offset, **opts)
        cases += [replace(base, dtype=d) for d in ("float64", "float32")]
    return cases
