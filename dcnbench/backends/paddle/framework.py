"""PaddlePaddle behind the generic worker (dcnbench/worker/main.py), run in .venv-paddle.

paddle.vision.ops.deform_conv2d: DCNv1 without a mask, DCNv2 with one; torchvision's offset and
mask layout, so arrays pass unchanged. Paddle's Tensor.grad accumulates across backward calls on
the same leaves, so gradients are cleared before each recorded backward and each timed sample.
"""

import numpy as np

NAME = "paddle"
GRAD_NAMES = {"input": "grad_input", "offset": "grad_offset", "mask": "grad_mask", "weight": "grad_weight",
              "bias": "grad_bias"}
paddle = None


def hello(threads, config):
    global paddle
    import paddle as _paddle  # reads OMP_NUM_THREADS (the client sets it) at import

    paddle = _paddle
    paddle.set_device("cpu")
    if threads:
        paddle.base.core.set_num_threads(threads)
    return {"versions": {"paddle": paddle.__version__, "numpy": np.__version__},
            "gpus": paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0}


def _place(device):
    paddle.set_device("gpu:0" if device == "cuda" else "cpu")


def _tensors(arrays, grad):
    return {k: paddle.to_tensor(v, stop_gradient=not (grad and k in GRAD_NAMES))
            for k, v in arrays.items() if k != "cotangent"}


def _call(p, t):
    return paddle.vision.ops.deform_conv2d(
        t["input"], t["offset"], t["weight"], t.get("bias"), stride=tuple(p["stride"]), padding=tuple(p["padding"]),
        dilation=tuple(p["dilation"]), deformable_groups=p["offset_groups"], groups=p["groups"], mask=t.get("mask"))


def call(params, arrays, device, record):
    _place(device)
    t = _tensors(arrays, record)
    out = _call(params, t)
    return {"output": out.numpy()}, ((t, out) if record else None)


def _clear(tensors):
    for v in tensors.values():
        if not v.stop_gradient:
            v.clear_gradient()


def backward(handle, arrays):
    t, out = handle
    _clear(t)  # repeated backward calls must not accumulate
    if out.size:
        paddle.autograd.backward([out], [paddle.to_tensor(arrays["cotangent"])], retain_graph=True)
    return {GRAD_NAMES[k]: (v.grad.numpy() if v.grad is not None else np.zeros(v.shape, dtype=v.numpy().dtype))
            for k, v in t.items() if k in GRAD_NAMES}


def _sync(device):
    if device == "cuda":
        paddle.device.synchronize()


def time(params, arrays, direction, device):
    _place(device)
    grad = direction != "fwd"
    t = _tensors(arrays, grad)
    cot = paddle.to_tensor(arrays["cotangent"]) if grad else None
    state = {}

    def forward_only():
        with paddle.no_grad():
            _call(params, t)
        _sync(device)

    def fwd_bwd():
        paddle.autograd.backward([_call(params, t)], [cot])
        _sync(device)

    def untimed_forward():
        _clear(t)
        state["out"] = _call(params, t)
        _sync(device)

    def bwd():
        paddle.autograd.backward([state.pop("out")], [cot])
        _sync(device)

    if direction == "fwd":
        return None, forward_only
    if direction == "fwdbwd":
        return (lambda: _clear(t)), fwd_bwd
    return untimed_forward, bwd


def one_line(exc):
    """Paddle's errors open with its own summary: '(InvalidArgument) ...', '(NotFound) ...'."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    own = [ln for ln in lines if ln.startswith("(")]
    return own[0] if own else f"{type(exc).__name__}: {lines[0] if lines else ''}"
