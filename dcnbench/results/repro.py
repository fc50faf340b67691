"""Repro bundles: one failing case x backend, packed so that a kernel maintainer can re-run it.

`verify --save-failures DIR` writes, per failing result, two files with the same stem:

- `STEM.json`, human-readable: the operator and its signature, the exact call (positional and
  keyword arguments, tensors named), the case's full definition and seed, the dtype and device,
  the backend (and the `--impl` spec of a plugin), the status, the failing quantities with their
  errors and tolerances, the tolerances of every quantity, how the error is measured, the
  environment, and the command that re-runs it.
- `STEM.pt`, the same metadata under "meta" plus the tensors, loadable without dcnbench:
  `torch.load("STEM.pt", weights_only=True)` gives a dict of plain types and tensors:
  "inputs" (name -> the exact values the backend received, in the case's dtype; a case with
  `"contiguous": false` passed each one as a non-contiguous view of these values), "cotangent"
  (the gradient fed to backward), and "expected" (name -> the float64 reference output and
  gradients the result was compared with; empty for gradcheck cases).

`dcnbench repro STEM.pt` (or `STEM.json`) runs the same engine function `verify` runs
(`dcnbench.checking.verify.verify_case`) on that case, with the bundle's tensors, on the recorded backend or
on `--impl`, and prints every quantity against its tolerance.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import torch

from dcnbench import ops
from dcnbench.backends import Backend
from dcnbench.errors import ResultsFileError
from dcnbench.ops.case import Case, cotangent, noncontiguous
from dcnbench.checking.problems import FAILING
from dcnbench.checking.compare import TOLERANCES, tolerance
from dcnbench.checking.verify import VerifyResult, verify_case
from dcnbench.checking.runs import reference

FORMAT = "dcnbench-repro"
FORMAT_VERSION = 1
ERROR_MEASURE = ("normwise relative error ||got - expected||_2 / ||expected||_2, computed in float64 "
                 "(0 expected allows only 0); max abs is max |got - expected|")


# What repro reads from a bundle's meta.
META_KEYS = ("op", "case", "case_id", "check", "seed", "device", "backend", "status", "failing")


def stem(result: VerifyResult) -> str:
    """A file-name-safe name for one case x backend."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"{result.case.case_id}--{result.backend}").strip("-")


def call_record(case: Case, tensors: dict[str, torch.Tensor]) -> dict:
    """The exact call a backend receives for this case: positional and keyword arguments, tensors by name."""
    seen = {}

    def recorder(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    case.call(recorder, tensors)
    names = {id(t): k for k, t in tensors.items()}

    def plain(v):
        if isinstance(v, torch.Tensor):
            return {"tensor": names.get(id(v), "?")}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)

    return {"args": [plain(a) for a in seen["args"]], "kwargs": {k: plain(v) for k, v in seen["kwargs"].items()}}


def write_bundle(result: VerifyResult, directory: Path, *, device: str, env: dict, impl: str | None) -> Path:
    """Write STEM.pt and STEM.json for one failing result; returns the .pt path."""
    case = result.case
    spec = ops.of(case)
    inputs = case.inputs(device)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "op": case.op, "signature": f"{case.op}{spec.signature}",
        "call": call_record(case, inputs),
        "case_id": case.case_id, "case": json.loads(json.dumps(case.definition(), default=str)),
        "seed": case.seed, "dtype": case.dtype, "device": device, "contiguous": case.contiguous, "check": case.check,
        "backend": result.backend, "impl": impl,
        "status": str(result.status), "message": result.message,
        "failing": [_quantity(q) for q in result.failing],
        "quantities": [_quantity(q) for q in result.quantities],
        "tolerances": {q: tolerance(case.dtype, q) for q in spec.quantities} | {"by_dtype": TOLERANCES[case.dtype]},
        "error_measure": ERROR_MEASURE,
        "environment": env,
    }
    name = stem(result)
    pt, js = directory / f"{name}.pt", directory / f"{name}.json"
    meta["tensors_file"] = pt.name
    meta["command"] = repro_command(pt, impl)
    expected = {}
    if case.check != "gradcheck":
        run, _ = reference(case)
        expected = {"output": run.output} | {k: v for k, v in run.grads.items() if v is not None}
    # Plain JSON types only (torch's version is a str subclass), so weights_only loading accepts it.
    meta = json.loads(json.dumps(meta, default=str))
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta,
                "inputs": {k: v.detach().cpu().contiguous() for k, v in inputs.items()},
                "cotangent": cotangent(case).cpu(), "expected": {k: v.detach().cpu() for k, v in expected.items()}}, pt)
    js.write_text(json.dumps(meta, indent=1, default=str) + os.linesep)
    return pt


def _quantity(q) -> dict:
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(q).items()}


def repro_command(pt: Path, impl: str | None) -> str:
    return f"dcnbench repro {pt}" + (f" --impl '{impl}'" if impl else "")


def save_failures(results: list[VerifyResult], directory: Path, *, device: str, env: dict,
                  impls: dict[str, str]) -> list[Path]:
    """A bundle per failing case x backend; `impls` maps a plugin backend's name to its --impl spec."""
    return [write_bundle(r, directory, device=device, env=env, impl=impls.get(r.backend))
            for r in results if r.status in FAILING]


# ---- reading and re-running ------------------------------------------------------------------------


def load_bundle(path: Path) -> dict:
    """The bundle's .pt content ({"meta", "inputs", "cotangent", "expected"}) from STEM.pt or STEM.json."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ResultsFileError(f"cannot read repro bundle '{path}': {exc}", hint="give a .json or .pt file that "
                                   "`verify --save-failures` wrote") from None
        path = path.with_name(meta.get("tensors_file", path.with_suffix(".pt").name))
    try:
        bundle = torch.load(path, weights_only=True)
    except Exception as exc:  # a missing file, a torch.save of something else, a truncated file
        raise ResultsFileError(f"cannot read repro bundle '{path}': {type(exc).__name__}: {str(exc).splitlines()[0]}",
                               hint="give a .pt or .json file that `verify --save-failures` wrote") from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise ResultsFileError(f"'{path}' is not a dcnbench repro bundle", hint="give a file `verify --save-failures` wrote")
    if bundle.get("format_version") != FORMAT_VERSION:
        raise ResultsFileError(f"'{path}' is a repro bundle of format version {bundle.get('format_version')}, this dcnbench "
                               f"reads {FORMAT_VERSION}", hint="re-run `verify --save-failures` with this version")
    meta = bundle.get("meta")
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing or not isinstance(bundle.get("inputs"), dict):
        raise ResultsFileError(f"repro bundle '{path}' is damaged: no {', '.join(missing) or 'inputs'}",
                               hint="write it again with `verify --save-failures`")
    if meta["op"] not in ops.names():  # the bundle's fault, not the plugin's: say so before loading either
        raise ResultsFileError(f"repro bundle '{path}' is of operator '{meta['op']}', which this dcnbench does not know",
                               hint=f"this dcnbench knows {', '.join(ops.names())}: re-run it with the dcnbench (or the "
                                    "code registering the operator) that wrote it")
    return bundle


def stored_case(bundle: dict) -> tuple[Case, bool]:
    """The bundle's case, drawing exactly the bundle's tensors; and whether the seed alone draws them here too."""
    meta = bundle["meta"]
    case = ops.get(meta["op"]).case_from_dict(meta["case"])
    stored = bundle["inputs"]
    drawn = {k: v.detach().cpu().contiguous() for k, v in case.inputs("cpu").items()}
    same = drawn.keys() == stored.keys() and all(torch.equal(drawn[k], stored[k]) for k in stored) \
        and torch.equal(cotangent(case), bundle["cotangent"])

    class FromBundle(type(case)):
        """The same case (same id, geometry, seed, hash), whose inputs are the bundle's tensors."""

        def inputs(self, device: str = "cpu") -> dict[str, torch.Tensor]:
            return {k: v.to(device) if self.contiguous else noncontiguous(v.to(device)) for k, v in stored.items()}

    FromBundle.__name__ = FromBundle.__qualname__ = type(case).__name__
    return FromBundle(**{f.name: getattr(case, f.name) for f in fields(case)}), same


def rerun(case: Case, backend: Backend, device: str) -> VerifyResult:
    """The case (from `stored_case`) on `backend`, through verify's own engine function."""
    return verify_case(backend, case, device, {})


def quantity_lines(result: VerifyResult, fmt: Callable[[float | None], str]) -> list[tuple[str, str, str, str, str]]:
    """(quantity, rel err, max abs, tolerance, verdict) for every quantity checked."""
    failing = set(id(q) for q in result.failing)
    rows = []
    for q in result.quantities:
        verdict = "unsupported" if q.unsupported else ("FAIL" if id(q) in failing else ("ok" if q.ok else "differs"))
        label = q.quantity + ("" if q.reference in ("Z", "") else f" (vs {q.reference})")
        rows.append((label, fmt(q.rel_err), fmt(q.max_abs_err), f"{q.tolerance:.0e}", verdict + (f": {q.note}" if q.note else "")))
    return rows
