"""deform_psroi_pool's fuzz strategy: small maps, RoIs of every kind, position-sensitive groups,
parts and offset classes."""

from __future__ import annotations

from hypothesis import strategies as st

from dcnbench.ops.deform_psroi_pool.contract import PSRoIPoolGeometry
from dcnbench.ops.deform_psroi_pool.workloads import PSRoIPoolCase
from dcnbench.ops.rois import ROI_KINDS


@st.composite
def cases(draw) -> PSRoIPoolCase:
    group = draw(st.integers(1, 3))
    pooled = draw(st.integers(group if group > 1 else 1, 4))
    classes = draw(st.integers(1, 2))
    output_dim = classes * draw(st.integers(1, 2))
    # spatial_scale and trans_std are values float32 holds exactly (MXNet takes them as float32).
    geo = PSRoIPoolGeometry(n=draw(st.integers(1, 2)), c=output_dim * group * group, h=draw(st.integers(3, 9)),
                            w=draw(st.integers(3, 9)), rois=draw(st.integers(0, 6)), pooled_size=pooled,
                            spatial_scale=draw(st.sampled_from((0.25, 0.5, 1.0))), sample_per_part=draw(st.integers(1, 3)),
                            trans_std=draw(st.sampled_from((0.25, 0.5))), group_size=group,
                            part_size=draw(st.integers(1, pooled)), classes=classes)
    return PSRoIPoolCase(name="fuzz", geometry=geo, rois=draw(st.sampled_from([k for k in ROI_KINDS if k != "proposals"])),
                         offsets=draw(st.sampled_from(("uniform", "zero"))), offset_scale=draw(st.sampled_from((0.1, 1.0, 3.0))),
                         no_offset=draw(st.booleans()), contiguous=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))
