"""MXNet's contrib operators, the authors' lineage, in their own environment behind a worker.

MXNet 1.9.1 needs numpy < 1.24, so it lives in `.venv-mxnet` (`make mxnet-env`) and runs in a
worker process (worker.py) that this module drives through client.py. DCNv1 maps to
DeformableConvolution, which samples the border by rule C; DCNv2 maps to
ModulatedDeformableConvolution (rule Z), whose backward MXNet implements on the GPU only;
deform_psroi_pool maps to DeformablePSROIPooling (forward and backward on the CPU). MXNet has
no mmcv-style deform_roi_pool.
"""

from __future__ import annotations

import atexit
import itertools
import weakref
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from dcnbench.backends import Backend
from dcnbench.backends.mxnet.client import WorkerClient, WorkerError
from dcnbench.ops.case import cotangent
from dcnbench.ops.deform_conv2d.contract import ConvGeometry, check_call
from dcnbench.ops.deform_psroi_pool.contract import check_call as check_psroi_pool_call

OP_DEFORM_CONV2D, OP_DEFORM_ROI_POOL, OP_DEFORM_PSROI_POOL = "deform_conv2d", "deform_roi_pool", "deform_psroi_pool"

NAME = "mxnet"
DTYPES = ("float64", "float32")
FIX = "create it with `make mxnet-env` (mxnet==1.9.1, numpy==1.23.5 in .venv-mxnet)"
EMPTY_BATCH = "MXNet 1.9.1 dies with SIGFPE on an empty batch (N=0); dcnbench does not send it one"
DCNV2_CPU_BACKWARD = "MXNet implements the DCNv2 (ModulatedDeformableConvolution) backward on the GPU only"
# Seconds one request may take before the worker counts as hung (DCNBENCH_MXNET_TIMEOUT overrides).
DEFAULT_TIMEOUT_S = 300.0


def env_dir() -> Path:
    return Path(__file__).resolve().parents[3] / ".venv-mxnet"


def python() -> Path:
    """The worker's interpreter: $DCNBENCH_MXNET_PYTHON, else the project's .venv-mxnet."""
    override = os.environ.get("DCNBENCH_MXNET_PYTHON")
    return Path(override) if override else env_dir() / "bin" / "python"


def installed_version() -> str | None:
    """mxnet's version from the worker environment's metadata, without starting it."""
    for site in python().parent.parent.glob("lib/python*/site-packages"):
        for dist in site.glob("mxnet-*.dist-info"):
            return dist.name.split("-")[1]
    return None


def _timeout() -> float:
    return float(os.environ.get("DCNBENCH_MXNET_TIMEOUT", DEFAULT_TIMEOUT_S))


_client: WorkerClient | None = None


def client() -> WorkerClient:
    """The worker shared by this run (started on first use, restarted after a failure)."""
    global _client
    if _client is None:
        _client = WorkerClient(python(), _timeout(), torch.get_num_threads())
        atexit.register(_client.close)
    return _client


@lru_cache(maxsize=1)
def check() -> str | None:
    """Start the worker once; None when it says hello, else why the environment is broken."""
    try:
        client().request({"cmd": "release", "call": -1})
    except WorkerError as exc:
        return f"the MXNet environment is broken: {exc}"
    return None


def environment() -> str:
    hello = client().hello or {}
    return (f"worker {python()}: mxnet {hello.get('mxnet')}, numpy {hello.get('numpy')}, "
            f"{hello.get('gpus')} GPUs, protocol {hello.get('protocol')}")


def params_of(geo) -> dict:
    return {"op": OP_DEFORM_CONV2D, "kernel": [geo.kh, geo.kw], "stride": list(geo.stride),
            "padding": list(geo.padding), "dilation": list(geo.dilation), "out_channels": geo.o,
            "groups": geo.groups, "offset_groups": geo.offset_groups}


def psroi_params_of(geo, no_trans: bool) -> dict:
    # MXNet declares spatial_scale and trans_std as float32 parameters: 0.1 arrives as 0.100000001.
    return {"op": OP_DEFORM_PSROI_POOL, **geo.kwargs(), "no_trans": bool(no_trans)}


def _params_for(case) -> dict:
    return params_of(case.geometry) if case.op == OP_DEFORM_CONV2D else psroi_params_of(case.geometry, case.no_offset)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


_calls = itertools.count()


class _MXNetCall(torch.autograd.Function):
    """One MXNet operator call as a torch op: tensors go to the worker, gradients come back."""

    @staticmethod
    def forward(ctx, params, device, grad_enabled, refused, names, *tensors):
        named = dict(zip(names, tensors))
        arrays = {k: _numpy(v) for k, v in named.items() if v is not None}
        ctx.backward_refused = refused
        # needs_input_grad ignores no_grad(), so the caller's grad mode comes in as an argument.
        record = grad_enabled and any(ctx.needs_input_grad[5:]) and refused is None
        ctx.call = next(_calls)
        ctx.names = names
        c = client()
        _, out = c.request({"cmd": "forward", "params": params, "device": device, "record": record,
                            "call": ctx.call}, arrays)
        if record:
            # When torch frees this graph node, the worker may free its graph (told on the next request).
            weakref.finalize(ctx, c.to_release.append, ctx.call)
        return torch.from_numpy(out["output"]).to(tensors[0].device)

    @staticmethod
    def backward(ctx, grad):
        if ctx.backward_refused:
            raise RuntimeError(ctx.backward_refused)
        _, grads = client().request({"cmd": "backward", "call": ctx.call}, {"cotangent": _numpy(grad)})
        dev = grad.device

        def g(name):
            key = f"grad_{name}"
            return torch.from_numpy(grads[key]).to(dev) if key in grads else None

        return (None,) * 5 + tuple(g(name) for name in ctx.names)


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    geo = check_call(input, offset, weight, bias, stride, padding, dilation, mask)
    device = input.device.type
    refused = DCNV2_CPU_BACKWARD if mask is not None and device == "cpu" else None
    return _MXNetCall.apply(params_of(geo), device, torch.is_grad_enabled(), refused,
                            ("input", "offset", "weight", "mask", "bias"), input, offset, weight, mask, bias)


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                      sample_per_part=1, trans_std=0.0, no_trans=False):
    geo = check_psroi_pool_call(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                                sample_per_part, trans_std, no_trans)
    trans = None if no_trans else trans
    return _MXNetCall.apply(psroi_params_of(geo, no_trans), input.device.type, torch.is_grad_enabled(), None,
                            ("input", "rois", "offset"), input, rois, trans)


def backward_unsupported(case, device: str) -> str | None:
    return DCNV2_CPU_BACKWARD if case.op == OP_DEFORM_CONV2D and case.mask and device == "cpu" else None


NO_ROIS = "MXNet 1.9.1 fails on an empty RoI list (K=0): zeros_like cannot infer the output's shape"


def workload_unsupported(geometry, device: str) -> str | None:
    if isinstance(geometry, ConvGeometry) and geometry.n == 0:
        return EMPTY_BATCH
    return NO_ROIS if geometry.op == OP_DEFORM_PSROI_POOL and geometry.rois == 0 else None


class SelfTimed:
    """Samples timed inside the worker (mx.nd.waitall() around the call), so the pipe costs nothing."""

    def __init__(self, case, direction: str, device: str):
        params = _params_for(case)
        arrays = {k: _numpy(v) for k, v in case.inputs("cpu").items()
                  if not (k == "offset" and params.get("no_trans"))}
        arrays["cotangent"] = _numpy(cotangent(case))  # the one in-process backends get
        self.header = {"cmd": "time", "case": case.digest(), "params": params, "device": device,
                       "direction": direction}
        self.arrays = arrays
        self._sent_to = None  # the worker process that holds the arrays
        if direction != "fwd" and backward_unsupported(case, device):
            raise RuntimeError(DCNV2_CPU_BACKWARD)

    def sample(self) -> float:
        # The arrays travel once per worker process; later samples reuse the worker's copy.
        c = client()
        if c.proc is None:
            c.start()
        reply, _ = c.request(self.header, self.arrays if self._sent_to is not c.proc else None)
        self._sent_to = c.proc
        return float(reply["ms"])

    def peak_bytes(self) -> tuple[int | None, str]:
        """Peak-RSS growth over one call in a fresh worker, like the other CPU backends."""
        fresh = WorkerClient(python(), _timeout(), torch.get_num_threads())
        try:
            reply, _ = fresh.request(dict(self.header, memory=True), self.arrays)
            return reply.get("peak_bytes"), ""
        except WorkerError as exc:
            return None, str(exc)
        finally:
            fresh.close()


def backend() -> Backend:
    version = installed_version()
    if not python().exists() or version is None:
        return Backend(name=NAME, description="", ops={}, dtypes={},
                       unavailable=f"the MXNet environment {python().parent.parent} is missing or has no mxnet: {FIX}")
    return Backend(
        name=NAME,
        description="mxnet.nd.contrib Deformable/ModulatedDeformableConvolution, DeformablePSROIPooling, in a worker process",
        ops={OP_DEFORM_CONV2D: deform_conv2d, OP_DEFORM_PSROI_POOL: deform_psroi_pool},
        dtypes={"cpu": DTYPES},
        unsupported_reasons={"cuda": "this MXNet build (PyPI mxnet 1.9.1) has no GPU support",
                             "float16": "dcnbench runs MXNet in float64 and float32",
                             "bfloat16": "MXNet 1.9.1 has no bfloat16 deformable convolution",
                             OP_DEFORM_ROI_POOL: "MXNet has no mmcv-style deform_roi_pool; its DeformablePSROIPooling "
                                                 "is the other operator (deform_psroi_pool)"},
        version=version,
        dialects={"v1": "C"},
        backward_unsupported=backward_unsupported,
        workload_unsupported=workload_unsupported,
        check=check,
        self_timed=SelfTimed,
        environment=environment,
    )
