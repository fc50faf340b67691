"""dcnv4 (OpenGVLab's DCNv4, `DCNv4Function.apply`'s signature): its spec for the stages.

    contract.py    signature, the offset_mask packing, validation, shape grammar, presets (torch-free)
    workloads.py   the case spec (DCNv3's tensors packed, NaN in the padding lanes)
    suite.py       the default verification suite
    oracle.py      the float64 oracle: unpack, then DCNv3's core
    fuzz.py        the strategy `verify --fuzz` draws problems from
    references.py  the identity with DCNv3, torchvision through DCNv3's identity, the depthwise conv2d row
Geometry, tensor drawing and the oracle's core are DCNv3's (ops/dcnv3/).
"""

from dcnbench.ops.dcnv4.contract import OP, PRESETS, SHAPE_EXAMPLE, SHAPE_GRAMMAR, SIGNATURE, Dcnv4Geometry, parse_shape
from dcnbench.ops.spec import OpSpec, Reference, lazy

_HERE = "dcnbench.ops.dcnv4"

SPEC = OpSpec(
    name=OP,
    summary="DCNv4: DCNv3 with offsets and mask packed per group (padded to 8 lanes), no softmax",
    signature=SIGNATURE,
    returns="(N, Ho, Wo, group*group_channels)",
    shape_grammar=SHAPE_GRAMMAR,
    shape_example=SHAPE_EXAMPLE,
    parse_shape=parse_shape,
    geometry_type=Dcnv4Geometry,
    presets=PRESETS,
    default_preset="dcnv4-bench",
    suite=lazy(f"{_HERE}.suite:default_suite"),
    differentiable=("input", "offset_mask"),
    case_from_dict=lazy(f"{_HERE}.workloads:Dcnv4Case.from_dict"),
    oracle=lazy(f"{_HERE}.oracle:dcnv4"),
    references={"dcnv3": Reference(lazy(f"{_HERE}.references:dcnv3_identity"), ("output", "grad_input", "grad_offset_mask"))},
    speed_case=lazy(f"{_HERE}.workloads:Dcnv4Case.for_speed"),
    probe_cases=lazy(f"{_HERE}.workloads:probe_cases"),
    flops=lambda geometry: geometry.flops(),
    options=lazy(f"{_HERE}.suite:pair_options"),
    work=lambda geometry, *how: geometry.work(*how),
    fuzz=lazy(f"{_HERE}.fuzz:cases"),
)
