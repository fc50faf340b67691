"""MXNet behind the generic worker (dcnbench/worker/main.py), run in .venv-mxnet (mxnet 1.9.1, numpy 1.23).

- call:     DeformableConvolution (DCNv1), ModulatedDeformableConvolution (DCNv2) or
            DeformablePSROIPooling (params["op"]); with `record`, the graph is kept for backward
- backward: backpropagates a cotangent through a recorded call; returns every gradient
- time:     one forward/backward timed in the worker, with mx.nd.waitall() closing the timed region
"""

import numpy as np

NAME = "mxnet"
GRAD_NAMES = {"input": "grad_input", "offset": "grad_offset", "mask": "grad_mask", "weight": "grad_weight",
              "bias": "grad_bias"}
mx = autograd = None


def hello(threads, config):
    global mx, autograd
    import mxnet as _mx  # OMP_NUM_THREADS is in the environment already (the client sets it)
    from mxnet import autograd as _autograd

    mx, autograd = _mx, _autograd
    return {"versions": {"mxnet": mx.__version__, "numpy": np.__version__}, "gpus": mx.context.num_gpus()}


def _context(device):
    return mx.gpu(0) if device == "cuda" else mx.cpu()


def _call(p, nd):
    """One MXNet call with dcnbench's parameters mapped onto MXNet's."""
    if p.get("op") == "deform_psroi_pool":
        kwargs = {k: p[k] for k in ("spatial_scale", "output_dim", "group_size", "pooled_size", "part_size",
                                    "sample_per_part", "trans_std", "no_trans")}
        if not p["no_trans"]:
            kwargs["trans"] = nd["offset"]
        return mx.nd.contrib.DeformablePSROIPooling(data=nd["input"], rois=nd["rois"], **kwargs)
    kwargs = dict(kernel=tuple(p["kernel"]), stride=tuple(p["stride"]), pad=tuple(p["padding"]),
                  dilate=tuple(p["dilation"]), num_filter=p["out_channels"], num_group=p["groups"],
                  num_deformable_group=p["offset_groups"], no_bias="bias" not in nd)
    args = dict(data=nd["input"], offset=nd["offset"], weight=nd["weight"])
    if "bias" in nd:
        args["bias"] = nd["bias"]
    if "mask" in nd:
        return mx.nd.contrib.ModulatedDeformableConvolution(mask=nd["mask"], **args, **kwargs)
    return mx.nd.contrib.DeformableConvolution(**args, **kwargs)


def _nd(arrays, device, grad):
    nd = {}
    for name, value in arrays.items():
        if name != "cotangent":
            nd[name] = mx.nd.array(value, ctx=_context(device), dtype=value.dtype)
            if grad and name in GRAD_NAMES:  # RoIs carry no gradient
                nd[name].attach_grad()
    return nd


def call(params, arrays, device, record):
    nd = _nd(arrays, device, record)
    if record:
        with autograd.record():
            out = _call(params, nd)
        return {"output": out.asnumpy()}, (nd, out)
    return {"output": _call(params, nd).asnumpy()}, None


def backward(handle, arrays):
    nd, out = handle
    cot = arrays["cotangent"]
    out.backward(mx.nd.array(cot, ctx=out.context, dtype=cot.dtype), retain_graph=True)
    mx.nd.waitall()
    return {GRAD_NAMES[name]: t.grad.asnumpy() for name, t in nd.items() if name in GRAD_NAMES}


def time(params, arrays, direction, device):
    grad = direction != "fwd"
    nd = _nd(arrays, device, grad)
    cot = mx.nd.array(arrays["cotangent"], ctx=_context(device), dtype=arrays["cotangent"].dtype) if grad else None
    mx.nd.waitall()
    state = {}

    def fwd():
        _call(params, nd).wait_to_read()

    def fwdbwd():
        with autograd.record():
            out = _call(params, nd)
        out.backward(cot)
        mx.nd.waitall()

    def untimed_forward():
        with autograd.record():
            state["out"] = _call(params, nd)
        mx.nd.waitall()

    def bwd():
        state.pop("out").backward(cot)
        mx.nd.waitall()

    return {"fwd": (None, fwd), "fwdbwd": (None, fwdbwd), "bwd": (untimed_forward, bwd)}[direction]


def one_line(exc):
    """MXNet's errors open with a C++ traceback; its own message is the last `MXNetError:` line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    own = [ln for ln in lines if ln.startswith("MXNetError:") or "Check failed" in ln]
    return own[-1] if own else f"{type(exc).__name__}: {lines[0] if lines else ''}"
