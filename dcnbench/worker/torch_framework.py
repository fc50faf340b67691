"""A torch callable behind the generic worker: an --impl plugin, or any in-process backend under --isolate.

Loaded by main.py in dcnbench's own interpreter (the worker imports dcnbench from `config["root"]`).
`config` names what to serve: `{"impl": "[NAME=]PATH.py:FUNC", "op": ...}`, `{"backend": NAME}`, or
`{}` for an export worker, which exports whichever built-in each request names.
A call's tensors arrive with their dtype, strides and storage span (bridge.pack); the callable
runs on them exactly as it would in dcnbench's process; a tensor it changed in place goes back
(`mutated_<name>`), and so does every gradient a recorded call's backward produces.
"""

import sys

NAME = "torch"
EXTRA_COMMANDS = ("export", "export_check")
_backend = None
_model = None  # export-check's (module, inputs), made by the factory in hello


def hello(threads, config):
    global _backend
    sys.path.insert(0, config["root"])
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    found = {"versions": {"torch": torch.__version__, "numpy": np.__version__}, "gpus": torch.cuda.device_count()}
    if config.get("factory"):
        global _model
        _model = _made_by(config["factory"])
        return found
    if config.get("impl"):
        from dcnbench.plugins import load_plugin

        _backend = load_plugin(config["impl"], probe=False, op=config.get("op"))
    elif config.get("backend"):
        _backend = _builtin(config["backend"])
    else:
        return found  # an export worker: each request names its backend
    return dict(found, backend={"name": _backend.name, "ops": list(_backend.ops), "version": _backend.version,
                                "dtypes": {device: list(d) for device, d in _backend.dtypes.items()}})


_builtins: dict = {}


def _builtin(name):
    """A registered backend by name, checked once (for an export worker, each request may name another)."""
    if name not in _builtins:
        from dcnbench.backends import get

        backend = get(name)
        reason = backend.unavailable or (backend.check() if backend.check else None)
        if reason:
            raise RuntimeError(reason)
        _builtins[name] = backend
    return _builtins[name]


def _decode(value, tensors):
    if isinstance(value, dict) and "tensor" in value:
        return tensors[value["tensor"]]
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_decode(v, tensors) for v in value["tuple"])
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def call(params, arrays, device, record):
    import torch

    from dcnbench.worker.bridge import pack, unpack

    tensors = unpack(arrays, params.get("layouts"), device)
    for name in params.get("grad", []):
        tensors[name].requires_grad_(True)
    before = {name: t.detach().clone() for name, t in tensors.items()}
    args = [_decode(a, tensors) for a in params["args"]]
    kwargs = {k: _decode(v, tensors) for k, v in params["kwargs"].items()}
    with torch.set_grad_enabled(record):
        out = _backend.ops[params["op"]](*args, **kwargs)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"returned {type(out).__name__}, expected a torch.Tensor")
    found = dict([pack("output", out)])
    for name, t in tensors.items():
        if not torch.equal(t.detach(), before[name]):
            found.update([pack(f"mutated_{name}", t)])
    return found, ((tensors, out) if record else None)


def backward(handle, arrays, layouts=None):
    from dcnbench.worker.bridge import pack, unpack

    tensors, out = handle
    if not out.requires_grad:  # the callable cut the graph: no gradient reaches any input
        return {}
    leaves = {name: t for name, t in tensors.items() if t.requires_grad}
    for t in leaves.values():
        t.grad = None
    out.backward(unpack(arrays, layouts, device=out.device.type)["cotangent"].to(out.device), retain_graph=True)
    return dict(pack(f"grad_{name}", t.grad) for name, t in leaves.items() if t.grad is not None)


def _case(params):
    from dcnbench import ops

    return ops.get(params["op"]).case_from_dict(params["case"])


def time(params, arrays, direction, device):
    """The same (setup, timed) pair as an in-process backend gets (speed.make_call), on the same seeded case."""
    import torch

    from dcnbench.timing.speed import make_call

    setup, run = make_call(_backend, _case(params), direction, device)
    if device != "cuda":
        return setup, run

    def synced(fn):
        def wrapped():
            fn()
            torch.cuda.synchronize()
        return wrapped

    return synced(setup), synced(run)


def export(header, arrays):
    """The ONNX export check of one case, run here where the callable lives (dcnbench/checking/onnx_export.py)."""
    from dcnbench.checking.onnx_export import NotExportable, run_exported
    from dcnbench.worker.bridge import pack

    params = header["params"]
    backend = _builtin(params["backend"]) if params.get("backend") else _backend
    try:
        output, note = run_exported(backend, _case(params))
    except NotExportable as exc:
        return {"unsupported": str(exc)}, {}
    return {"note": note}, dict([pack("output", output)])


def _made_by(factory):
    """(module, inputs) from export-check's PATH.py:FACTORY; its own errors keep their message and hint."""
    from dcnbench.checking.export_check import load_factory, made_by

    return made_by(load_factory(factory))  # UsageError (message and hint) for a factory that exits or raises


def export_check(header, arrays):
    """`dcnbench export-check` on the factory's model, here (dcnbench/checking/export_check.py: check_module)."""
    from dcnbench.checking.export_check import check_module

    params = header["params"]
    translations = {}
    for name in params.get("backends", []):
        translations.update(_builtin(name).onnx_translations())
    module, inputs = _model
    found = check_module(module, inputs, translations, params.get("rtol"), params.get("onnx"))
    return {"check": found.to_dict()}, {}


def one_line(exc):
    """dcnbench's own errors (a plugin that does not load) by their message; anything else by type and first line."""
    message = getattr(exc, "message", None)
    if message:
        return message
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
