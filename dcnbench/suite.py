"""The default verification suite: small seeded cases, each aimed at a way kernels go wrong.

Every geometry runs in float64 and float32; a few convolutions also in float16 and bfloat16.
Sizes are small so the suite runs in well under a minute on two cores for the built-in backends.
"""

from __future__ import annotations

from dataclasses import replace

from dcnbench.ops import ConvGeometry
from dcnbench.roi_ops import PSRoIPoolGeometry, RoIPoolGeometry
from dcnbench.roi_workloads import PoolCase
from dcnbench.workloads import ConvCase


def _geo(n=2, c=4, h=9, w=9, o=6, kh=3, kw=3, stride=1, pad=1, dil=1, groups=1, og=1) -> ConvGeometry:
    def hw(v):
        return v if isinstance(v, tuple) else (v, v)

    return ConvGeometry(n=n, c=c, h=h, w=w, o=o, kh=kh, kw=kw, stride=hw(stride), padding=hw(pad),
                        dilation=hw(dil), groups=groups, offset_groups=og)


# name -> (geometry, case options). What each case is for is in its name.
_GEOMETRIES: dict[str, tuple[ConvGeometry, dict]] = {
    "v2": (_geo(), {}),
    "v1": (_geo(), {"mask": False}),
    "v2-nobias": (_geo(), {"bias": False}),
    "v1-nobias": (_geo(), {"mask": False, "bias": False}),
    "groups2": (_geo(c=8, o=6, groups=2), {}),
    "offset-groups2": (_geo(c=8, og=2), {"offset_scale": 2.0}),
    "groups2-offset-groups4": (_geo(c=8, o=4, groups=2, og=4), {}),
    "stride2": (_geo(h=11, w=11, stride=2), {}),
    "dilation2": (_geo(h=11, w=11, pad=2, dil=2), {}),
    "asymmetric-2x3-s21-p10-d12": (_geo(h=10, w=11, kh=2, kw=3, stride=(2, 1), pad=(1, 0), dil=(1, 2)), {}),
    "rect-kernel-3x1": (_geo(kh=3, kw=1, pad=(1, 0)), {}),
    "non-square-7x13": (_geo(h=7, w=13), {}),
    "batch0": (_geo(n=0), {}),
    "batch1": (_geo(n=1), {}),
    "batch37": (_geo(n=37, c=2, h=6, w=6, o=3), {}),
    "non-contiguous": (_geo(c=8, og=2), {"contiguous": False}),
    "offsets-near-zero": (_geo(), {"offset_scale": 0.01}),
    "offsets-large": (_geo(h=12, w=12), {"offset_scale": 5.0}),
    "anisotropic": (_geo(), {"offsets": "anisotropic", "offset_scale": 3.0}),
    "border-heavy": (_geo(c=4, og=2), {"offsets": "border"}),
    "interior-only": (_geo(), {"offsets": "interior"}),
    # One border band at a time (DCN.md's rules Z and C differ only there), DCNv1 and DCNv2.
    "band-low-v1": (_geo(), {"offsets": "band-low", "mask": False}),
    "band-high-v1": (_geo(), {"offsets": "band-high", "mask": False}),
    "band-low-v2": (_geo(), {"offsets": "band-low"}),
    "band-high-v2": (_geo(), {"offsets": "band-high"}),
    "interior-only-v1": (_geo(), {"offsets": "interior", "mask": False}),
}

_HALF_TYPES_FOR = ("v2", "v1", "groups2-offset-groups4", "border-heavy")

# Identities: exact statements about the function that need no oracle. Integer sampling points
# are the point of these cases, so the kink margin is off.
_IDENTITIES: dict[str, tuple[ConvGeometry, dict]] = {
    "identity-zero-offset-v2": (_geo(c=8, o=4, groups=2, og=2), {"check": "zero_offset", "offsets": "zero"}),
    "identity-zero-offset-v1": (_geo(h=10, w=8, stride=2, dil=2, pad=2), {"check": "zero_offset", "offsets": "zero", "mask": False}),
    "identity-integer-offset": (_geo(c=8, o=4, groups=2, og=2, h=8, w=10), {"check": "integer_offset", "offsets": "integer", "offset_scale": 2.0, "mask": False}),
    "identity-zero-mask": (_geo(c=8, og=2), {"check": "zero_mask"}),
}

_GRADCHECK: dict[str, tuple[ConvGeometry, dict]] = {
    "gradcheck-v2": (_geo(n=1, c=4, h=4, w=5, o=2, groups=2, og=2), {"check": "gradcheck"}),
    "gradcheck-v1-border": (_geo(n=1, c=2, h=4, w=4, o=2, stride=2), {"check": "gradcheck", "mask": False, "offsets": "border"}),
}


def _roi(n=2, c=3, h=10, w=12, k=12, out=(3, 4), scale=0.5, sr=2, gamma=0.1) -> RoIPoolGeometry:
    return RoIPoolGeometry(n=n, c=c, h=h, w=w, rois=k, output_size=out, spatial_scale=scale, sampling_ratio=sr, gamma=gamma)


def _psroi(n=2, d=2, group=3, h=10, w=12, k=12, pooled=3, part=3, spp=2, scale=0.5, std=0.25, classes=1) -> PSRoIPoolGeometry:
    return PSRoIPoolGeometry(n=n, c=d * group * group, h=h, w=w, rois=k, pooled_size=pooled, spatial_scale=scale,
                             sample_per_part=spp, trans_std=std, group_size=group, part_size=part, classes=classes)


# RoI pooling: name -> (geometry, case options). MXNet takes spatial_scale and trans_std as float32
# parameters, so the suite uses values float32 holds exactly (0.5, 0.25, ...); gamma is a float64.
_POOL_CASES: dict[str, tuple[object, dict]] = {
    "roi-inside": (_roi(), {"rois": "inside"}),
    "roi-border-adaptive": (_roi(sr=0), {"rois": "border"}),
    "roi-outside": (_roi(), {"rois": "outside"}),
    "roi-tiny-degenerate": (_roi(sr=0, scale=1.0), {"rois": "tiny"}),
    "roi-tiny-degenerate-sr2": (_roi(sr=2, scale=1.0), {"rois": "tiny"}),
    "roi-large-adaptive": (_roi(sr=0, h=6, w=7, scale=0.25), {"rois": "large"}),
    "roi-many-3-images": (_roi(n=3, k=60, out=(2, 2), sr=0), {"rois": "mixed"}),
    "roi-offsets-zero": (_roi(), {"rois": "mixed", "offsets": "zero"}),
    "roi-offsets-small": (_roi(), {"rois": "mixed", "offset_scale": 0.1}),
    "roi-offsets-large": (_roi(gamma=0.5), {"rois": "mixed", "offset_scale": 3.0}),
    "roi-no-offset": (_roi(), {"rois": "mixed", "no_offset": True, "check": "no_offset"}),
    "roi-non-contiguous": (_roi(), {"rois": "mixed", "contiguous": False}),
    "psroi-inside": (_psroi(), {"rois": "inside"}),
    "psroi-border": (_psroi(), {"rois": "border"}),
    "psroi-outside": (_psroi(), {"rois": "outside"}),
    "psroi-tiny-degenerate": (_psroi(scale=1.0), {"rois": "tiny"}),
    "psroi-large": (_psroi(h=6, w=7, scale=0.25), {"rois": "large"}),
    "psroi-many-3-images-2-classes": (_psroi(n=3, d=4, k=60, classes=2), {"rois": "mixed"}),
    "psroi-group1-plain": (_psroi(d=4, group=1, pooled=3, part=3), {"rois": "mixed"}),
    "psroi-part2-pooled4-spp3": (_psroi(d=2, group=2, pooled=4, part=2, spp=3), {"rois": "mixed"}),
    "psroi-offsets-zero": (_psroi(), {"rois": "mixed", "offsets": "zero"}),
    "psroi-offsets-small": (_psroi(), {"rois": "mixed", "offset_scale": 0.1}),
    "psroi-offsets-large": (_psroi(std=0.5), {"rois": "mixed", "offset_scale": 3.0}),
    "psroi-no-trans": (_psroi(), {"rois": "mixed", "no_offset": True, "check": "no_offset"}),
    "psroi-non-contiguous": (_psroi(), {"rois": "mixed", "contiguous": False}),
    # Identities with torchvision (zero offsets): roi_align(aligned=True) for mmcv's operator in any
    # setting; (ps_)roi_align on moved RoIs for MXNet's, where every sample lies inside the map.
    "identity-roi-align": (_roi(sr=0), {"rois": "mixed", "offsets": "zero", "check": "roi_align"}),
    "identity-roi-align-sr2": (_roi(), {"rois": "mixed", "offsets": "zero", "check": "roi_align"}),
    "identity-psroi-ps-roi-align": (_psroi(spp=3), {"rois": "inside", "offsets": "zero", "check": "ps_roi_align"}),
    "identity-psroi-group1-roi-align": (_psroi(group=1, d=3), {"rois": "inside", "offsets": "zero", "check": "ps_roi_align"}),
}

_POOL_GRADCHECK: dict[str, tuple[object, dict]] = {
    "gradcheck-roi": (_roi(n=2, c=2, h=6, w=7, k=4, out=(2, 2), sr=0, scale=1.0), {"rois": "mixed", "check": "gradcheck"}),
    "gradcheck-psroi": (_psroi(n=2, d=1, group=2, h=6, w=7, k=4, pooled=2, part=2, scale=1.0, classes=1),
                        {"rois": "mixed", "check": "gradcheck"}),
}


def pool_suite(seed: int = 0) -> list[PoolCase]:
    cases = []
    for i, (name, (geo, opts)) in enumerate(_POOL_CASES.items()):
        base = PoolCase(name=name, geometry=geo, seed=seed + 300 + 1000 * i, **opts)
        cases += [replace(base, dtype=d) for d in ("float64", "float32")]
    for i, (name, (geo, opts)) in enumerate(_POOL_GRADCHECK.items()):
        cases.append(PoolCase(name=name, geometry=geo, seed=seed + 900 + 1000 * i, **opts))
    return cases


def default_suite(seed: int = 0) -> list[ConvCase | PoolCase]:
    cases = []
    for i, (name, (geo, opts)) in enumerate(_GEOMETRIES.items()):
        dtypes = ("float64", "float32") + (("float16", "bfloat16") if name in _HALF_TYPES_FOR else ())
        base = ConvCase(name=name, geometry=geo, seed=seed + 1000 * i, **opts)
        cases += [replace(base, dtype=d) for d in dtypes]
    for i, (name, (geo, opts)) in enumerate(_IDENTITIES.items()):
        base = ConvCase(name=name, geometry=geo, seed=seed + 500 + 1000 * i, kink_margin=None, **opts)
        cases += [replace(base, dtype=d) for d in ("float64", "float32")]
    for i, (name, (geo, opts)) in enumerate(_GRADCHECK.items()):
        cases.append(ConvCase(name=name, geometry=geo, seed=seed + 700 + 1000 * i, **opts))
    return cases + pool_suite(seed)


def select_cases(cases: list, patterns: list[str] | None, dtypes: list[str] | None, ops: list[str] | None = None) -> list:
    """Keep cases of the listed ops (all when none) whose id contains any pattern and whose dtype is listed."""
    kept = [c for c in cases if (not dtypes or c.dtype in dtypes) and (not ops or c.op in ops)]
    if patterns:
        kept = [c for c in kept if any(p in c.case_id for p in patterns)]
    return kept
