"""`dcnbench export-check MODULE.py:FACTORY`: a user's own module exported to ONNX, run in
onnxruntime and compared, output by output, with the module run in float64 by PyTorch (the
export machinery is onnx_export.py's; the comparison verify.py's)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from dcnbench.errors import NotExportable
from dcnbench.checking.onnx_export import RuntimeRejected, export_model, feeds_for, graph_summary, run_model
from dcnbench.ops.case import DTYPES
from dcnbench.status import Status
from dcnbench.checking.compare import QuantityError, compare, dtype_checked
from dcnbench.errors import one_line


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
    from dcnbench.errors import UsageError
    from dcnbench.plugins import import_file

    path, name = check_factory_spec(spec)
    module = import_file(path, "dcnbench_export_", UsageError, "")
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

    module = module.eval()
    reference = copy.deepcopy(module).to(torch.float64)
    try:
        with torch.no_grad():
            own = _flat(module(*inputs))
            ref = _flat(reference(*(t.double() if t.is_floating_point() else t for t in inputs)))
    except Exception as exc:
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
