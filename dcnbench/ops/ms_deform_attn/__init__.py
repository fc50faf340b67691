"""ms_deform_attn (Deformable DETR's multi-scale deformable attention, the CUDA function's signature
that Deformable-DETR, mmcv and the hub kernels share): its spec for the stages.

    contract.py    signature, geometry, validation, FLOPs, shape grammar, presets (torch-free)
    workloads.py   the case spec and its seeded tensors
    suite.py       the default verification suite
    oracle.py      the float64 oracle (the direct bilinear formula)
    references.py  the grid_sample formulation (identity and speed's reference row), the pixel-centre
                   identity, the export layer
    fuzz.py        the strategy `verify --fuzz` draws problems from
"""

from dcnbench.ops.ms_deform_attn.contract import OP, PRESETS, SHAPE_EXAMPLE, SHAPE_GRAMMAR, SIGNATURE, MsdaGeometry, parse_shape
from dcnbench.ops.spec import OpSpec, Reference, lazy

_HERE = "dcnbench.ops.ms_deform_attn"
_ALL = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")

SPEC = OpSpec(
    name=OP,
    summary="multi-scale deformable attention (Deformable DETR's MSDeformAttn core), the CUDA function's signature",
    signature=SIGNATURE,
    returns="(N, Lq, M*D)",
    shape_grammar=SHAPE_GRAMMAR,
    shape_example=SHAPE_EXAMPLE,
    parse_shape=parse_shape,
    geometry_type=MsdaGeometry,
    presets=PRESETS,
    default_preset="deformable-detr-decoder",
    suite=lazy(f"{_HERE}.suite:default_suite"),
    differentiable=("value", "sampling_locations", "attention_weights"),
    case_from_dict=lazy(f"{_HERE}.workloads:MsdaCase.from_dict"),
    oracle=lazy(f"{_HERE}.oracle:ms_deform_attn"),
    references={
        "grid_sample": Reference(lazy(f"{_HERE}.references:grid_sample_identity"), _ALL),
        # Locations on pixel centres sit on kinks: their gradient is one-sided, not compared.
        "pixel_centres": Reference(lazy(f"{_HERE}.references:pixel_centre_identity"),
                                   ("output", "grad_value", "grad_attention_weights")),
        "export": Reference(lazy(f"{_HERE}.references:oracle_for"), ("output",)),
    },
    speed_case=lazy(f"{_HERE}.workloads:MsdaCase.for_speed"),
    probe_cases=lazy(f"{_HERE}.workloads:probe_cases"),
    flops=lambda geometry: geometry.flops(),
    cost=lazy(f"{_HERE}.workloads:cost"),
    fuzz=lazy(f"{_HERE}.fuzz:cases"),
    export_layer=lazy(f"{_HERE}.references:export_layer"),
)
