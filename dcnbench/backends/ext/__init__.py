"""`ext`: dcnbench's own C++/CUDA kernels for all three ops, built on first use (build.py).

Laid out like torchvision's csrc/ops: one schema file (csrc/ext.cpp), one kernel file per device
and op family (csrc/cpu/, csrc/cuda/), the per-sample math in one header of inline
__host__ __device__ helpers (csrc/sampling.h), and here the autograd wrappers and the argument
checks ("got X, expected Y") made before any kernel runs (library.py: the wrappers, and each op's
autograd formula registered on the op; fake.py: the ops' fake kernels for torch.compile/export).
float64 and float32 run natively; bfloat16 (and float16 on CUDA) are computed in float32 and
rounded once at the end.

The CPU backward is deterministic. On CUDA the input gradient is accumulated with atomicAdd unless
deterministic mode is on (DCNBENCH_EXT_DETERMINISTIC=1, or torch.use_deterministic_algorithms(True)),
which gives each thread whole channel planes instead; `verify` reports the mode that ran.
"""

from __future__ import annotations

import torch

from dcnbench.backends import Backend, local_devices
from dcnbench.backends.ext import build
from dcnbench.backends.ext.library import OpLibrary, deterministic, check_environment

NAME = "ext"
LIBRARY = OpLibrary(lambda: build.native(build.with_cuda()))
deform_conv2d = LIBRARY.deform_conv2d
deform_roi_pool = LIBRARY.deform_roi_pool
deform_psroi_pool = LIBRARY.deform_psroi_pool


def mode(device: str) -> str:
    if device == "cpu":
        return "deterministic (CPU kernels always are)"
    return "deterministic (per-channel accumulation)" if deterministic() else "atomicAdd accumulation (nondeterministic)"


def _ops():
    return LIBRARY.ops()


def check() -> str | None:
    """Build (or load the cached build); None when the library loads, else why not and how to fix it."""
    check_environment()  # raises UsageError on a bad DCNBENCH_EXT_DETERMINISTIC
    try:
        LIBRARY.ops()
    except build.BuildError as exc:
        return f"{exc} (fix: {exc.hint})"
    return None


def backend() -> Backend:
    devices = local_devices(("float64", "float32", "bfloat16"))
    if "cuda" in devices and build.with_cuda():
        devices = dict(devices, cuda=("float64", "float32", "float16", "bfloat16"))
    return Backend(
        name=NAME,
        description="dcnbench's C++/CUDA kernels (TORCH_LIBRARY dcnbench_ext), built on first use",
        ops=LIBRARY.op_table(),
        dtypes=devices,
        unsupported_reasons={"float16": "ext runs float16 on CUDA only (the CPU has no fast float16 arithmetic)"},
        version=torch.__version__,
        check=check,
        environment=lambda: f"built in {build.build_dir()}",
        mode=mode,
    )
