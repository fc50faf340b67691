"""ms_deform_attn's fuzz strategy: small valid problems anywhere in its parameter space (1 to 5
levels of any small size, 1 to 4 points, heads and channels, batch 0 to 3 with any im2col_step,
every location and weight distribution, contiguous or strided)."""

from __future__ import annotations

from hypothesis import strategies as st

from dcnbench.ops.ms_deform_attn.contract import MsdaGeometry
from dcnbench.ops.ms_deform_attn.workloads import MsdaCase

_LOCATIONS = ("uniform", "outside", "border", "edges")
_WEIGHTS = ("softmax", "uniform", "signed")


@st.composite
def cases(draw) -> MsdaCase:
    level = st.tuples(st.integers(1, 7), st.integers(1, 7))
    geo = MsdaGeometry(n=draw(st.integers(0, 3)), levels=tuple(draw(st.lists(level, min_size=1, max_size=5))),
                       heads=draw(st.integers(1, 3)), channels=draw(st.integers(1, 5)), queries=draw(st.integers(0, 6)),
                       points=draw(st.integers(1, 4)), im2col_step=draw(st.integers(1, 4)))
    return MsdaCase(name="fuzz", geometry=geo, offsets=draw(st.sampled_from(_LOCATIONS)),
                    offset_scale=draw(st.sampled_from((0.2, 0.5, 2.0))), weights=draw(st.sampled_from(_WEIGHTS)),
                    contiguous=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))
