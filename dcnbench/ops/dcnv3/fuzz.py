"""dcnv3's fuzz strategy: small valid problems anywhere in its parameter space (kernel sizes 1 to 4
including even and asymmetric ones, stride/padding/dilation per axis, `offset_scale`,
`remove_center`, groups with odd channel counts, batch 0 to 3 against `im2col_step`, every offset
and mask distribution, non-contiguous arguments). DCNv4's strategy (ops/dcnv4/fuzz.py) draws the
same geometry."""

from __future__ import annotations

from hypothesis import assume
from hypothesis import strategies as st

from dcnbench.ops.dcnv3.contract import GroupGeometry
from dcnbench.ops.dcnv3.workloads import OFFSET_KINDS, Dcnv3Case

# Values a C float holds exactly (the kernels take offset_scale as one), so no case depends on
# how a backend rounds it.
OFFSET_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)


def geometry_fields(draw) -> dict:
    """A valid DCNv3 geometry's fields (DCNv4 adds its own)."""
    pair = st.tuples(st.integers(1, 3), st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, dilation = draw(pair), draw(pair)
    padding = draw(st.tuples(st.integers(0, 3), st.integers(0, 3)))
    # The input must be large enough for one output: (size + 2*pad - dil*(k-1) - 1) >= 0.
    min_h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    min_w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    return dict(n=draw(st.integers(0, 3)), h=draw(st.integers(min_h, min_h + 5)), w=draw(st.integers(min_w, min_w + 5)),
                group=draw(st.integers(1, 4)), group_channels=draw(st.integers(1, 5)), kh=kh, kw=kw, stride=stride,
                padding=padding, dilation=dilation, offset_scale=draw(st.sampled_from(OFFSET_SCALES)),
                remove_center=draw(st.booleans()), im2col_step=draw(st.sampled_from((1, 2, 256))))


def case_fields(draw) -> dict:
    """The case options both operators share: offsets, their spread, layout and seed."""
    return dict(name="fuzz", offsets=draw(st.sampled_from(OFFSET_KINDS)),
                offset_scale=draw(st.sampled_from((0.5, 2.5, 10.0))), contiguous=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))


@st.composite
def cases(draw) -> Dcnv3Case:
    geo = GroupGeometry(**geometry_fields(draw))
    assume(not geo.problems())
    return Dcnv3Case(geometry=geo, mask=draw(st.sampled_from(("softmax", "uniform", "logits"))), **case_fields(draw))
