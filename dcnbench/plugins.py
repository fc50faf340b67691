"""`--impl [NAME=]PATH.py:FUNC`: any callable with torchvision's deform_conv2d signature as a backend.

The file is imported once, and the callable is probed on a tiny call so a broken plugin is one
clear error (exit 2) before any case runs. A callable may declare `dcnbench_dtypes = ("float32",)`
to limit the dtypes it is asked to run; otherwise every dtype is tried.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import torch

from dcnbench.errors import PluginError
from dcnbench.ops import OP_DEFORM_CONV2D, ConvGeometry
from dcnbench.registry import ALL_DTYPES, Backend

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


def _import(path: Path):
    if not path.is_file():
        raise PluginError(f"plugin file '{path}' does not exist", hint="check the path in --impl PATH.py:FUNC")
    module_name = "dcnbench_plugin_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file '{path}' is not a Python module", hint="give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # so a plugin can import its sibling modules
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PluginError(f"plugin file '{path}' does not import: {type(exc).__name__}: {exc}",
                          hint=f"run `python {path}` to see the full traceback") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def load_plugin(spec: str, device: str = "cpu", probe: bool = True) -> Backend:
    name, path, func_name = parse_impl(spec)
    module = _import(path)
    func = getattr(module, func_name, None)
    if func is None:
        raise PluginError(f"plugin file '{path}' has no '{func_name}'", hint=f"define {func_name}(input, offset, weight, bias=None, "
                          "stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None) in it")
    if not callable(func):
        raise PluginError(f"'{func_name}' in '{path}' is not callable", hint="point --impl at a function")
    dtypes = tuple(getattr(func, "dcnbench_dtypes", ALL_DTYPES))
    backend = Backend(
        name=name or func_name,
        description=f"{path}:{func_name}",
        ops={OP_DEFORM_CONV2D: func},
        dtypes={"cpu": dtypes, "cuda": dtypes},
        version=getattr(module, "__version__", None),
        origin="plugin",
    )
    if probe:
        _probe(backend, spec, device)
    return backend


def _probe(backend: Backend, spec: str, device: str) -> None:
    """One tiny call per mask setting; the plugin is broken if neither gives a finite, right-shaped tensor."""
    from dcnbench.verify import _call  # the same call verification makes
    from dcnbench.workloads import ConvCase, make_inputs

    dtype = "float32" if "float32" in backend.dtypes[device] else backend.dtypes[device][0]
    geo = ConvGeometry(n=1, c=2, h=5, w=6, o=3, kh=3, kw=3, padding=(1, 1))  # output shape != input shape
    problem = None
    for mask in (True, False):
        case = ConvCase(name="probe", geometry=geo, mask=mask, dtype=dtype)
        try:
            out = _call(backend.ops[OP_DEFORM_CONV2D], case, make_inputs(case, device))
        except Exception as exc:
            problem = problem or f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            continue
        if not isinstance(out, torch.Tensor):
            problem = f"returned {type(out).__name__}, expected a torch.Tensor"
        elif tuple(out.shape) != geo.output_shape:
            problem = f"returned shape {tuple(out.shape)} for a {geo.n}x{geo.c}x{geo.h}x{geo.w} input, expected {geo.output_shape}"
        elif not bool(torch.isfinite(out).all()):
            problem = "returned NaN or infinity on finite inputs"
        else:
            return
        break
    raise PluginError(f"plugin '{spec}' failed its probe call: {problem}",
                      hint="it must accept torchvision.ops.deform_conv2d's arguments and return (N, O, Ho, Wo); "
                           "call it by hand to debug")


def load_plugins(specs: list[str] | None, device: str = "cpu") -> list[Backend]:
    return [load_plugin(s, device) for s in specs or []]
