"""The default verification suite: small seeded cases, each aimed at a way kernels go wrong.

Every geometry runs in float64 and float32; a few also in float16 and bfloat16. Sizes are small
so the suite runs in well under a minute on two cores for the built-in backends.
"""

from __future__ import annotations

from dataclasses import replace

from dcnbench.ops import ConvGeometry
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


def default_suite(seed: int = 0) -> list[ConvCase]:
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
    return cases


def select_cases(cases: list[ConvCase], patterns: list[str] | None, dtypes: list[str] | None) -> list[ConvCase]:
    """Keep cases whose id contains any pattern (all when none) and whose dtype is listed."""
    kept = [c for c in cases if not dtypes or c.dtype in dtypes]
    if patterns:
        kept = [c for c in kept if any(p in c.case_id for p in patterns)]
    return kept
