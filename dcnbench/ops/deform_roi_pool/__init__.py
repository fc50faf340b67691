"""deform_roi_pool (mmcv's deformable RoI pooling): its spec for the stages.

    contract.py    signature, geometry, validation, shape grammar, presets (torch-free)
    points.py      where it samples
    workloads.py   the case spec (call, kinks) and the plugin probe
    suite.py       the default verification suite
    oracle.py      the float64 oracle
    fuzz.py        the strategy `verify --fuzz` draws problems from
    references.py  the identity with torchvision's roi_align (also the `roi_align` reference row)
RoI drawing and the no-offset identity are shared with deform_psroi_pool (ops/rois.py).
"""

from dcnbench.ops.deform_roi_pool.contract import OP, PRESETS, SHAPE_EXAMPLE, SHAPE_GRAMMAR, SIGNATURE, RoIPoolGeometry, parse_shape
from dcnbench.ops.roi_contract import pool_spec

SPEC = pool_spec(
    here=__name__, case_class="RoIPoolCase", identity="roi_align",
    name=OP,
    summary="deformable RoI pooling as mmcv defines it",
    signature=SIGNATURE,
    returns="(K, C, ph, pw)",
    shape_grammar=SHAPE_GRAMMAR,
    shape_example=SHAPE_EXAMPLE,
    parse_shape=parse_shape,
    geometry_type=RoIPoolGeometry,
    presets=PRESETS,
)
