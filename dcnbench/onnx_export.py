"""The ONNX export check: does the model a backend's kernel ends up in compute the same thing after
`torch.onnx.export(dynamo=True)` and onnxruntime?

For a case whose `check` is "export", the case's operator wraps the backend's callable in a small
module (its spec's `export_layer`), this module exports it (opset 19, with the backend's own
`onnx_translations` for custom ops), runs the ONNX model with onnxruntime's CPU provider on the
case's inputs and compares the output with the float64 oracle. An export that fails is
`unsupported`, with the exporter's one-line reason; a model onnxruntime refuses is an `error` row
with the runtime's message. `export_check` does the same for a user's own module. Nothing here
names an operator.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from dcnbench import ops
from dcnbench.ops.case import DTYPES
from dcnbench.status import Status
from dcnbench.verify import QuantityError

CHECK = "export"
OPSET = 19


class NotExportable(Exception):
    """torch.onnx.export could not export the module; the message is the exporter's own reason."""


class RuntimeRejected(Exception):
    """onnxruntime refused (or failed to run) the exported model; the message is the runtime's."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def exporter_reason(exc: BaseException) -> str:
    """The exporter's reason in one line: the line after its `## Exception summary`, else its first line."""
    text = _ANSI.sub("", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    summary = next((lines[i + 1] for i, ln in enumerate(lines[:-1]) if ln.startswith("## Exception summary")), None)
    reason = summary or (lines[0] if lines else type(exc).__name__)
    return re.sub(r"<class '(?:[\w.]*\.)?(\w+)'>:?", r"\1:", reason).replace("::", ":")


def export_model(module: torch.nn.Module, args: tuple, translations: dict | None = None):
    """The ONNX ModelProto of `module` called on `args`; NotExportable with the exporter's reason."""
    # The exporter reports progress on stdout and warns freely: neither belongs in dcnbench's output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, verbose=False,
                                        custom_translation_table=dict(translations or {}) or None)
        except Exception as exc:
            raise NotExportable(f"not exportable to ONNX: {exporter_reason(exc)}") from None
    return program.model_proto


def graph_summary(model) -> str:
    """What the exported graph is made of, e.g. "1 node: DeformConv" or "95 nodes: 20 Gather, ..."."""
    counts = Counter(node.op_type for node in model.graph.node)
    top = ", ".join(f"{n} {op}" if n > 1 else op for op, n in counts.most_common(6))
    more = ", ..." if len(counts) > 6 else ""
    total = sum(counts.values())
    return f"{total} node{'s' if total != 1 else ''}: {top}{more}"


def run_model(model, feeds: dict[str, np.ndarray], threads: int | None = None) -> list[np.ndarray]:
    """Run an ONNX model with onnxruntime's CPU provider; RuntimeRejected with the runtime's message."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 4  # its errors come back as exceptions; its own log would repeat them on stderr
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        missing = [n for n in names if n not in feeds]
        if missing:
            raise RuntimeRejected(f"the exported model wants inputs {missing} that the module's call does not have")
        return session.run(None, {n: feeds[n] for n in names})
    except RuntimeRejected:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise RuntimeRejected(f"onnxruntime refused the exported model: {text[0] if text else type(exc).__name__}") from None


def feeds_for(module: torch.nn.Module, args: tuple) -> dict[str, np.ndarray]:
    """The tensors of a call by the names the exporter gives graph inputs (the forward's parameter names)."""
    import inspect

    params = list(inspect.signature(module.forward).parameters)
    return {name: a.detach().cpu().contiguous().numpy() for name, a in zip(params, args) if isinstance(a, torch.Tensor)}


def run_exported(backend, case) -> tuple[torch.Tensor, str]:
    """The case's output computed by exporting the backend's kernel and running the model in onnxruntime."""
    module, args = ops.of(case).export_layer(case, backend.ops[case.op])
    translations = backend.onnx_translations() if backend.onnx_translations else {}
    model = export_model(module, args, translations)
    (out, *_) = run_model(model, feeds_for(module, args))
    return torch.from_numpy(np.array(out)), f"exported graph: {graph_summary(model)}"


def _exporter(backend):
    """Where the backend's export runs: its own worker (isolated), an export worker (in-process torch
    code: the exporter may crash on it), or here (a framework behind a worker: not torch code, the
    exporter refuses it at once)."""
    if backend.onnx_exporter is not None:
        return backend.onnx_exporter
    if backend.self_timed is not None:
        return lambda case: run_exported(backend, case)
    from dcnbench.worker.isolation import exporter

    return exporter(backend)


def verify_export(backend, case, device: str, ref_cache: dict):
    """One export case on one backend, as a VerifyResult (compared with the float64 oracle's output)."""
    from dcnbench.verify import VerifyResult, compare, dtype_checked, one_line, reference

    start = time.perf_counter()
    if device != "cpu":
        return VerifyResult(case, backend.name, Status.UNSUPPORTED,
                            message="the export check runs the exported model with onnxruntime's CPU provider")
    if ops.of(case).export_layer is None:
        return VerifyResult(case, backend.name, Status.UNSUPPORTED, message=f"{case.op} has no export check")
    try:
        output, note = _exporter(backend)(case)
    except (NotExportable, RuntimeRejected) as exc:
        status = Status.UNSUPPORTED if isinstance(exc, NotExportable) else Status.ERROR
        return VerifyResult(case, backend.name, status, message=str(exc), elapsed_s=time.perf_counter() - start)
    except Exception as exc:  # the kernel or the worker failed: an error row, and the run goes on
        return VerifyResult(case, backend.name, Status.ERROR, message=one_line(exc), elapsed_s=time.perf_counter() - start)
    if (case, "Z") not in ref_cache:
        ref_cache[(case, "Z")] = reference(case, "Z")
    ref, _ = ref_cache[(case, "Z")]
    err = dtype_checked(compare("output", output, ref.output, case.dtype), output, case.dtype)
    status = Status.PASS if err.ok else Status.FAIL
    return VerifyResult(case, backend.name, status, (err,), note, time.perf_counter() - start)



# ---- a user's own module: `dcnbench export-check MODULE.py:FACTORY` ---------------------------


@dataclass(frozen=True)
class OutputCheck:
    """One output of a user's module: the exported model's error and PyTorch's own, against float64 PyTorch."""

    index: int
    shape: tuple[int, ...]
    dtype: str
    onnx: QuantityError
    torch_rel_err: float | None  # the module itself, in its own dtype, against the float64 reference


@dataclass(frozen=True)
class ModuleCheck:
    status: Status  # pass, fail, unsupported (not exportable) or error (onnxruntime refused the model)
    message: str
    graph: str = ""
    outputs: tuple[OutputCheck, ...] = ()

    def to_dict(self) -> dict:
        """Plain JSON types, for the reply of the worker that ran the check."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModuleCheck":
        outputs = tuple(OutputCheck(**dict(o, shape=tuple(o["shape"]), onnx=QuantityError(**o["onnx"]))) for o in d["outputs"])
        return cls(Status(d["status"]), d["message"], d["graph"], outputs)


def check_factory_spec(spec: str):
    """(path, name) of `PATH.py:FACTORY`, the file existing; a usage error otherwise (before any worker)."""
    from pathlib import Path

    from dcnbench.errors import UsageError

    path_text, colon, name = spec.rpartition(":")
    if not colon or not path_text or not name.isidentifier():
        raise UsageError(f"malformed MODULE.py:FACTORY '{spec}'", hint="e.g. dcnbench export-check model.py:make")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"'{path}' does not exist", hint="give the path of a .py file that defines the factory")
    return path, name


def load_factory(spec: str):
    """`PATH.py:FACTORY` -> the factory callable; a usage error (exit 2) when it cannot be had."""
    import hashlib
    import importlib.util
    import sys
    from pathlib import Path

    from dcnbench.errors import UsageError

    path, name = check_factory_spec(spec)
    module_spec = importlib.util.spec_from_file_location(
        "dcnbench_export_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12], path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"'{path}' is not a Python module", hint="give a .py file")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.resolve().parent))  # so it can import its sibling modules
    # Registered while it runs, as an import would: dataclasses look their module up in sys.modules.
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    except SystemExit as exc:
        raise UsageError(f"'{path}' called sys.exit({exc.code!r}) while it was imported",
                         hint="guard the script part of the file with `if __name__ == \"__main__\":`") from None
    except Exception as exc:
        sys.modules.pop(module_spec.name, None)
        raise UsageError(f"'{path}' does not import: {type(exc).__name__}: {exc}",
                         hint=f"run `python {path}` to see the full traceback") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UsageError(f"'{path}' has no callable '{name}'",
                         hint="define a function returning (torch.nn.Module, sample input or tuple of inputs)")
    return factory


def made_by(factory) -> tuple[torch.nn.Module, tuple]:
    """What a factory returns, checked: (module, inputs as a tuple)."""
    from dcnbench.errors import UsageError

    hint = "return (torch.nn.Module, a tensor or a tuple of tensors) from the factory"
    try:
        made = factory()
    except SystemExit as exc:
        raise UsageError(f"the factory called sys.exit({exc.code!r})", hint=hint) from None
    except Exception as exc:
        raise UsageError(f"the factory raised {type(exc).__name__}: {exc}", hint=hint) from None
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module)):
        raise UsageError(f"the factory returned {type(made).__name__}, expected (module, inputs)", hint=hint)
    module, inputs = made
    inputs = inputs if isinstance(inputs, tuple) else tuple(inputs) if isinstance(inputs, list) else (inputs,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise UsageError("the factory's inputs are not all tensors", hint=hint)
    return module, tuple(t.detach().cpu() for t in inputs)


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flat(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _flat(item)]
    return []


def check_module(module: torch.nn.Module, inputs: tuple, translations: dict | None = None,
                 rtol: float | None = None, onnx_path=None) -> ModuleCheck:
    """Export `module` on `inputs`, run it in onnxruntime and compare every output with the module
    run in float64 by PyTorch (a copy: nothing the caller passed is changed)."""
    import copy

    from dcnbench.verify import compare, dtype_checked

    module = module.eval()
    reference = copy.deepcopy(module).to(torch.float64)
    try:
        with torch.no_grad():
            own = _flat(module(*inputs))
            ref = _flat(reference(*(t.double() if t.is_floating_point() else t for t in inputs)))
    except Exception as exc:
        from dcnbench.verify import one_line

        return ModuleCheck(Status.ERROR, f"the module raised on its sample inputs: {one_line(exc)}")
    # A float64 run that is not finite compares nothing there (NaN matches NaN): the check would pass
    # a model that computes nothing. It is a failure of the sample, said as such.
    bad = [(i, int((~r.isfinite()).sum())) for i, r in enumerate(ref) if r.is_floating_point() and not bool(r.isfinite().all())]
    if bad:
        where = ", ".join(f"output {i}: {n} of {ref[i].numel()}" for i, n in bad)
        return ModuleCheck(Status.FAIL, f"the module run in float64 by PyTorch gives NaN or infinity ({where}), so no "
                           "comparison can tell the exported model right from wrong; give the factory sample inputs "
                           "on which the module is finite")
    try:
        model = export_model(module, inputs, translations)
    except NotExportable as exc:
        return ModuleCheck(Status.UNSUPPORTED, str(exc))
    if onnx_path is not None:
        import onnx

        onnx.save(model, str(onnx_path))
    graph = graph_summary(model)
    try:
        got = run_model(model, feeds_for(module, inputs))
    except RuntimeRejected as exc:
        return ModuleCheck(Status.ERROR, str(exc), graph)
    if len(got) != len(ref):
        return ModuleCheck(Status.FAIL, f"the exported model has {len(got)} outputs, the module {len(ref)}", graph)
    checks = []
    for i, (g, r, o) in enumerate(zip(got, ref, own)):
        dtype = str(o.dtype).removeprefix("torch.")
        exported = torch.from_numpy(np.array(g))
        err = compare("output", exported, r, dtype if dtype in DTYPES else "float32")
        if dtype in DTYPES:
            err = dtype_checked(err, exported, dtype)
        if rtol is not None:  # another bound on the size; a failure that is not about size (dtype, NaN) stays one
            err = replace(err, tolerance=rtol, ok=bool(err.rel_err is not None and err.rel_err <= rtol)
                          and (err.ok or not err.note))
        mine = compare("output", o, r, dtype if dtype in DTYPES else "float32")
        checks.append(OutputCheck(i, tuple(o.shape), dtype, err, mine.rel_err))
    ok = all(c.onnx.ok for c in checks)
    notes = "; ".join(f"output {c.index}: {c.onnx.note}" for c in checks if not c.onnx.ok and c.onnx.note)
    return ModuleCheck(Status.PASS if ok else Status.FAIL, "" if ok else "the exported model computes something else"
                       + (f" ({notes})" if notes else ""), graph, tuple(checks))


def check_in_worker(factory: str, backends: list[str], rtol: float | None, onnx_path) -> ModuleCheck:
    """`check_module` on the model `factory` makes, both run in a worker process: a factory or a module
    that exits, crashes or hangs is a usage error while the model is made (exit 2) and an `error`
    afterwards (exit 1), one line each, never dcnbench's own exit."""
    from dcnbench.errors import UsageError
    from dcnbench.worker.client import StartError, WorkerError
    from dcnbench.worker.isolation import model_worker

    client = model_worker(factory)
    try:
        try:
            client.start()
        except StartError as exc:  # the factory did not import or did not give (module, inputs): its own line
            raise UsageError(exc.error, hint=exc.hint or f"run `python {factory.rpartition(':')[0]}` to see the traceback") from None
        except WorkerError as exc:  # it crashed or hung while making the model
            raise UsageError(f"the factory '{factory}' did not make a model: {exc}",
                             hint=exc.hint or "call the factory by hand to see what happens") from None
        params = {"backends": list(backends), "rtol": rtol, "onnx": None if onnx_path is None else str(onnx_path)}
        try:
            reply, _ = client.request({"cmd": "export_check", "params": params})
        except WorkerError as exc:
            return ModuleCheck(Status.ERROR, str(exc))
        return ModuleCheck.from_dict(reply["check"])
    finally:
        client.close()
