"""deform_roi_pool's fuzz strategy: small maps, RoIs of every kind, fixed and adaptive grids."""

from __future__ import annotations

from hypothesis import strategies as st

from dcnbench.ops.deform_roi_pool.contract import RoIPoolGeometry
from dcnbench.ops.deform_roi_pool.workloads import RoIPoolCase
from dcnbench.ops.rois import ROI_KINDS


@st.composite
def cases(draw) -> RoIPoolCase:
    geo = RoIPoolGeometry(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), h=draw(st.integers(3, 9)),
                          w=draw(st.integers(3, 9)), rois=draw(st.integers(0, 6)),
                          output_size=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
                          spatial_scale=draw(st.sampled_from((0.25, 0.5, 1.0))), sampling_ratio=draw(st.integers(0, 3)),
                          gamma=draw(st.sampled_from((0.1, 0.5))))
    return RoIPoolCase(name="fuzz", geometry=geo, rois=draw(st.sampled_from([k for k in ROI_KINDS if k != "proposals"])),
                       offsets=draw(st.sampled_from(("uniform", "zero"))), offset_scale=draw(st.sampled_from((0.1, 1.0, 3.0))),
                       no_offset=draw(st.booleans()), contiguous=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))
