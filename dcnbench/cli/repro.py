"""`dcnbench repro FILE`: re-run one failing case x backend from a bundle `verify --save-failures` wrote.

Exit status: 0 the case passes now, 1 it still fails (fail, error or nondeterministic), 2 usage error
(unreadable bundle, unknown backend, broken --impl, CUDA without a GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dcnbench.cli.common import InProcessOpt, IsolateOpt, TimeoutOpt, check_isolation, console, user_errors
from dcnbench.errors import EXIT_FAILED, EXIT_OK, UsageError

# How many repro commands `verify --save-failures` prints before pointing at the folder.
SHOWN_COMMANDS = 20


def save_repro_bundles(found: list, directory: Path, *, device: str, env: dict, impls: list[str] | None) -> list[Path]:
    """Write a bundle per failing result of a verify run and print the command that re-runs each."""
    from dcnbench.plugins import parse_impl
    from dcnbench.results.repro import repro_command, save_failures

    specs = {}
    for spec in impls or []:
        name, path, func = parse_impl(spec)
        specs[name or func] = f"{name or func}={path.resolve()}:{func}"
    written = save_failures(found, directory, device=device, env=env, impls=specs)
    if not written:
        console.print(f"no failing result: no repro bundle written to {directory}", highlight=False)
        return written
    console.print(f"wrote {len(written)} repro bundle(s) to {directory}; re-run one with:", highlight=False)
    by_stem = {p.stem: p for p in written}
    for stem, path in list(by_stem.items())[:SHOWN_COMMANDS]:
        impl = next((specs[b] for b in specs if stem.endswith(f"--{b}")), None)
        console.print(f"  {repro_command(path, impl)}", highlight=False, soft_wrap=True)
    if len(written) > SHOWN_COMMANDS:
        console.print(f"  ... and {len(written) - SHOWN_COMMANDS} more: ls {directory}/*.pt", highlight=False)
    return written


def repro(*, file: Path, impl: str | None = None, device: str | None = None, isolate: bool = False,
          in_process: bool = False, timeout: float | None = None) -> int:
    """Re-run the bundle's case; 0 only when it passes now (pass or dialect), 1 otherwise."""
    from dcnbench import backends as registry
    from dcnbench.cli.common import check_device
    from dcnbench.plugins import load_plugin
    from dcnbench.results.repro import load_bundle, quantity_lines, rerun, stored_case
    from dcnbench.status import PASSING

    isolate_plugins = check_isolation(isolate=isolate, in_process=in_process, timeout=timeout)
    bundle = load_bundle(file)
    meta = bundle["meta"]
    device = check_device(device or meta["device"])
    spec = impl or meta.get("impl")
    if spec:
        if not impl and not Path(spec.partition("=")[2].rpartition(":")[0]).is_file():
            raise UsageError(f"the bundle's plugin '{spec}' is not on this machine",
                             hint="pass the kernel to test: --impl [NAME=]PATH.py:FUNC")
        backend = load_plugin(spec, device, op=meta["op"], isolate=isolate_plugins)
    else:
        backend = registry.select([meta["backend"]], [], kinds=("deformable",))[0][0]
    if isolate:
        from dcnbench.worker.isolation import isolate as in_worker

        backend = in_worker(backend)
    case, same = stored_case(bundle)
    console.print(f"repro {meta['case_id']} ({meta['op']}, {meta['check']}, seed {meta['seed']}, {device}) on {backend.name}"
                  f"{' (' + backend.description + ')' if backend.origin == 'plugin' else ''}", highlight=False, soft_wrap=True)
    console.print(f"recorded: {meta['status']}" + "".join(f"; {q['quantity']} rel err {_fmt(q['rel_err'])} > tol "
                                                          f"{q['tolerance']:.0e}" for q in meta["failing"]),
                  highlight=False, soft_wrap=True)
    console.print("inputs: the bundle's tensors" + ("" if same else
                  " (this machine's generator draws other values from the seed: the bundle's are used)"), highlight=False)
    result = rerun(case, backend, device)
    rows = quantity_lines(result, _fmt)
    if rows:
        widths = [max(len(r[i]) for r in rows + [("quantity", "rel err", "max abs", "tol", "")]) for i in range(4)]
        console.print("  " + "  ".join(h.ljust(w) for h, w in zip(("quantity", "rel err", "max abs", "tol"), widths)),
                      style="bold", highlight=False)
        for row in rows:
            style = "bold red" if row[4].startswith("FAIL") else None
            console.print("  " + "  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4], style=style,
                          highlight=False, soft_wrap=True)
    console.print(f"now: {result.status}" + (f": {result.message}" if result.message else ""), highlight=False, soft_wrap=True)
    # Only a pass is a fix: an error, a failure, or a case the kernel now declines (unsupported) is not.
    return EXIT_OK if result.status in PASSING else EXIT_FAILED


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


@user_errors
def command(
    file: Annotated[Path, typer.Argument(help="A bundle (.pt or .json) written by `verify --save-failures`.")],
    impl: Annotated[str | None, typer.Option("--impl", help="Run this kernel instead of the recorded backend: [NAME=]PATH.py:FUNC.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: the recorded device).")] = None,
    isolate: IsolateOpt = False,
    in_process: InProcessOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Re-run exactly one failing case from a repro bundle and show every quantity against its tolerance.

    A plugin (the bundle's or --impl) runs in a worker process unless --in-process; --isolate moves a
    built-in backend there too. Exit status: 0 it passes now, 1 it still fails (fail, error,
    nondeterministic, or the kernel now declines the case), 2 usage error.
    """
    if not file.is_file():
        raise UsageError(f"repro bundle '{file}' does not exist",
                         hint="give a .pt or .json file that `dcnbench verify --save-failures DIR` wrote")
    raise typer.Exit(repro(file=file, impl=impl, device=device, isolate=isolate, in_process=in_process, timeout=timeout))
