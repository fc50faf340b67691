"""`ext`: dcnbench's own C++/CUDA kernels, built on first use (build.py): deform_conv2d and both RoI
pooling ops on the CPU and CUDA, DCNv3 and DCNv4 on the CPU.

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
from dcnbench.backends.ext.library import OpLibrary, check_environment, deterministic

NAME = "ext"
LIBRARY = OpLibrary(lambda: build.native(build.with_cuda()))
deform_conv2d = LIBRARY.deform_conv2d
deform_roi_pool = LIBRARY.deform_roi_pool
deform_psroi_pool = LIBRARY.deform_psroi_pool
dcnv3 = LIBRARY.dcnv3
dcnv4 = LIBRARY.dcnv4


def mode(device: str) -> str:
    if device == "cpu":
        return "deterministic (CPU kernels always are)"
    return "deterministic (per-channel accumulation)" if deterministic() else "atomicAdd accumulation (nondeterministic)"


def _group_ops_unsupported(geometry, device: str) -> str | None:
    if getattr(geometry, "op", None) in ("dcnv3", "dcnv4") and device != "cpu":
        return "ext has DCNv3/DCNv4 kernels for the CPU only"
    return None


def check() -> str | None:
    """Build (or load the cached build); None when the library loads, else why not and how to fix it."""
    check_environment()  # raises UsageError on a bad DCNBENCH_EXT_DETERMINISTIC or column budget
    problem = build.cache_problem()
    if problem:  # before any build: a traceback from deep inside one otherwise
        from dcnbench.backends import Reason

        return Reason(problem[0], problem[1], setting=True)
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
        ops=LIBRARY.op_table() | {"dcnv3": dcnv3, "dcnv4": dcnv4},
        dtypes=devices,
        unsupported_reasons={"float16": "ext runs float16 on CUDA only (the CPU has no fast float16 arithmetic)"},
        version=torch.__version__,
        check=check,
        environment=lambda: f"built in {build.build_dir()}",
        mode=mode,
        batch_chunk=batch_chunk,
        knobs=knobs,
        thread_invariant=lambda device: device == "cpu",
        workload_unsupported=_group_ops_unsupported,
        onnx_translations=_onnx_translations,
    )


# The CPU deform_conv2d backward's column buffer holds at most this many elements (csrc/cpu/deform_conv2d.cpp;
# the forward has none: it gathers tiles of positions).
CPU_COLUMN_BUDGET = 1 << 23


def knobs(device: str) -> tuple:
    """The CPU column budget (the backward's batch chunk): chunking the batch differently must not change a
    bit of the result."""
    from dcnbench.checking.knobs import env_knob

    if device != "cpu":
        return ()
    return (env_knob("column_budget", "DCNBENCH_EXT_COLUMN_BUDGET", (str(1 << 12),), bitwise=True),)


def batch_chunk(op: str, geometry) -> int | None:
    """Images per column chunk of the CPU deform_conv2d backward (C*K*L column elements per image)."""
    if op != "deform_conv2d":
        return None
    per_image = max(1, geometry.c * geometry.taps * geometry.ho * geometry.wo)
    return max(1, CPU_COLUMN_BUDGET // per_image)


def _onnx_translations() -> dict:
    """How torch.onnx.export writes ext's ops (onnx.py): deform_conv2d as one DeformConv node."""
    from dcnbench.backends.ext import onnx

    return onnx.translations()
