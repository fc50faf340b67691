"""The MXNet worker: runs in .venv-mxnet (mxnet 1.9.1, numpy 1.23), never imports dcnbench.

Started as `python -I worker.py`; speaks protocol.py over stdin/stdout. It says hello first
(protocol version, mxnet and numpy versions, GPU count), then answers one request at a time:

- forward:  run DeformableConvolution (DCNv1), ModulatedDeformableConvolution (DCNv2) or
            DeformablePSROIPooling (params["op"]); with `record`, keep the graph under `call`
            for a later backward
- backward: backpropagate a cotangent through a recorded call; return every gradient
- time:     time one forward/backward in here, with mx.nd.waitall() around it, so the pipe is not
            in the figure; `memory` also reports the peak-RSS growth over that call
- release, sleep (tests), exit; any request may list recorded calls to drop under `release`
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I drops the script's directory

import numpy as np  # noqa: E402
import mxnet as mx  # noqa: E402
from mxnet import autograd  # noqa: E402

from protocol import PROTOCOL_VERSION, encode, read_message  # noqa: E402

# Recorded graphs are released when dcnbench's autograd graph is freed (`release` in any request);
# this cap only bounds a client that never says so.
KEEP_CALLS = 1024
GRAD_NAMES = {"input": "grad_input", "offset": "grad_offset", "mask": "grad_mask", "weight": "grad_weight", "bias": "grad_bias"}


def _read_exactly(n):
    chunks, left = [], n
    while left:
        chunk = sys.stdin.buffer.read(left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(header, arrays=None):
    sys.stdout.buffer.write(encode(header, arrays))
    sys.stdout.buffer.flush()


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


def _arrays_to_nd(arrays, device, grad):
    ctx = _context(device)
    nd = {}
    for name, value in arrays.items():
        if name != "cotangent":
            nd[name] = mx.nd.array(value, ctx=ctx, dtype=value.dtype)
            if grad and name in GRAD_NAMES:  # RoIs carry no gradient
                nd[name].attach_grad()
    return nd


def _status_kib(field):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Worker:
    def __init__(self):
        self.calls = {}
        self.cases = {}

    def forward(self, header, arrays):
        nd = _arrays_to_nd(arrays, header["device"], header["record"])
        if header["record"]:
            with autograd.record():
                out = _call(header["params"], nd)
            self.calls[header["call"]] = (nd, out)
            while len(self.calls) > KEEP_CALLS:
                self.calls.pop(next(iter(self.calls)))
        else:
            out = _call(header["params"], nd)
        return {}, {"output": out.asnumpy()}

    def backward(self, header, arrays):
        if header["call"] not in self.calls:
            raise RuntimeError(f"no recorded call {header['call']} (only the last {KEEP_CALLS} are kept)")
        nd, out = self.calls[header["call"]]
        out.backward(mx.nd.array(arrays["cotangent"], ctx=out.context, dtype=arrays["cotangent"].dtype), retain_graph=True)
        mx.nd.waitall()
        return {}, {GRAD_NAMES[name]: t.grad.asnumpy() for name, t in nd.items() if name in GRAD_NAMES}

    def time(self, header, arrays):
        """One timed sample (ms) of the case stored under header['case'] (sent once, then reused)."""
        key = header["case"]
        if arrays:
            self.cases = {key: (arrays, header["params"], header["device"])}  # one case at a time
        arrays, params, device = self.cases[key]
        direction = header["direction"]
        grad = direction != "fwd"
        nd = _arrays_to_nd(arrays, device, grad)
        cot = mx.nd.array(arrays["cotangent"], ctx=_context(device), dtype=arrays["cotangent"].dtype) if grad else None
        mx.nd.waitall()
        base = None
        if header.get("memory"):
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak RSS to the current RSS
            base = _status_kib("VmRSS")
        out = None
        if direction == "bwd":  # an untimed forward, then the timed backward
            with autograd.record():
                out = _call(params, nd)
            mx.nd.waitall()
        start = time.perf_counter()
        if direction == "fwd":
            _call(params, nd).wait_to_read()
        elif direction == "fwdbwd":
            with autograd.record():
                out = _call(params, nd)
            out.backward(cot)
        else:
            out.backward(cot)
        mx.nd.waitall()
        elapsed_ms = (time.perf_counter() - start) * 1e3
        reply = {"ms": elapsed_ms}
        if base is not None:
            peak = _status_kib("VmHWM")
            reply["peak_bytes"] = None if peak is None else max(0, peak - base) * 1024
        return reply, {}

    def release(self, header, arrays):
        self.calls.pop(header["call"], None)
        return {}, {}

    def sleep(self, header, arrays):
        time.sleep(header["seconds"])
        return {}, {}


def _one_line(exc):
    """MXNet's errors open with a C++ traceback; its own message is the last `MXNetError:` line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    own = [ln for ln in lines if ln.startswith("MXNetError:") or "Check failed" in ln]
    return own[-1] if own else f"{type(exc).__name__}: {lines[0] if lines else ''}"


def main():
    _send({"protocol": PROTOCOL_VERSION, "mxnet": mx.__version__, "numpy": np.__version__,
           "gpus": mx.context.num_gpus()})
    worker = Worker()
    while True:
        try:
            header, arrays = read_message(_read_exactly)
        except EOFError:
            return
        for call in header.get("release", []):
            worker.calls.pop(call, None)
        cmd = header.get("cmd")
        if cmd == "exit":
            return
        try:
            reply, out = getattr(worker, cmd)(header, arrays)
            _send(dict(reply, ok=True), out)
        except Exception as exc:  # report and keep serving: one bad request is not a dead worker
            _send({"ok": False, "error": _one_line(exc)})


if __name__ == "__main__":
    main()
