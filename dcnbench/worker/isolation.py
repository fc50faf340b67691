"""Isolation: an --impl plugin, or any in-process backend under --isolate, run in a worker process.

The worker is dcnbench's generic one (main.py) loading torch_framework.py in dcnbench's own
interpreter. Here a `Backend` stands for it: its ops send each call's tensors there (bridge.py,
no pickles) and return the output and, on backward, the gradients; `speed` samples are timed in
the worker (speed.make_call, the same seeded case); the export check runs there too. A call that
crashes the worker, hangs past the limit (`--timeout`, default DEFAULT_TIMEOUT_S) or makes it
exit becomes that case's `error` row, naming the cause; a fresh worker serves the next case.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from dcnbench.backends import Backend
from dcnbench.errors import PluginError
from dcnbench.worker.bridge import WorkerCall, unpack
from dcnbench.worker.client import PROJECT_ROOT, SelfTimed, StartError, WorkerClient, WorkerEnv, WorkerError

FRAMEWORK = Path(__file__).with_name("torch_framework.py")
# Seconds one call (or the worker's start-up) may take: verify's cases take milliseconds and a
# speed sample seconds, so a minute is a hang. --timeout changes it.
DEFAULT_TIMEOUT_S = 60.0


# An export of a user's whole model (torch.export, then onnxscript, then onnxruntime) takes far
# longer than one kernel call: minutes for a large model.
EXPORT_TIMEOUT_S = 600.0


def _env(label: str, config: dict, timeout_s: float = DEFAULT_TIMEOUT_S) -> WorkerEnv:
    noun = label if label.startswith("the ") else f"the worker running {label}"
    return WorkerEnv(name="isolated", label=label, framework=FRAMEWORK, framework_name="torch",
                     default_timeout_s=timeout_s, config=dict(config, root=str(PROJECT_ROOT)),
                     env_vars=False, noun=noun)


def _encode(value, names: list[str], tensors: list):
    """A call's argument as JSON, its tensors replaced by references to arrays sent beside it."""
    if isinstance(value, torch.Tensor):
        names.append(f"t{len(names)}")
        tensors.append(value)
        return {"tensor": names[-1]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, names, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, names, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot send a {type(value).__name__} argument to a worker process")


def _proxy(client_of, op: str):
    """A callable with the op's signature whose every call runs in the worker."""

    def call(*args, **kwargs):
        names: list[str] = []
        tensors: list = []
        params = {"op": op, "args": [_encode(a, names, tensors) for a in args],
                  "kwargs": {k: _encode(v, names, tensors) for k, v in kwargs.items()}}
        if not tensors:
            raise TypeError(f"{op} got no tensor argument")
        return WorkerCall.apply(client_of, params, tensors[0].device.type, torch.is_grad_enabled(), None, True,
                                tuple(names), *tensors)

    call.__name__ = call.__qualname__ = f"{op}_in_worker"
    return call


def _self_timed(client_of):
    def make(case, direction: str, device: str) -> SelfTimed:
        return SelfTimed(client_of, {"case": case.digest(), "params": {"op": case.op, "case": case.definition()},
                                     "device": device, "direction": direction})
    return make


def _exporter(client_of, backend_name: str | None = None):
    def run(case) -> tuple[torch.Tensor, str]:
        params = {"op": case.op, "case": case.definition(), "backend": backend_name}
        reply, out = client_of().request({"cmd": "export", "params": params})
        if reply.get("unsupported"):
            from dcnbench.errors import NotExportable

            raise NotExportable(reply["unsupported"])
        return unpack(out)["output"], reply.get("note", "")
    return run


def _in_worker(backend: Backend, client: WorkerClient) -> Backend:
    """`backend` with every op, its timing and its export check served by `client`'s worker."""

    def client_of() -> WorkerClient:
        return client

    return replace(backend, ops={op: _proxy(client_of, op) for op in backend.ops},
                   description=f"{backend.description} (in a worker process)".strip(),
                   self_timed=_self_timed(client_of), onnx_exporter=_exporter(client_of), check=None,
                   worker=client)


def isolate(backend: Backend) -> Backend:
    """An in-process backend moved into a worker (started on its first call); others are returned as they are."""
    if backend.in_worker or backend.unavailable or backend.worker is not None:
        return backend
    client = WorkerClient(_env(f"backend '{backend.name}'", {"backend": backend.name}), torch.get_num_threads())
    return _in_worker(backend, client)


def plugin_backend(spec: str, name: str | None, description: str, op: str | None) -> Backend:
    """An --impl plugin imported and served by a worker; its op, dtypes and version come from the worker's hello."""
    client = WorkerClient(_env(f"plugin '{spec}'", {"impl": spec, "op": op}), torch.get_num_threads())
    try:
        hello = client.start()
    except StartError as exc:  # the plugin did not load: the worker's own line, as in-process loading gives it
        client.close()
        raise PluginError(exc.error, hint=exc.hint or "call it by hand to see the full traceback") from None
    except WorkerError as exc:  # it hung or crashed while loading
        client.close()
        raise PluginError(f"plugin '{spec}' did not load: {exc}", hint=exc.hint or "call it by hand to debug") from None
    found = hello["backend"]
    template = Backend(name=name or found["name"], description=description, ops=dict.fromkeys(found["ops"]),
                       dtypes={device: tuple(d) for device, d in found["dtypes"].items()}, version=found["version"],
                       origin="plugin")
    return _in_worker(template, client)


_export_workers: dict[str, WorkerClient] = {}


def exporter(backend: Backend):
    """(case) -> (output, note): the ONNX export check of an in-process backend, run in a worker.

    torch.export runs the kernel's Python on fake tensors, and a kernel it cannot handle can crash
    it (one that writes to its input's .data segfaults torch 2.15's exporter), so even a backend
    that runs here is exported there: one worker per run for the built-ins, one per plugin.
    """
    if backend.origin == "plugin":  # an in-process plugin: its description is its PATH.py:FUNC
        key, config, name = backend.description, {"impl": backend.description, "op": next(iter(backend.ops))}, None
    else:
        key, config, name = "", {}, backend.name
    if key not in _export_workers:
        _export_workers[key] = WorkerClient(_env(f"the ONNX export of {key or 'the built-in backends'}", config),
                                            torch.get_num_threads())
    client = _export_workers[key]
    return _exporter(lambda: client, name)


def model_worker(factory: str) -> WorkerClient:
    """A worker that imports `export-check`'s PATH.py:FACTORY and builds the model in its hello (not
    started yet): a factory that exits, crashes or hangs costs that worker, not dcnbench."""
    return WorkerClient(_env(f"factory '{factory}'", {"factory": factory}, EXPORT_TIMEOUT_S), torch.get_num_threads())


def close(backend: Backend) -> None:
    """Stop an isolated backend's worker now (a plugin that failed its probe)."""
    if backend.worker is not None:
        backend.worker.close()
