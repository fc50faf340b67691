"""deform_conv2d (DCNv1 and DCNv2), torchvision's signature: its spec for the stages.

    contract.py    geometry, validation, FLOPs, shape grammar, presets (torch-free)
    workloads.py   the case spec and its seeded tensors
    suite.py       the default verification suite
    oracle.py      the float64 oracle (rules Z and C)
    references.py  identities with conv2d, and the conv2d reference row
    fuzz.py        the strategy `verify --fuzz` draws problems from
    onnx.py        the ONNX DeformConv node, and the layer the export check exports
"""

from dcnbench.ops.deform_conv2d.contract import OP, PRESETS, ConvGeometry, SHAPE_EXAMPLE, SHAPE_GRAMMAR, SIGNATURE, parse_shape
from dcnbench.ops.spec import OpSpec, Reference, lazy

_HERE = "dcnbench.ops.deform_conv2d"
_IDENTITY_QUANTITIES = ("output", "grad_input", "grad_weight", "grad_bias")

SPEC = OpSpec(
    name=OP,
    summary="deformable convolution, DCNv1 (no mask) and DCNv2 (mask)",
    signature=SIGNATURE,
    returns="(N, O, Ho, Wo)",
    shape_grammar=SHAPE_GRAMMAR,
    shape_example=SHAPE_EXAMPLE,
    parse_shape=parse_shape,
    geometry_type=ConvGeometry,
    presets=PRESETS,
    default_preset="dcn-56",
    suite=lazy(f"{_HERE}.suite:default_suite"),
    differentiable=("input", "offset", "mask", "weight", "bias"),
    case_from_dict=lazy(f"{_HERE}.workloads:ConvCase.from_dict"),
    oracle=lazy(f"{_HERE}.oracle:deform_conv2d"),
    references={
        "zero_offset": Reference(lazy(f"{_HERE}.references:shifted_conv2d"), _IDENTITY_QUANTITIES),
        "integer_offset": Reference(lazy(f"{_HERE}.references:shifted_conv2d"), _IDENTITY_QUANTITIES),
        "zero_mask": Reference(lazy(f"{_HERE}.references:bias_only"),
                               ("output", "grad_input", "grad_offset", "grad_weight", "grad_bias")),
        # The ONNX export check: the exported model's output against the float64 oracle.
        "export": Reference(lazy(f"{_HERE}.onnx:oracle_for"), ("output",)),
    },
    rules=("Z", "C"),
    band_outputs=lazy(f"{_HERE}.oracle:band_outputs"),
    speed_case=lazy(f"{_HERE}.workloads:ConvCase.for_speed"),
    probe_cases=lazy(f"{_HERE}.workloads:probe_cases"),
    flops=lambda geometry: geometry.conv_flops(),
    work=lambda geometry, *how: geometry.work(*how),
    cost=lazy(f"{_HERE}.workloads:cost"),
    fuzz=lazy(f"{_HERE}.fuzz:cases"),
    export_layer=lazy(f"{_HERE}.onnx:export_layer"),
    options=lazy(f"{_HERE}.suite:pair_options"),
)
