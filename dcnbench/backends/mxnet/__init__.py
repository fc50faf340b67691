"""MXNet's contrib operators, the authors' lineage, in their own environment behind a worker.

MXNet 1.9.1 needs numpy < 1.24, so it lives in `.venv-mxnet` (`make mxnet-env`) and runs in a
worker process: dcnbench's generic worker (dcnbench/worker/) loading framework.py. DCNv1 maps to
DeformableConvolution, which samples the border by rule C; DCNv2 maps to
ModulatedDeformableConvolution (rule Z), whose backward MXNet implements on the GPU only;
deform_psroi_pool maps to DeformablePSROIPooling (forward and backward on the CPU). MXNet has
no mmcv-style deform_roi_pool.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


from dcnbench.backends import Backend, filters_per_offset_group, runs_in_a_worker
from dcnbench.ops.case import cotangent
from dcnbench.ops.deform_conv2d.contract import ConvGeometry, check_call
from dcnbench.ops.deform_psroi_pool.contract import check_call as check_psroi_pool_call
from dcnbench.worker.client import WorkerClient, WorkerEnv
from dcnbench.worker.shared import FrameworkWorker

OP_DEFORM_CONV2D, OP_DEFORM_ROI_POOL, OP_DEFORM_PSROI_POOL = "deform_conv2d", "deform_roi_pool", "deform_psroi_pool"

NAME = "mxnet"
DTYPES = ("float64", "float32")
HERE = Path(__file__).resolve().parent
# Seconds any wait on the worker may take (start-up, each request) before it counts as hung
# (DCNBENCH_MXNET_TIMEOUT or --timeout overrides).
DEFAULT_TIMEOUT_S = 300.0
ENV = WorkerEnv(name=NAME, label="MXNet", framework=HERE / "framework.py", requirements=HERE / "requirements.txt",
                distribution="mxnet", pinned="mxnet==1.9.1, numpy==1.23.5", default_timeout_s=DEFAULT_TIMEOUT_S)
FIX = ENV.fix()
EMPTY_BATCH = "MXNet 1.9.1 dies with SIGFPE on an empty batch (N=0); dcnbench does not send it one"
DCNV2_CPU_BACKWARD = "MXNet implements the DCNv2 (ModulatedDeformableConvolution) backward on the GPU only"
NONFINITE = ("rois or trans hold NaN or infinity: MXNet's DeformablePSROIPooling turns them into memory indices "
             "(it dies with SIGSEGV), so dcnbench does not send them; the operator is undefined there")


def python() -> Path:
    """The worker's interpreter: $DCNBENCH_MXNET_PYTHON, else the project's .venv-mxnet."""
    return ENV.python()


_worker = FrameworkWorker(ENV, python)

# Load client.py (the by-hand client) now, so that the function below, not the submodule, is `client`.
from dcnbench.backends.mxnet import client as _by_hand  # noqa: E402, F401


def client() -> WorkerClient:
    """The worker shared by this run (started on first use, restarted after a failure)."""
    return _worker.client()


@lru_cache(maxsize=1)
def check() -> str | None:
    """Start the worker once; None when it says hello, else why the environment is broken."""
    return _worker.check()


def environment() -> str:
    return _worker.environment()


def params_of(geo) -> dict:
    return {"op": OP_DEFORM_CONV2D, "kernel": [geo.kh, geo.kw], "stride": list(geo.stride),
            "padding": list(geo.padding), "dilation": list(geo.dilation), "out_channels": geo.o,
            "groups": geo.groups, "offset_groups": geo.offset_groups}


def psroi_params_of(geo, no_trans: bool) -> dict:
    # MXNet declares spatial_scale and trans_std as float32 parameters: 0.1 arrives as 0.100000001.
    return {"op": OP_DEFORM_PSROI_POOL, **geo.kwargs(), "no_trans": bool(no_trans)}


def _params_for(case) -> dict:
    return params_of(case.geometry) if case.op == OP_DEFORM_CONV2D else psroi_params_of(case.geometry, case.no_offset)


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    geo = check_call(input, offset, weight, bias, stride, padding, dilation, mask)
    device = input.device.type
    refused = DCNV2_CPU_BACKWARD if mask is not None and device == "cpu" else None
    return _worker.call(params_of(geo), device, refused, ("input", "offset", "weight", "mask", "bias"),
                        input, offset, weight, mask, bias)


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                      sample_per_part=1, trans_std=0.0, no_trans=False):
    geo = check_psroi_pool_call(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                                sample_per_part, trans_std, no_trans)
    trans = None if no_trans else trans
    if not all(t is None or bool(t.detach().isfinite().all()) for t in (rois, trans)):
        raise ValueError(NONFINITE)
    return _worker.call(psroi_params_of(geo, no_trans), input.device.type, None, ("input", "rois", "offset"),
                        input, rois, trans)


def backward_unsupported(case, device: str) -> str | None:
    return DCNV2_CPU_BACKWARD if case.op == OP_DEFORM_CONV2D and case.mask and device == "cpu" else None


NO_ROIS = "MXNet 1.9.1 fails on an empty RoI list (K=0): zeros_like cannot infer the output's shape"


def workload_unsupported(geometry, device: str) -> str | None:
    if isinstance(geometry, ConvGeometry) and geometry.n == 0:
        return EMPTY_BATCH
    return NO_ROIS if geometry.op == OP_DEFORM_PSROI_POOL and geometry.rois == 0 else None


def case_unsupported(case, device: str) -> str | None:
    """DCNv2 only: ModulatedDeformableConvolution checks that the deformable groups divide the output
    channels; DeformableConvolution (DCNv1) runs those geometries and matches rule C (measured)."""
    if case.op == OP_DEFORM_CONV2D and case.mask:
        return filters_per_offset_group("MXNet's ModulatedDeformableConvolution (DCNv2)", case.geometry)
    return None


def self_timed(case, direction: str, device: str):
    """Samples timed inside the worker (mx.nd.waitall() closes the timed region), so the pipe costs nothing."""
    if direction != "fwd" and backward_unsupported(case, device):
        raise RuntimeError(DCNV2_CPU_BACKWARD)
    params = _params_for(case)
    arrays = {k: v for k, v in case.inputs("cpu").items() if not (k == "offset" and params.get("no_trans"))}
    arrays["cotangent"] = cotangent(case)  # the one in-process backends get
    return _worker.self_timed({"case": case.digest(), "params": params, "device": device, "direction": direction},
                              arrays)


def backend() -> Backend:
    ENV.check_settings()  # a malformed DCNBENCH_MXNET_TIMEOUT is a usage error before any work
    reason = ENV.unavailable()
    if reason:
        return Backend(name=NAME, description="", ops={}, dtypes={}, unavailable=reason)
    return Backend(
        name=NAME,
        description="mxnet.nd.contrib Deformable/ModulatedDeformableConvolution, DeformablePSROIPooling, in a worker process",
        ops={OP_DEFORM_CONV2D: deform_conv2d, OP_DEFORM_PSROI_POOL: deform_psroi_pool},
        dtypes={"cpu": DTYPES},
        unsupported_reasons={"cuda": "this MXNet build (PyPI mxnet 1.9.1) has no GPU support",
                             "float16": "dcnbench runs MXNet in float64 and float32",
                             "bfloat16": "MXNet 1.9.1 has no bfloat16 deformable convolution",
                             OP_DEFORM_ROI_POOL: "MXNet has no mmcv-style deform_roi_pool; its DeformablePSROIPooling "
                                                 "is the other operator (deform_psroi_pool)",
                             "export": runs_in_a_worker("MXNet")},
        version=ENV.installed_version(),
        dialects={"v1": "C"},
        backward_unsupported=backward_unsupported,
        workload_unsupported=workload_unsupported,
        case_unsupported=case_unsupported,
        check=check,
        self_timed=self_timed,
        environment=environment,
    )
