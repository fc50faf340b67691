"""The eager grid_sample formulation of multi-scale deformable attention (one grid_sample per
level, in the inputs' dtype): the reference row of `speed` for ms_deform_attn, what transformers
and mmcv run without a CUDA kernel. Timed, never verified (the `transformers` backend is the one
users run; the identity cases check this formulation against the oracle)."""

from __future__ import annotations

import torch

from dcnbench.backends import ALL_DTYPES, Backend, local_devices
from dcnbench.ops.ms_deform_attn.references import via_grid_sample


def backend() -> Backend:
    return Backend(
        name="grid_sample",
        description="the eager grid_sample formulation of ms_deform_attn (reference row)",
        ops={"ms_deform_attn": via_grid_sample},
        dtypes=local_devices(ALL_DTYPES),
        version=torch.__version__,
        kind="reference",
    )
