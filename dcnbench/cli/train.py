"""`dcnbench train`: training parity of every backend against float64, or the scaled-digits experiment."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from dcnbench.cli.common import (BackendOpt, CsvOpt, DeviceOpt, ImplOpt, InProcessOpt, IsolateOpt, JsonOpt, SeedOpt,
                                 TimeoutOpt, check_count, check_device, check_isolation, check_seed, console, err_console,
                                 output_paths, run_writing, stamp, user_errors)
from dcnbench.errors import EXIT_FAILED, EXIT_OK, UsageError

EXPERIMENTS = ("scaled-digits",)
VARIANTS = ("v1", "v2")


def _check_rate(lr: float) -> float:
    if not (math.isfinite(lr) and 0 < lr <= 10):
        raise UsageError(f"--lr {lr} is out of range", hint="give a finite learning rate in (0, 10]")
    return lr


def _check_common(*, dcn: str, seed: int, device: str, lr: float, batch: int) -> None:
    if dcn not in VARIANTS:
        raise UsageError(f"unknown --dcn '{dcn}'", hint="use --dcn v1 (offsets) or --dcn v2 (offsets and a mask)")
    check_seed(seed)
    check_device(device)
    _check_rate(lr)
    check_count("--batch", batch, low=2, high=512)


def train(*, backends: list[str] | None = None, impls: list[str] | None = None, dcn: str = "v1", steps: int = 30,
          batch: int = 16, lr: float = 0.1, seed: int = 0, device: str = "cpu", csv: Path | None = None,
          json: Path | None = None, isolate: bool = False, in_process: bool = False, timeout: float | None = None) -> int:
    """Train the net through each backend and the float64 oracle; 0 when every backend stays within
    its bound, 1 when one diverges or errors."""
    _check_common(dcn=dcn, seed=seed, device=device, lr=lr, batch=batch)
    check_count("--steps", steps, high=100_000)
    isolate_plugins = check_isolation(isolate=isolate, in_process=in_process, timeout=timeout)
    csv_path, json_path = output_paths("train", csv, json)

    from dcnbench import backends as registry
    from dcnbench import results
    from dcnbench.cli.progress import LateProgress
    from dcnbench.plugins import load_plugins
    from dcnbench.train import parity
    from dcnbench.train.render import parity_table, problems

    plugins = load_plugins(impls, device, parity.OP, isolate=isolate_plugins)
    chosen, skipped = registry.select(backends, plugins, kinds=("deformable",))
    if isolate:
        from dcnbench.worker.isolation import isolate as in_worker

        chosen = [in_worker(b) for b in chosen]
    for note in skipped:
        err_console.print(f"note: {note}", style="yellow", highlight=False, soft_wrap=True)
    settings = parity.TrainSettings(dcn=dcn, steps=steps, batch=batch, lr=lr, seed=seed, device=device)
    runnable = [b for b in chosen if not parity.unsupported(b, settings)]
    rules = {parity.rule_of(b, settings) for b in runnable}
    env = results.environment(device=device, seed=seed, backends=chosen)
    writer = results.ResultsWriter(kind="train", env=env, csv_path=csv_path, json_path=json_path,
                                   expected=len(chosen) + 2 * len(rules), extra={"settings": parity.settings_record(settings)})

    def run():
        with LateProgress(err_console, steps * (len(runnable) + 2 * len(rules)), "train") as bar:
            return parity.run_parity(backends=chosen, settings=settings, on_step=bar.advance, on_result=writer.add)

    found = run_writing(writer, run, "training runs")
    console.print(parity_table(found, settings))
    for line in problems(found):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"bound: a backend's |loss - float64| and weights' normwise difference at each step may reach "
                  f"{parity.BOUND_FACTOR:g} x the float32 PyTorch run's largest so far (floor: one float32 epsilon)",
                  highlight=False, soft_wrap=True)
    console.print(f"wrote {csv_path} and {json_path} (loss curves: dcnbench report {json_path})", highlight=False)
    return EXIT_FAILED if parity.failed(found) else EXIT_OK


def experiment(*, name: str, backends: list[str] | None = None, impls: list[str] | None = None, dcn: str = "v1",
               width: int = 16, epochs: int = 6, finetune_epochs: int = 3, batch: int = 32, lr: float = 1e-3,
               seed: int = 0, ablations: bool = False, device: str = "cpu", out: Path | None = None,
               in_process: bool = False, timeout: float | None = None) -> int:
    """The scaled-digits experiment: trains, prints the table beside the seeds', writes the figures."""
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown --experiment '{name}'", hint=f"choose from: {', '.join(EXPERIMENTS)}")
    _check_common(dcn=dcn, seed=seed, device=device, lr=lr, batch=batch)
    check_count("--epochs", epochs, high=1000)
    check_count("--finetune-epochs", finetune_epochs, high=1000)
    check_count("--width", width, high=256)
    if len(backends or []) + len(impls or []) > 1:
        raise UsageError("--experiment trains with one deformable kernel", hint="give at most one --backend or --impl")
    isolate_plugins = check_isolation(isolate=False, in_process=in_process, timeout=timeout)
    out = out or Path("results") / f"train-{name}-{stamp()}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file, not a folder", hint="give a folder (created if missing)")
    if not out.parent.is_dir():
        raise UsageError(f"--out '{out}': the folder {out.parent} does not exist", hint="create it first")

    from dcnbench import backends as registry
    from dcnbench import results
    from dcnbench.results import plots
    from dcnbench.cli.progress import LateProgress
    from dcnbench.plugins import load_plugins
    from dcnbench.train import experiment as exp
    from dcnbench.train.parity import OP
    from dcnbench.train.render import experiment_table

    plugins = load_plugins(impls, device, OP, isolate=isolate_plugins)
    names = backends if backends or plugins else [_default_backend(registry)]
    backend = registry.select(names, plugins, kinds=("deformable",))[0][0]
    settings = exp.ExperimentSettings(backend=backend.name, dcn=dcn, width=width, epochs=epochs,
                                      finetune_epochs=finetune_epochs, batch=batch, lr=lr, seed=seed,
                                      ablations=ablations, device=device)
    console.print(f"settings: {settings.describe()}", highlight=False, soft_wrap=True)
    with LateProgress(err_console, exp.total_steps(settings), f"train --experiment {name}") as bar:
        result = exp.run_experiment(op=backend.ops[OP], settings=settings, on_step=bar.advance)
    out.mkdir(exist_ok=True)
    console.print(experiment_table(result))
    console.print(f"{result.train_size} training and {result.test_size} test digits (scikit-learn's 8x8 digits upsampled "
                  f"to 28x28); scaled: each digit zoomed out by a factor in [1, 2.5] per axis and shifted by up to "
                  f"20 % of the frame (test set: seed {seed}; fine-tuning: a fresh draw per epoch); training seconds, "
                  "wall / CPU: " + ", ".join(f"{p.key} {p.wall_s:.0f} / {p.cpu_s:.0f}" for p in result.phases),
                  highlight=False, soft_wrap=True)
    record = result.record()
    (out / "offset-fields.png").write_bytes(plots.offset_fields(list(result.panels), columns=2))
    (out / "loss-curves.png").write_bytes(plots.experiment_curves(record["phases"]))
    (out / "table.md").write_text(result.markdown() + "\n")
    env = results.environment(device=device, seed=seed, backends=[backend])
    results.write_text(out / "experiment.json", results.dumps({"experiment": name, "environment": env} | record))
    console.print(f"wrote {out}/table.md, {out}/loss-curves.png, {out}/offset-fields.png and {out}/experiment.json",
                  highlight=False)
    return EXIT_OK


def _default_backend(registry) -> str:
    """ext (the fastest CPU kernels here) when it can run, else torchvision."""
    ext = next((b for b in registry.all_backends() if b.name == "ext"), None)
    return "ext" if ext is not None and not ext.unavailable else "torchvision"


@user_errors
def command(
    backend: BackendOpt = None,
    impl: ImplOpt = None,
    dcn: Annotated[str, typer.Option("--dcn", help="v1 (offsets) or v2 (offsets and a mask).")] = "v1",
    steps: Annotated[int, typer.Option("--steps", help="SGD steps (parity).")] = 30,
    batch: Annotated[int | None, typer.Option("--batch", help="Digits per step (default: 16; 32 for --experiment).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (default: SGD 0.1; Adam 0.001 for "
                                             "--experiment, whose fine-tuning takes half).")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    csv: CsvOpt = None,
    json: JsonOpt = None,
    isolate: IsolateOpt = False,
    in_process: InProcessOpt = False,
    timeout: TimeoutOpt = None,
    experiment_name: Annotated[str | None, typer.Option("--experiment", help="Instead of parity, run an experiment: "
                                                        "scaled-digits (plain vs deformable CNN on regular and scaled digits).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="--experiment: epochs training the plain CNN.")] = 6,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="--experiment: epochs fine-tuning the "
                                                 "offsets on scaled digits.")] = 3,
    width: Annotated[int, typer.Option("--width", help="--experiment: the first layer's channels (then 2x, 4x, 4x; "
                                       "the source's: 32).")] = 16,
    ablations: Annotated[bool, typer.Option("--ablations", help="--experiment: also train a deformable CNN on regular "
                                            "digits only and a plain CNN on scaled digits.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="--experiment: folder for the table and the figure "
                                             "(default: results/train-<experiment>-<time>/).")] = None,
) -> None:
    """Train a small deformable network through each backend and compare with the float64 oracle.

    The same net, initial weights and batches (scikit-learn's digits) for every backend; each step's
    loss and the weights after it may drift from the float64 run as far as the float32 PyTorch run
    does (times a factor), not more. Exit status: 0 every backend within its bound, 1 one diverged
    (the first step is named) or failed, 2 usage error. With --experiment scaled-digits: the seeds'
    plain vs deformable CNN table, measured here.
    """
    if experiment_name is not None:
        raise typer.Exit(experiment(name=experiment_name, backends=backend, impls=impl, dcn=dcn, width=width,
                                    epochs=epochs, finetune_epochs=finetune_epochs, batch=32 if batch is None else batch,
                                    lr=1e-3 if lr is None else lr, seed=seed, ablations=ablations, device=device,
                                    out=out, in_process=in_process, timeout=timeout))
    raise typer.Exit(train(backends=backend, impls=impl, dcn=dcn, steps=steps, batch=16 if batch is None else batch,
                           lr=0.1 if lr is None else lr, seed=seed, device=device, csv=csv, json=json, isolate=isolate,
                           in_process=in_process, timeout=timeout))
