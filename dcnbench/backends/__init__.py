"""Backends: the one interface (`Backend`) and the registry that finds them.

Each in-tree backend is one module (or package) here exposing `backend() -> Backend`: `pytorch`
(the operators' oracles run as a backend), `torchvision`, `mxnet` and `paddle` (own environments,
worker processes), `onnxruntime` (an ONNX DeformConv graph), `openvino` and `openvino-default` (OpenVINO's CPU
plugin with and without the paper's border rule), `ext` (dcnbench's C++/CUDA kernels),
`ext-cuda-emu` (ext's CUDA kernels emulated on the CPU, `ext.emu`), `transformers` (its eager multi-scale
deformable attention), and the reference rows `conv2d`, `roi_align` and `grid_sample`.
The registry knows these by name, adds installed packages' entry points (group
`dcnbench.backends`), and takes `--impl` plugins from the caller; the CLI never names a backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from dcnbench.errors import BackendUnavailable, UsageError

ENTRY_POINT_GROUP = "dcnbench.backends"
ALL_DTYPES = ("float64", "float32", "float16", "bfloat16")

# In-tree backend modules under dcnbench.backends, in display order.
BUILTIN_MODULES = ("pytorch", "torchvision", "mxnet", "paddle", "onnxruntime", "openvino", "openvino.default", "ext",
                   "ext.emu", "conv2d", "roi_align", "transformers", "grid_sample")


class Reason(str):
    """Why a backend cannot run here (`Backend.unavailable`, or what `check()` returns): the text,
    the fix when it is not `dcnbench backends`' to tell (`hint`), and whether a setting the user made
    is at fault (`setting`: a variable pointing nowhere). `dcnbench backends` lists such a backend
    as unavailable; a command that would run it stops before any work (exit 2) instead of skipping it."""

    hint: str | None
    setting: bool

    def __new__(cls, text: str, hint: str | None = None, setting: bool = False):
        reason = super().__new__(cls, text)
        reason.hint, reason.setting = hint, setting
        return reason


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    ops: Mapping[str, Callable]
    # dtypes the backend runs, per device; a device missing here is unsupported.
    dtypes: Mapping[str, tuple[str, ...]]
    # Why a dtype, device or op is missing, e.g. {"bfloat16": "torchvision has no bfloat16 kernel"};
    # "export": why its kernel has no torch graph for the ONNX export check to trace.
    unsupported_reasons: Mapping[str, str] = field(default_factory=dict)
    version: str | None = None
    # "deformable": verified and timed. "reference": timed only (plain conv2d ignores offsets).
    # "emulated": runs only when named (--backend): a test vehicle (ext's CUDA kernels on the CPU), slow.
    # "variant": runs only when named: another setting of a backend that runs by default (openvino-default).
    kind: str = "deformable"
    origin: str = "builtin"
    unavailable: str | None = None  # the reason it cannot run here; None when it can
    # Boundary rule per variant ("v1"/"v2") where it is not the paper's rule Z (DCN.md), e.g. {"v1": "C"}.
    dialects: Mapping[str, str] = field(default_factory=dict)
    # (case, device) -> why the backward is not implemented for this case there, or None.
    backward_unsupported: Callable[[object, str], str | None] | None = None
    # (geometry, device) -> why this whole workload cannot run (a known crash, a size limit), or None.
    workload_unsupported: Callable[[object, str], str | None] | None = None
    # (case, device) -> why it does not run this verify case although it runs its workload (a
    # measured deviation it is known for, stated instead of failing every run), or None.
    case_unsupported: Callable[[object, str], str | None] | None = None
    # A deeper availability check (e.g. starting a worker), run only for backends a command uses.
    check: Callable[[], str | None] | None = None
    # For out-of-process backends that time themselves: (case, direction, device) -> object with
    # sample() -> ms and peak_bytes() -> (bytes | None, note).
    self_timed: Callable | None = None
    # One line on the environment the backend runs in (shown by `dcnbench backends`).
    environment: Callable[[], str] | None = None
    # device -> the kernel mode that runs there (e.g. deterministic or atomic backward), shown by `verify`.
    mode: Callable[[str], str] | None = None
    # (op, geometry) -> images per internal batch chunk, for a backend that processes the batch in
    # chunks (None where it does not): the suite must hold a batch one image past a chunk.
    batch_chunk: Callable[[str, object], int | None] | None = None
    # Settings that must not change its results (dcnbench.checking.knobs), besides the thread count every
    # in-process backend has; `verify --knobs` checks them. device -> knobs.
    knobs: Callable[[str], tuple] | None = None
    # device -> whether its results are bitwise independent of the thread count (a claim verify
    # --knobs holds it to).
    thread_invariant: Callable[[str], bool] | None = None
    # () -> {custom op overload: onnxscript function}: how torch.onnx.export translates the
    # backend's own torch ops (e.g. ext's) for the export check.
    onnx_translations: Callable[[], Mapping] | None = None
    # (case) -> (output, note): the export check run where the kernel lives (an isolated backend's
    # worker); None runs it in this process.
    onnx_exporter: Callable | None = None
    # The WorkerClient serving an isolated backend (--impl, --isolate); None when it runs in this process.
    worker: object | None = None

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.dtypes)

    @property
    def in_worker(self) -> bool:
        """Whether its kernels run in a worker process (its own environment's, or isolated): such a
        backend times its samples there (`self_timed`)."""
        return self.self_timed is not None

    def dialect(self, case) -> str:
        """The boundary rule this backend samples the case's variant with (DCN.md; "Z" is the paper's)."""
        return self.dialects.get(case.variant, "Z")

    def support(self, op: str, device: str, dtype: str, geometry=None) -> str | None:
        """None when the backend runs this combination, else the reason it does not."""
        if self.workload_unsupported and geometry is not None:
            reason = self.workload_unsupported(geometry, device)
            if reason:
                return reason
        if self.unavailable:
            return self.unavailable
        if op not in self.ops:
            return self.unsupported_reasons.get(op, f"{self.name} has no {op}")
        if device not in self.dtypes:
            return self.unsupported_reasons.get(device, f"{self.name} does not run on {device}")
        if dtype not in self.dtypes[device]:
            return self.unsupported_reasons.get(dtype, f"{self.name} has no {dtype} kernel on {device}")
        return None


def local_devices(dtypes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The dtype table of an in-process backend: the CPU, and CUDA where torch sees a GPU."""
    import torch

    return {"cpu": dtypes, "cuda": dtypes} if torch.cuda.is_available() else {"cpu": dtypes}


def runs_in_a_worker(framework: str) -> str:
    """Why a backend whose kernel runs in another process has no ONNX export check."""
    return (f"{framework}'s kernel runs in a worker process on numpy arrays: there is no torch graph "
            "for torch.onnx.export to trace")


def filters_per_offset_group(kernel: str, geometry) -> str | None:
    """Why `kernel` cannot run a deform_conv2d whose output channels the deformable groups do not
    divide: it requires O % offset_groups == 0, the operator does not (found by `verify --fuzz`;
    measured: paddle refuses it for DCNv1 and DCNv2, MXNet for DCNv2 only)."""
    from dcnbench.ops.deform_conv2d.contract import ConvGeometry

    if isinstance(geometry, ConvGeometry) and geometry.o % geometry.offset_groups:
        return (f"{kernel} requires the output channels to be a multiple of the deformable groups; "
                "the operator does not")
    return None


def unavailable_backend(name: str, reason: str, origin: str = "builtin") -> Backend:
    return Backend(name=name, description="", ops={}, dtypes={}, origin=origin, unavailable=reason)


def _load_builtin(module: str) -> Backend:
    try:
        mod = importlib.import_module(f"dcnbench.backends.{module}")
        return mod.backend()
    except ImportError as exc:  # an optional dependency is missing: say so, do not crash
        return unavailable_backend(module, f"cannot import: {exc}")


def _load_entry_points() -> list[Backend]:
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            backend = obj() if callable(obj) and not isinstance(obj, Backend) else obj
            if not isinstance(backend, Backend):
                raise TypeError(f"{ep.value} gave {type(backend).__name__}, expected dcnbench.backends.Backend")
            found.append(backend)
        except Exception as exc:  # a broken third-party package must not take the tool down
            found.append(unavailable_backend(ep.name, f"entry point {ep.value} failed: {exc}", origin="entry-point"))
    return found


def all_backends() -> list[Backend]:
    """Every backend this installation knows, available or not."""
    backends = [_load_builtin(m) for m in BUILTIN_MODULES]
    names = {b.name for b in backends}
    backends += [b for b in _load_entry_points() if b.name not in names]
    return backends


def select(names: list[str] | None, plugins: list[Backend], kinds: tuple[str, ...]) -> tuple[list[Backend], list[str]]:
    """The backends a command runs, and a note for each default backend skipped.

    Named backends must exist and be available (exit 2 otherwise). With no names, every
    available backend of the given kinds runs, unless plugins were given: then only they run.
    """
    known = {b.name: b for b in all_backends()}
    for p in plugins:
        if p.name in known:
            raise UsageError(f"plugin name '{p.name}' clashes with a registered backend",
                             hint=f"name it: --impl myname={p.description}")
        known[p.name] = p
    if names:
        chosen = []
        for name in names:
            if name not in known:
                raise UsageError(f"unknown backend '{name}'", hint=f"choose from: {', '.join(sorted(known))}")
            backend = known[name]
            reason = backend.unavailable or (backend.check() if backend.check else None)
            if reason:
                raise BackendUnavailable(f"backend '{name}' is unavailable: {reason}", hint=_fix(reason))
            chosen.append(backend)
        return chosen + [p for p in plugins if p.name not in names], []
    if plugins:
        return list(plugins), []
    chosen, skipped = [], []
    for b in known.values():
        if b.kind not in kinds:
            continue
        reason = b.unavailable or (b.check() if b.check else None)
        if getattr(reason, "setting", False):  # the user's own setting is broken: say so rather than skip
            raise BackendUnavailable(f"backend '{b.name}' cannot run: {reason}", hint=_fix(reason))
        if reason:
            skipped.append(f"skipping {b.name}: {reason}")
        else:
            chosen.append(b)
    return chosen, skipped


def _fix(reason: str) -> str:
    return getattr(reason, "hint", None) or "run `dcnbench backends` to see what is installed and how to fix it"


def get(name: str) -> Backend:
    for b in all_backends():
        if b.name == name:
            return b
    raise UsageError(f"unknown backend '{name}'")
