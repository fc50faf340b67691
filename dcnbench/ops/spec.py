"""`OpSpec`: everything the stages (verify, speed, gate, report, plugins, CLI) need to know about
one operator, in one record. Stages loop over the registry of these and never name an operator.

A spec must be cheap to build: `dcnbench --help` lists operators and presets without importing
torch. So anything heavy (cases, oracles, references) is a callable that imports its module on
first use (`lazy`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


def lazy(target: str) -> Callable:
    """`"package.module:function"` (or `"package.module:Class.method"`) as a callable that imports
    the module on its first call."""
    module, _, name = target.partition(":")

    def resolve() -> Callable:
        found = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
        return found

    def call(*args, **kwargs):
        return resolve()(*args, **kwargs)

    # Code that must see the function itself (torch.compile cannot trace an import) resolves it.
    call.resolve = resolve
    call.__qualname__ = call.__name__ = name
    call.__doc__ = f"{target}, imported on first call"
    return call


def resolved(fn: Callable) -> Callable:
    """The function a `lazy` callable stands for (imported now), or `fn` itself."""
    return fn.resolve() if hasattr(fn, "resolve") else fn


@dataclass(frozen=True)
class Reference:
    """What a case's `check` compares against: `make(case)` returns a callable with the op's
    signature (run in float64 on the CPU), and `quantities` the outputs/gradients it defines."""

    make: Callable
    quantities: tuple[str, ...]


@dataclass(frozen=True)
class OpSpec:
    name: str
    summary: str
    signature: str  # the call every backend receives, e.g. "(input, offset, weight, bias=None, ...)"
    returns: str  # the output's shape, e.g. "(N, O, Ho, Wo)"
    # The shape grammar of `speed --shape` (and presets), with an example, and its parser.
    shape_grammar: str
    shape_example: str
    parse_shape: Callable  # (text) -> geometry; raises UsageError
    geometry_type: type  # the frozen geometry dataclass (from_dict reads a record's back)
    # Named workloads: preset name -> shapes in this op's grammar. A name may appear in several
    # ops (a preset that times two operators on one map).
    presets: Mapping[str, tuple[str, ...]]
    default_preset: str
    suite: Callable  # (seed) -> list of cases: the default verification suite
    differentiable: tuple[str, ...]  # the arguments with a gradient, in display order
    case_from_dict: Callable  # a case's `definition()` (a results record's `case`) -> the case
    oracle: Callable  # the float64 reference implementation, the op's signature
    # check name -> Reference, for checks other than "oracle" (identities).
    references: Mapping[str, Reference] = field(default_factory=dict)
    # Boundary rules the oracle implements besides the paper's "Z" (passed as `rule=`), and the
    # outputs where they can differ from rule Z: (case, inputs) -> bool mask broadcastable to the output.
    rules: tuple[str, ...] = ("Z",)
    band_outputs: Callable | None = None
    speed_case: Callable | None = None  # (SpeedCase) -> the case whose inputs every backend is timed on
    probe_cases: Callable | None = None  # (dtype) -> tiny cases a --impl plugin must pass before it runs
    flops: Callable = lambda geometry: None  # forward FLOPs of the equivalent plain layer; None if meaningless
    # (geometry, direction, itemsize, mask) -> (FLOPs, bytes): the least one call must compute and
    # move, the roofline's inputs (dcnbench.timing.roofline); None where the work depends on values (RoIs).
    work: Callable | None = None
    cost: Callable | None = None  # (case) -> limits.Cost: what one call needs, estimated before it runs
    fuzz: Callable | None = None  # () -> a hypothesis strategy of small valid float64 cases (verify --fuzz)
    # Tensors `speed` may read from files instead of drawing them (e.g. ("rois", "offset")), the
    # workload adjusted to them, and their validation.
    file_inputs: tuple[str, ...] = ()
    geometry_for_files: Callable | None = None  # (geometry, {name: path}) -> geometry
    check_files: Callable | None = None  # (case) -> None; raises UsageError
    # The ONNX export check (onnx_export.py): (case, callable) -> (torch.nn.Module around the
    # callable, its call's arguments), for the cases whose `check` is "export"; None: no such check.
    export_layer: Callable | None = None
    # () -> covering.Options: the op's options and their values, crossed pairwise (all triples with
    # `verify --thorough`) into covering-array cases on asymmetric geometry (covering.py); None: none.
    options: Callable | None = None

    @property
    def quantities(self) -> tuple[str, ...]:
        """The output and the gradient of every differentiable argument, in display order."""
        return ("output",) + tuple(f"grad_{a}" for a in self.differentiable)
