"""dcnv3 (InternImage's DCNv3 core op, `DCNv3Function.apply`'s signature): its spec for the stages.

    contract.py    signature, geometry, validation, FLOPs, shape grammar, presets (torch-free)
    workloads.py   the case spec and its seeded tensors
    suite.py       the default verification suite
    oracle.py      the float64 oracle (also DCNv4's core)
    fuzz.py        the strategy `verify --fuzz` draws problems from
    references.py  the identity with a depthwise torchvision deform_conv2d, and the depthwise conv2d row
DCNv4 (ops/dcnv4/) is DCNv3 with the offsets and mask packed into one tensor, and builds on these.
"""

from dcnbench.ops.dcnv3.contract import OP, PRESETS, SHAPE_EXAMPLE, SHAPE_GRAMMAR, SIGNATURE, GroupGeometry, parse_shape
from dcnbench.ops.spec import OpSpec, Reference, lazy

_HERE = "dcnbench.ops.dcnv3"

SPEC = OpSpec(
    name=OP,
    summary="InternImage's DCNv3 core op: channels-last, per-group sampling, mask as given",
    signature=SIGNATURE,
    returns="(N, Ho, Wo, group*group_channels)",
    shape_grammar=SHAPE_GRAMMAR,
    shape_example=SHAPE_EXAMPLE,
    parse_shape=parse_shape,
    geometry_type=GroupGeometry,
    presets=PRESETS,
    default_preset="dcnv4-bench",
    suite=lazy(f"{_HERE}.suite:default_suite"),
    differentiable=("input", "offset", "mask"),
    case_from_dict=lazy(f"{_HERE}.workloads:Dcnv3Case.from_dict"),
    oracle=lazy(f"{_HERE}.oracle:dcnv3"),
    references={
        "deform_conv2d": Reference(lazy(f"{_HERE}.references:deform_conv2d_identity"),
                                   ("output", "grad_input", "grad_offset", "grad_mask")),
    },
    speed_case=lazy(f"{_HERE}.workloads:Dcnv3Case.for_speed"),
    probe_cases=lazy(f"{_HERE}.workloads:probe_cases"),
    flops=lambda geometry: geometry.flops(),
    options=lazy(f"{_HERE}.suite:pair_options"),
    work=lambda geometry, *how: geometry.work(*how),
    fuzz=lazy(f"{_HERE}.fuzz:cases"),
)
