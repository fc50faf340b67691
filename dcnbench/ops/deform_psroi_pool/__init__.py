"""deform_psroi_pool (MXNet's DeformablePSROIPooling, the authors'): its spec for the stages.

    contract.py    signature, geometry, validation, shape grammar, presets (torch-free)
    points.py      where it samples (MXNet's rounded RoI box)
    workloads.py   the case spec (call, kinks) and the plugin probe
    suite.py       the default verification suite
    oracle.py      the float64 oracle
    fuzz.py        the strategy `verify --fuzz` draws problems from
    references.py  identities with torchvision's (ps_)roi_align (also the `roi_align` reference row)
RoI drawing and the no-offset identity are shared with deform_roi_pool (ops/rois.py).
"""

from dcnbench.ops.deform_psroi_pool.contract import (OP, PRESETS, SHAPE_EXAMPLE, SHAPE_GRAMMAR, SIGNATURE,
                                                     PSRoIPoolGeometry, parse_shape)
from dcnbench.ops.roi_contract import pool_spec

SPEC = pool_spec(
    here=__name__, case_class="PSRoIPoolCase", identity="ps_roi_align",
    name=OP,
    summary="deformable position-sensitive RoI pooling as MXNet (the authors) defines it",
    signature=SIGNATURE,
    returns="(K, output_dim, pooled, pooled)",
    shape_grammar=SHAPE_GRAMMAR,
    shape_example=SHAPE_EXAMPLE,
    parse_shape=parse_shape,
    geometry_type=PSRoIPoolGeometry,
    presets=PRESETS,
)
