"""dcnv4's fuzz strategy: DCNv3's geometry (ops/dcnv3/fuzz.py) with the packed `offset_mask`: the
module's width or a wider one, its padding lanes NaN or zero, and the extension's softmax flag."""

from __future__ import annotations

from hypothesis import assume
from hypothesis import strategies as st

from dcnbench.ops.dcnv3.fuzz import case_fields, geometry_fields
from dcnbench.ops.dcnv4.contract import LANE_MULTIPLE, Dcnv4Geometry, packed_width
from dcnbench.ops.dcnv4.workloads import PAD_LANES, Dcnv4Case


@st.composite
def cases(draw) -> Dcnv4Case:
    fields = geometry_fields(draw)
    points = fields["kh"] * fields["kw"] - int(fields["remove_center"])
    extra = draw(st.integers(0, 2)) * LANE_MULTIPLE  # lanes past the module's width
    geo = Dcnv4Geometry(**fields, softmax=draw(st.booleans()),
                        offset_mask_dim=packed_width(fields["group"], points) + extra if extra else None)
    assume(not geo.problems())
    return Dcnv4Case(geometry=geo, mask=draw(st.sampled_from(("uniform", "logits"))),
                     pad_lanes=draw(st.sampled_from(tuple(PAD_LANES))), **case_fields(draw))
