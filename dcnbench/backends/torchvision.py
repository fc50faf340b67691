"""torchvision.ops.deform_conv2d, called as it is, and DCNv3/DCNv4 through it.

DCNv3 is a depthwise deform_conv2d with ones as weights once the layouts are converted
(ops/dcnv3/references.py, InternImage#107); DCNv4 is DCNv3 once its offset_mask is unpacked.
That is what a user without the CUDA ops would run, so it is verified and timed like the rest.

torchvision has no deformable RoI pooling; its roi_align and ps_roi_align are the identity
references for the pooling ops' zero-offset cases (verify) and the `roi_align` reference row.
"""

from __future__ import annotations

import torchvision
from torchvision.ops import deform_conv2d

from dcnbench.backends import Backend, local_devices
from dcnbench.ops.dcnv3.references import via_deform_conv2d
from dcnbench.ops.dcnv4.references import via_deform_conv2d_v4

_DTYPES = ("float64", "float32", "float16")
NO_POOLING = ("torchvision has no deformable RoI pooling; its roi_align/ps_roi_align serve as the "
              "zero-offset identity checks instead")


# Measured (tests/test_verify.py proves it still holds): torchvision's CPU float16 backward sums the
# offset and mask gradients over the input channels in float16, so they overflow to Inf on the
# large-values cases (partial sums past 65504, results near 1e4), where its forward stays right.
# DCNv3/DCNv4 through the identity pass theirs (measured: their large partial sums run over the
# kernel's points, which its forward sums in a matrix product that stays finite; their channel sums
# stay near the float64 result, about 2.5e4 at most).
OVERFLOWS = (f"torchvision {torchvision.__version__}'s CPU float16 backward sums the offset and mask gradients over "
             "the channels in float16: they overflow to Inf where the float64 result is about 1e4 (measured, see the README)")


def case_unsupported(case, device: str) -> str | None:
    if case.op == "deform_conv2d" and getattr(case, "values", None) == "large" and case.dtype == "float16" and device == "cpu":
        return OVERFLOWS
    return None


def backend() -> Backend:
    return Backend(
        name="torchvision",
        description="torchvision.ops.deform_conv2d (DCNv3/DCNv4 through the depthwise identity)",
        ops={"deform_conv2d": deform_conv2d, "dcnv3": via_deform_conv2d, "dcnv4": via_deform_conv2d_v4},
        dtypes=local_devices(_DTYPES),
        unsupported_reasons={"bfloat16": "torchvision has no bfloat16 deform_conv2d kernel",
                             "deform_roi_pool": NO_POOLING, "deform_psroi_pool": NO_POOLING},
        version=torchvision.__version__,
        # deform_conv2d runs the batch in chunks of its largest divisor <= 32 (n_parallel_imgs).
        batch_chunk=lambda op, geometry: 32 if op == "deform_conv2d" else None,
        case_unsupported=case_unsupported,
    )
