"""The torch side of a worker call: one call in a worker process as a torch op.

`WorkerCall` sends the tensors of one call as arrays, returns the worker's output as a tensor and,
when autograd asks, sends the cotangent back and returns the worker's gradients. The worker keeps
each recorded call until torch frees the matching autograd node (it is told on the next request).

Two ways to send tensors: plain (contiguous numpy, what a framework such as MXNet or paddle
reads), and exact (`pack`/`unpack`, for a torch callable in a worker): strides and the storage
span of a non-contiguous view travel along, a dtype numpy lacks (bfloat16) travels as its bits
under a tagged name (`offset@bfloat16`), and a caller's tensor the callable changed in place comes
back and is changed here too, so verification sees what it would in one process.
"""

from __future__ import annotations

import itertools
import weakref

import numpy as np
import torch

_calls = itertools.count()
# dtypes numpy has no type for: sent as the integer type of the same width, the name tagged.
_BITS = {torch.bfloat16: ("bfloat16", torch.int16)}
_FROM_TAG = {tag: (dtype, bits) for dtype, (tag, bits) in _BITS.items()}


def plain(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def pack(name: str, t: torch.Tensor, layouts: dict | None = None) -> tuple[str, np.ndarray]:
    """(key, array) for one tensor; with `layouts`, a non-contiguous view records how to rebuild it."""
    t = t.detach()
    if layouts is not None and not t.is_contiguous() and t.numel():
        span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        layouts[name] = {"shape": list(t.shape), "stride": list(t.stride())}
        t = torch.as_strided(t, (span,), (1,), t.storage_offset())
    t = t.cpu().contiguous()
    if t.dtype in _BITS:
        tag, bits = _BITS[t.dtype]
        return f"{name}@{tag}", t.view(bits).numpy()
    return name, t.numpy()


def unpack(arrays: dict, layouts: dict | None = None, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors `pack` sent: {name: tensor} on `device`, each with its dtype and layout."""
    found = {}
    for key, value in arrays.items():
        name, _, tag = key.partition("@")
        t = torch.from_numpy(np.array(value, copy=True))  # a writable copy: the callee may write to it
        if tag:
            t = t.view(_FROM_TAG[tag][0])
        t = t.to(device)
        layout = (layouts or {}).get(name)
        if layout:
            t = torch.as_strided(t, layout["shape"], layout["stride"], 0)
        found[name] = t
    return found


class WorkerCall(torch.autograd.Function):
    """forward(ctx, client_of, params, device, grad_enabled, refused, exact, names, *tensors)."""

    @staticmethod
    def forward(ctx, client_of, params, device, grad_enabled, refused, exact, names, *tensors):
        named = {k: v for k, v in zip(names, tensors) if v is not None}
        ctx.client_of, ctx.names, ctx.exact, ctx.backward_refused = client_of, names, exact, refused
        # needs_input_grad ignores no_grad(), so the caller's grad mode comes in as an argument.
        wants = {k for k, v in zip(names, tensors) if v is not None and v.requires_grad}
        record = grad_enabled and bool(wants) and refused is None
        if exact:
            layouts: dict = {}
            arrays = dict(pack(k, v, layouts) for k, v in named.items())
            params = dict(params, layouts=layouts, grad=sorted(wants) if record else [])
        else:
            arrays = {k: plain(v) for k, v in named.items()}
        ctx.call = next(_calls)
        c = client_of()
        _, out = c.request({"cmd": "forward", "params": params, "device": device, "record": record,
                            "call": ctx.call}, arrays)
        if record:  # when torch frees this node, the worker may drop its graph (told on the next request)
            weakref.finalize(ctx, c.to_release.append, ctx.call)
        got = unpack(out, device=tensors[0].device) if exact else {k: torch.from_numpy(v) for k, v in out.items()}
        for key, value in got.items():
            if key.startswith("mutated_"):  # the callable wrote to the caller's tensor: so do we
                with torch.no_grad():
                    named[key.removeprefix("mutated_")].data.copy_(value)
        return got["output"].to(tensors[0].device)

    @staticmethod
    def backward(ctx, grad):
        if ctx.backward_refused:
            raise RuntimeError(ctx.backward_refused)
        header = {"cmd": "backward", "call": ctx.call}
        if ctx.exact:  # the cotangent keeps its layout (expanded, transposed, channels-last): a backward may misread it
            layouts: dict = {}
            cot = dict([pack("cotangent", grad, layouts)])
            header["layouts"] = layouts
        else:
            cot = {"cotangent": plain(grad)}
        _, grads = ctx.client_of().request(header, cot)
        got = unpack(grads, device=grad.device) if ctx.exact else {k: torch.from_numpy(v) for k, v in grads.items()}

        def g(name):
            t = got.get(f"grad_{name}")
            return None if t is None else t.to(grad.device)

        return (None,) * 7 + tuple(g(name) for name in ctx.names)
