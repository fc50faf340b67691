"""deform_conv2d's fuzz strategy: small valid problems anywhere in its parameter space (kernel
sizes 1 to 4 including even ones, stride/padding/dilation per axis, groups and offset groups with
odd channel counts, bias and mask on or off, offsets in the interior and in the border bands,
batch 0 to 3, every memory layout)."""

from __future__ import annotations

import math

from hypothesis import assume
from hypothesis import strategies as st

from dcnbench.ops.deform_conv2d.contract import ConvGeometry
from dcnbench.ops.deform_conv2d.workloads import ConvCase

_OFFSETS = ("uniform", "anisotropic", "border", "interior", "band-low", "band-high")


@st.composite
def cases(draw) -> ConvCase:
    pair = st.tuples(st.integers(1, 3), st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, dilation = draw(pair), draw(pair)
    padding = draw(st.tuples(st.integers(0, 3), st.integers(0, 3)))
    groups, offset_groups = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    c = math.lcm(groups, offset_groups) * draw(st.integers(1, 2))  # odd channels per group come with it
    o = groups * draw(st.integers(1, 3))
    # The input must be large enough for one output: (size + 2*pad - dil*(k-1) - 1) >= 0.
    min_h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    min_w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    h, w = draw(st.integers(min_h, min_h + 5)), draw(st.integers(min_w, min_w + 5))
    geo = ConvGeometry(n=draw(st.integers(0, 3)), c=c, h=h, w=w, o=o, kh=kh, kw=kw, stride=stride, padding=padding,
                       dilation=dilation, groups=groups, offset_groups=offset_groups)
    assume(not geo.problems())
    layout = draw(st.sampled_from(("contiguous", "strided", "channels_last")))
    return ConvCase(name="fuzz", geometry=geo, mask=draw(st.booleans()), bias=draw(st.booleans()),
                    offsets=draw(st.sampled_from(_OFFSETS)), offset_scale=draw(st.sampled_from((0.5, 1.0, 3.0))),
                    contiguous=layout != "strided", memory_format="channels_last" if layout == "channels_last" else None,
                    seed=draw(st.integers(0, 2**16)))
