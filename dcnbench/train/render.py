"""Rich tables for `dcnbench train`: the parity table and the scaled-digits table. Only shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from dcnbench.results.render import STATUS_STYLE

if TYPE_CHECKING:
    from dcnbench.train.experiment import ExperimentResult
    from dcnbench.train.parity import TrainResult, TrainSettings


def _e(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _label(r: TrainResult) -> str:
    return r.backend if r.role == "backend" else f"{r.backend} ({r.role}, {r.dtype})"


def parity_table(results: list[TrainResult], settings: TrainSettings) -> Table:
    s = settings
    table = Table(title=f"dcnbench train --dcn {s.dcn} --steps {s.steps} --batch {s.batch} --lr {s.lr:g} --seed {s.seed} "
                        f"({s.dtype} against the float64 oracle)", title_justify="left")
    for name, justify in (("backend", "left"), ("rule", "left"), ("status", "left"), ("loss 1", "right"),
                          ("loss last", "right"), ("max |Δ loss|", "right"), ("Δ weights last", "right"),
                          ("worst × bound", "right"), ("first bad step", "right"), ("fwd ms", "right"),
                          ("bwd ms", "right"), ("opt ms", "right"), ("step ms", "right")):
        table.add_column(name, justify=justify)
    for r in results:
        style = STATUS_STYLE.get(r.status, "")
        ratio = r.worst_ratio
        table.add_row(_label(r), r.rule, f"[{style}]{r.status}[/]" if style else str(r.status),
                      f"{r.losses[0]:.5f}" if r.losses else "-", f"{r.losses[-1]:.5f}" if r.losses else "-",
                      _e(max(r.loss_diff, default=None)) if r.role != "reference" else "-",
                      _e(r.weight_diff[-1] if r.weight_diff else None) if r.role != "reference" else "-",
                      "-" if ratio is None else f"{ratio:.2f}", str(r.first_failing_step or "-"),
                      _ms(r.forward_ms), _ms(r.backward_ms), _ms(r.optimizer_ms), _ms(r.step_ms))
    return table


def problems(results: list[TrainResult]) -> list[str]:
    """One line per row that did not pass."""
    return [f"{r.status} {r.backend}: {r.message}" for r in results if r.role == "backend" and r.status != "pass"]


def experiment_table(result: ExperimentResult) -> Table:
    s = result.settings
    table = Table(title=f"dcnbench train --experiment scaled-digits --width {s.width} --epochs {s.epochs} "
                        f"--finetune-epochs {s.finetune_epochs} --lr {s.lr:g} --seed {s.seed} --dcn {s.dcn} "
                        f"--backend {s.backend}", title_justify="left")
    table.add_column("test accuracy")
    for name in result.columns():
        table.add_column(name, justify="right")
    for row in result.rows():
        table.add_row(*row)
    return table
