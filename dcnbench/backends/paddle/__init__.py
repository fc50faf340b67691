"""PaddlePaddle's deform_conv2d (paddle.vision.ops), in its own environment behind a worker.

paddlepaddle 3.3.1's CPU wheel lives in `.venv-paddle` (`make paddle-env`, from the hashed
requirements.txt beside this file) and runs in dcnbench's generic worker, which loads
framework.py there. DCNv1 (no mask) and DCNv2, forward and backward, float64 and float32 on the
CPU; paddle has no deformable RoI pooling. Measured here (README): both variants sample the
border by the paper's rule Z; its offset gradient differs from the oracle's only at a sample
exactly on p = -1 (a kink, which the suite's cases keep clear of).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from dcnbench.backends import Backend, filters_per_offset_group, runs_in_a_worker
from dcnbench.ops.case import cotangent
from dcnbench.ops.deform_conv2d.contract import check_call
from dcnbench.worker.client import WorkerEnv
from dcnbench.worker.shared import FrameworkWorker

NAME = "paddle"
OP = "deform_conv2d"
DTYPES = ("float64", "float32")
HERE = Path(__file__).resolve().parent
ENV = WorkerEnv(name=NAME, framework=HERE / "framework.py", requirements=HERE / "requirements.txt",
                distribution="paddlepaddle", pinned="paddlepaddle==3.3.1 CPU, numpy 2")
NO_HALF = ("paddle 3.3.1 registers its CPU deformable_conv kernel for float64 and float32 only "
           "(float16 and bfloat16: \"(NotFound) The kernel ... of kernel `deformable_conv` is not registered\")")

_worker = FrameworkWorker(ENV)


def params_of(geo) -> dict:
    return {"op": OP, "stride": list(geo.stride), "padding": list(geo.padding), "dilation": list(geo.dilation),
            "groups": geo.groups, "offset_groups": geo.offset_groups}


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    geo = check_call(input, offset, weight, bias, stride, padding, dilation, mask)
    return _worker.call(params_of(geo), input.device.type, None, ("input", "offset", "weight", "mask", "bias"),
                        input, offset, weight, mask, bias)


def self_timed(case, direction: str, device: str):
    """Samples timed inside the worker, so the pipe and the conversions are outside the figure."""
    arrays = dict(case.inputs("cpu"), cotangent=cotangent(case))
    return _worker.self_timed({"case": case.digest(), "params": params_of(case.geometry), "device": device,
                               "direction": direction}, arrays)


@lru_cache(maxsize=1)
def check() -> str | None:
    return _worker.check()


def workload_unsupported(geometry, device: str) -> str | None:
    return filters_per_offset_group("paddle's deform_conv2d (DCNv1 and DCNv2)", geometry)


def backend() -> Backend:
    ENV.check_settings()  # a malformed DCNBENCH_PADDLE_TIMEOUT is a usage error before any work
    reason = ENV.unavailable()
    if reason:
        return Backend(name=NAME, description="", ops={}, dtypes={}, unavailable=reason)
    return Backend(
        name=NAME,
        description="paddle.vision.ops.deform_conv2d (PaddlePaddle CPU), in a worker process",
        ops={OP: deform_conv2d},
        dtypes={"cpu": DTYPES},
        unsupported_reasons={"cuda": "this paddlepaddle build (PyPI's CPU wheel) has no GPU support",
                             "float16": NO_HALF, "bfloat16": NO_HALF,
                             "deform_roi_pool": "paddle has no deformable RoI pooling (paddle.vision.ops has "
                                                "roi_align, roi_pool and psroi_pool without offsets)",
                             "deform_psroi_pool": "paddle has no deformable position-sensitive RoI pooling",
                             "export": runs_in_a_worker("paddle")},
        version=ENV.installed_version(),
        check=check,
        self_timed=self_timed,
        environment=_worker.environment,
        workload_unsupported=workload_unsupported,
    )
