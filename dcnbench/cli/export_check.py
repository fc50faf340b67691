"""`dcnbench export-check MODULE.py:FACTORY`: does your own model compute the same after ONNX export?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dcnbench.cli.common import BackendOpt, check_isolation, console, user_errors
from dcnbench.errors import EXIT_FAILED, EXIT_OK, UsageError


def export_check(*, factory: str, backends: list[str] | None = None, onnx: Path | None = None,
                 rtol: float | None = None, in_process: bool = False, timeout: float | None = None) -> int:
    """Export the factory's module with torch.onnx.export, run it in onnxruntime, compare with PyTorch
    in float64 (all in a worker process unless `in_process`); returns the exit status (0 the same,
    1 different, not exportable, or the module failed)."""
    import math

    if rtol is not None and not (math.isfinite(rtol) and rtol > 0):
        raise UsageError(f"--rtol {rtol} is not a positive number", hint="e.g. --rtol 1e-5")
    from dcnbench.checking import export_check as check
    from dcnbench import outputs
    from dcnbench.checking import onnx_export
    check_isolation(isolate=False, in_process=in_process, timeout=timeout)
    check.check_factory_spec(factory)

    outputs.claim([("--onnx", onnx)])  # a folder, a missing folder, another run's file: exit 2 before the export

    from rich.table import Table

    from dcnbench import backends as registry

    translations = {}
    for name in backends or []:
        backend = registry.get(name)
        if backend.onnx_translations is None:
            raise UsageError(f"backend '{name}' has no ONNX translation for its ops",
                             hint="only backends built on custom torch ops need one (ext)")
        translations.update(backend.onnx_translations())
    if in_process:
        module, inputs = check.made_by(check.load_factory(factory))
        found = check.check_module(module, inputs, translations, rtol, onnx)
    else:
        found = check.check_in_worker(factory, backends or [], rtol, onnx)

    if found.graph:
        console.print(f"exported graph (opset {onnx_export.OPSET}): {found.graph}", highlight=False)
    if found.outputs:
        table = Table(title="exported model (onnxruntime CPU) against the module in float64 (PyTorch)")
        for col in ("output", "shape", "dtype", "status", "rel err", "max abs", "tolerance", "PyTorch's own rel err"):
            table.add_column(col, justify="right" if col in ("rel err", "max abs", "tolerance", "PyTorch's own rel err") else "left")
        for c in found.outputs:
            def num(v):
                return "-" if v is None else f"{v:.1e}"

            table.add_row(str(c.index), "x".join(map(str, c.shape)), c.dtype, "pass" if c.onnx.ok else "fail",
                          num(c.onnx.rel_err), num(c.onnx.max_abs_err), num(c.onnx.tolerance), num(c.torch_rel_err))
        console.print(table)
    console.print(f"{found.status}: {found.message}" if found.message else str(found.status), highlight=False)
    if onnx is not None and found.graph:
        console.print(f"wrote {onnx}", highlight=False)
    return EXIT_OK if found.status == "pass" else EXIT_FAILED


@user_errors
def command(
    factory: Annotated[str, typer.Argument(help="PATH.py:FACTORY, a function returning (torch.nn.Module, "
                                                "a sample input tensor or a tuple of them).")],
    backend: BackendOpt = None,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="Also write the exported model here.")] = None,
    rtol: Annotated[float | None, typer.Option("--rtol", help="Normwise relative error allowed (default: verify's "
                                                               "tolerance for the output's dtype).")] = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Make and export the model in dcnbench's own process "
                                             "(no worker start-up; a factory that exits or crashes takes dcnbench down).")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds the worker may take to make the model, and "
                                                  "again to export, run and compare it (default 600).")] = None,
) -> None:
    """Export your model with torch.onnx.export (opset 19), run it in onnxruntime, compare with PyTorch in float64.

    --backend NAME adds that backend's ONNX translations for its custom ops (ext). The factory runs in
    a worker process unless --in-process. Exit status: 0 every output within tolerance, 1 an output
    differs or is not finite, the model does not export, onnxruntime refuses it or the module fails
    (raises, exits, crashes, hangs), 2 usage error (a factory that does not make a model included).
    """
    raise typer.Exit(export_check(factory=factory, backends=backend, onnx=onnx, rtol=rtol, in_process=in_process,
                                  timeout=timeout))
