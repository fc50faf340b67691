"""`--impl [NAME=]PATH.py:FUNC`: any callable with one op's signature as a backend.

The op is the callable's `dcnbench_op` attribute if it has one ("deform_conv2d",
"deform_roi_pool" or "deform_psroi_pool"), else the single `--op` the command was given, else
deform_conv2d (torchvision's signature). The file is imported once, and the callable is probed on
a tiny call so a broken plugin is one clear error (exit 2) before any case runs. A callable may
declare `dcnbench_dtypes = ("float32",)` to limit the dtypes it is asked to run.
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
from dcnbench.roi_ops import OP_DEFORM_PSROI_POOL, OP_DEFORM_ROI_POOL, PSRoIPoolGeometry, RoIPoolGeometry

OPS = (OP_DEFORM_CONV2D, OP_DEFORM_ROI_POOL, OP_DEFORM_PSROI_POOL)
SIGNATURES = {
    OP_DEFORM_CONV2D: "(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None)",
    OP_DEFORM_ROI_POOL: "(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1)",
    OP_DEFORM_PSROI_POOL: "(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0, "
                          "sample_per_part=1, trans_std=0.0, no_trans=False)",
}

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


def load_plugin(spec: str, device: str = "cpu", probe: bool = True, op: str | None = None) -> Backend:
    name, path, func_name = parse_impl(spec)
    module = _import(path)
    func = getattr(module, func_name, None)
    if func is None:
        raise PluginError(f"plugin file '{path}' has no '{func_name}'",
                          hint=f"define {func_name}{SIGNATURES[op or OP_DEFORM_CONV2D]} in it")
    if not callable(func):
        raise PluginError(f"'{func_name}' in '{path}' is not callable", hint="point --impl at a function")
    op = getattr(func, "dcnbench_op", None) or op or OP_DEFORM_CONV2D
    if op not in OPS:
        raise PluginError(f"'{func_name}' in '{path}' declares dcnbench_op = {op!r}", hint=f"use one of: {', '.join(OPS)}")
    dtypes = tuple(getattr(func, "dcnbench_dtypes", ALL_DTYPES))
    backend = Backend(
        name=name or func_name,
        description=f"{path}:{func_name}",
        ops={op: func},
        dtypes={"cpu": dtypes, "cuda": dtypes},
        version=getattr(module, "__version__", None),
        origin="plugin",
    )
    if probe:
        _probe(backend, spec, device, op)
    return backend


def _probe_cases(op: str, dtype: str) -> list:
    from dcnbench.roi_workloads import PoolCase
    from dcnbench.workloads import ConvCase

    if op == OP_DEFORM_CONV2D:
        geo = ConvGeometry(n=1, c=2, h=5, w=6, o=3, kh=3, kw=3, padding=(1, 1))  # output shape != input shape
        return [ConvCase(name="probe", geometry=geo, mask=mask, dtype=dtype) for mask in (True, False)]
    if op == OP_DEFORM_ROI_POOL:
        geo = RoIPoolGeometry(n=2, c=3, h=6, w=7, rois=4, output_size=(2, 3))
    else:
        geo = PSRoIPoolGeometry(n=2, c=2 * 9, h=6, w=7, rois=4, pooled_size=3, spatial_scale=1.0, sample_per_part=2,
                                group_size=3, part_size=3)
    return [PoolCase(name="probe", geometry=geo, dtype=dtype, rois="inside", kink_margin=None)]


def _probe(backend: Backend, spec: str, device: str, op: str) -> None:
    """One tiny call per variant; the plugin is broken if none gives a finite, right-shaped tensor."""
    dtype = "float32" if "float32" in backend.dtypes[device] else backend.dtypes[device][0]
    problem = None
    for case in _probe_cases(op, dtype):
        geo = case.geometry
        try:
            out = case.call(backend.ops[op], case.inputs(device))
        except Exception as exc:
            problem = problem or f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            continue
        if not isinstance(out, torch.Tensor):
            problem = f"returned {type(out).__name__}, expected a torch.Tensor"
        elif tuple(out.shape) != case.output_shape:
            problem = f"returned shape {tuple(out.shape)} for a {geo.n}x{geo.c}x{geo.h}x{geo.w} input, expected {geo.output_shape}"
        elif not bool(torch.isfinite(out).all()):
            problem = "returned NaN or infinity on finite inputs"
        else:
            return
        break
    raise PluginError(f"plugin '{spec}' failed its probe call as {op}: {problem}",
                      hint=f"it must accept {op}{SIGNATURES[op]} and return {_RETURNS[op]} "
                           "(set `dcnbench_op` on the function or pass --op for another op); call it by hand to debug")


_RETURNS = {OP_DEFORM_CONV2D: "(N, O, Ho, Wo)", OP_DEFORM_ROI_POOL: "(K, C, ph, pw)",
            OP_DEFORM_PSROI_POOL: "(K, output_dim, pooled, pooled)"}


def load_plugins(specs: list[str] | None, device: str = "cpu", op: str | None = None) -> list[Backend]:
    return [load_plugin(s, device, op=op) for s in specs or []]
