"""`--impl [NAME=]PATH.py:FUNC`: any callable with one op's signature as a backend.

The op is the callable's `dcnbench_op` attribute if it has one (any registered operator's name),
else the single `--op` the command was given, else deform_conv2d (torchvision's signature). The
file is imported once, and the callable is probed on the op's tiny probe cases so a broken plugin
is one clear error (exit 2) before any case runs. A callable may declare
`dcnbench_dtypes = ("float32",)` to limit the dtypes it is asked to run.

With `isolate` (the CLI's default) the file is imported, and the callable called, in a worker
process (dcnbench/worker/isolation.py): a plugin that crashes, hangs or exits costs the case it
was running, not the run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import torch

from dcnbench import ops
from dcnbench.backends import ALL_DTYPES, Backend
from dcnbench.errors import DcnbenchError, PluginError
from dcnbench.worker.client import RemoteError, WorkerError

DEFAULT_OP = "deform_conv2d"
IMPL_GRAMMAR = "[NAME=]PATH.py:FUNC"


def parse_impl(spec: str) -> tuple[str | None, Path, str]:
    name, eq, rest = spec.partition("=")
    if not eq:
        name, rest = None, spec
    path, colon, func = rest.rpartition(":")
    if not colon or not path or not func or not func.isidentifier():
        raise PluginError(f"malformed --impl '{spec}'", hint=f"write {IMPL_GRAMMAR}, e.g. --impl mine=kernels.py:deform_conv2d")
    if name is not None and not name.strip():
        raise PluginError(f"malformed --impl '{spec}': empty NAME", hint=f"write {IMPL_GRAMMAR}")
    return name, Path(path), func


def _exists(path: Path) -> None:
    if not path.is_file():
        raise PluginError(f"plugin file '{path}' does not exist", hint="check the path in --impl PATH.py:FUNC")


def import_file(path: Path, module_prefix: str, error: type[DcnbenchError], what: str):
    """The module of a user's .py file (a plugin, a model factory), imported under a name of its own;
    anything that stops the import is `error`, one line and a hint, never a traceback or an exit."""
    module_name = module_prefix + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise error(f"{what}'{path}' is not a Python module", hint="give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # so it can import its sibling modules
    # Registered while it runs, as an import would: dataclasses look their module up in sys.modules.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        sys.modules.pop(module_name, None)
        raise error(f"{what}'{path}' called sys.exit({exc.code!r}) while it was imported",
                    hint="guard the script part of the file with `if __name__ == \"__main__\":`") from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise error(f"{what}'{path}' does not import: {type(exc).__name__}: {exc}",
                    hint=f"run `python {path}` to see the full traceback") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _import(path: Path):
    _exists(path)
    return import_file(path, "dcnbench_plugin_", PluginError, "plugin file ")


def load_plugin(spec: str, device: str = "cpu", probe: bool = True, op: str | None = None,
                isolate: bool = False) -> Backend:
    name, path, func_name = parse_impl(spec)
    # An operator registered at run time (by the caller's code, not dcnbench's) is unknown to a
    # fresh worker process: where the plugin may be one of such an operator's, it runs here.
    runtime_ops = [n for n in ops.names() if not ops.is_builtin(n)]
    if isolate and not (op in runtime_ops or (op is None and runtime_ops)):
        _exists(path)
        from dcnbench.worker import isolation

        backend = isolation.plugin_backend(spec, name, f"{path}:{func_name}", op)
        if probe:
            try:
                probe_backend(backend, spec, device, next(iter(backend.ops)))
            except PluginError:
                isolation.close(backend)
                raise
        return backend
    module = _import(path)
    func = getattr(module, func_name, None)
    if func is None:
        raise PluginError(f"plugin file '{path}' has no '{func_name}'",
                          hint=f"define {func_name}{ops.get(op or DEFAULT_OP).signature} in it")
    if not callable(func):
        raise PluginError(f"'{func_name}' in '{path}' is not callable", hint="point --impl at a function")
    backend = callable_backend(func, name=name or func_name, description=f"{path}:{func_name}", op=op,
                               version=getattr(module, "__version__", None))
    if probe:
        probe_backend(backend, spec, device, next(iter(backend.ops)))
    return backend


def callable_backend(func, *, name: str, description: str, op: str | None = None, version: str | None = None) -> Backend:
    """A callable with one op's signature as a backend (its `dcnbench_op` and `dcnbench_dtypes` honoured)."""
    op = getattr(func, "dcnbench_op", None) or op or DEFAULT_OP
    if op not in ops.names():
        raise PluginError(f"'{description}' declares dcnbench_op = {op!r}", hint=f"use one of: {', '.join(ops.names())}")
    dtypes = getattr(func, "dcnbench_dtypes", ALL_DTYPES)
    if isinstance(dtypes, str) or not isinstance(dtypes, (tuple, list)) or not dtypes or not set(dtypes) <= set(ALL_DTYPES):
        raise PluginError(f"'{description}' declares dcnbench_dtypes = {dtypes!r}",
                          hint=f"declare a non-empty tuple of: {', '.join(ALL_DTYPES)}")
    dtypes = tuple(dtypes)
    return Backend(name=name, description=description, ops={op: func}, dtypes={"cpu": dtypes, "cuda": dtypes},
                   version=version, origin="plugin")


def probe_backend(backend: Backend, impl: str, device: str, op: str) -> None:
    """One tiny call per variant; the plugin is broken if none gives a finite, right-shaped tensor."""
    dtype = "float32" if "float32" in backend.dtypes[device] else backend.dtypes[device][0]
    problem = None
    spec = ops.get(op)
    for case in spec.probe_cases(dtype):
        inputs = case.inputs(device)
        try:
            out = case.call(backend.ops[op], inputs)
        except WorkerError as exc:  # from an isolated plugin: its own error, or how its worker died
            problem = problem or (f"raised {exc.error}" if isinstance(exc, RemoteError) else str(exc))
            if not isinstance(exc, RemoteError):
                break
            continue
        except Exception as exc:
            problem = problem or f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            continue
        except SystemExit as exc:  # in this process (--in-process): its exit must not become dcnbench's
            problem = f"called sys.exit({exc.code!r})"
            break
        if not isinstance(out, torch.Tensor):
            problem = f"returned {type(out).__name__}, expected a torch.Tensor"
        elif tuple(out.shape) != case.output_shape:
            problem = (f"returned shape {tuple(out.shape)} for an input of shape {tuple(next(iter(inputs.values())).shape)}, "
                       f"expected {case.output_shape}")
        elif not bool(torch.isfinite(out).all()):
            problem = "returned NaN or infinity on finite inputs"
        else:
            return
        break
    raise PluginError(f"plugin '{impl}' failed its probe call as {op}: {problem}",
                      hint=f"it must accept {op}{spec.signature} and return {spec.returns} "
                           "(set `dcnbench_op` on the function or pass --op for another op); call it by hand to debug")


def load_plugins(specs: list[str] | None, device: str = "cpu", op: str | None = None,
                 isolate: bool = False) -> list[Backend]:
    return [load_plugin(s, device, op=op, isolate=isolate) for s in specs or []]
