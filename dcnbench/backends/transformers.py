"""`transformers`: Hugging Face's own eager multi-scale deformable attention, the code users of
`DeformableDetr`, `GroundingDino`, `Mask2Former`, ... run when the CUDA hub kernel is not there.

The module `MultiScaleDeformableAttention` (transformers' deformable DETR modeling file) computes
the op with one grid_sample per level. Its forward takes the level shapes twice, as the tensor and
as a Python list (`value_spatial_shapes_list`), which this backend derives from the tensor. Its
class is decorated with `use_kernel_forward_from_hub`, which (kernels 0.19) only names the layer
for a later `kernelize()`: a module built directly, as here, runs its own forward and reaches no
network (tests/test_transformers.py checks both with the network blocked). Imported on first call:
transformers takes seconds to import.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from dcnbench.backends import ALL_DTYPES, Backend, local_devices

NAME = "transformers"
_MODULE = []


def eager_module():
    """One MultiScaleDeformableAttention module (it has no parameters), built on first use."""
    if not _MODULE:
        from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

        _MODULE.append(MultiScaleDeformableAttention())
    return _MODULE[0]


def ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                   im2col_step):
    from dcnbench.ops.ms_deform_attn.contract import check_call

    geo = check_call(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                     im2col_step)
    return eager_module()(value, value_spatial_shapes, list(geo.levels), value_level_start_index, sampling_locations,
                          attention_weights, im2col_step)


# Measured (tests/test_transformers.py re-measures it, so this cannot outlive a fix): grid_sample's
# backward gives the NaN coordinate of a non-finite location a 0 gradient and its finite coordinate
# NaN, where the operator's rule makes both NaN (the sample reads nothing and is NaN).
NONFINITE_LOCATION = ("transformers {version}'s grid_sample backward gives a non-finite location's NaN or infinite "
                      "coordinate a 0 gradient (the operator's rule: NaN, like its other coordinate's): measured, see "
                      "the README")


def case_unsupported(case, device: str) -> str | None:
    if getattr(case, "poison", None) == "read":
        return NONFINITE_LOCATION.format(version=version("transformers"))
    return None


def backend() -> Backend:
    try:
        found = version("transformers")
    except PackageNotFoundError:
        from dcnbench.backends import unavailable_backend

        return unavailable_backend(NAME, "transformers is not installed (it is a dependency: run `make env`)")
    reason = "transformers has no deformable convolution or RoI pooling; its eager multi-scale deformable attention only"
    return Backend(
        name=NAME,
        description=f"transformers {found}: the eager grid_sample MultiScaleDeformableAttention (no hub kernel)",
        ops={"ms_deform_attn": ms_deform_attn},
        dtypes=local_devices(ALL_DTYPES),
        unsupported_reasons={op: reason for op in ("deform_conv2d", "deform_roi_pool", "deform_psroi_pool", "dcnv3",
                                                   "dcnv4")},
        version=found,
        case_unsupported=case_unsupported,
    )
