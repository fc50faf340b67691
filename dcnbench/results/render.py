"""Rich tables over result records. Nothing here measures or decides; it only shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from dcnbench.checking import problems
from dcnbench.results import worst
from dcnbench.status import VERIFY_STATUSES, Status

if TYPE_CHECKING:
    from dcnbench.backends import Backend
    from dcnbench.timing.speed import SpeedResult
    from dcnbench.checking.verify import VerifyResult

STATUS_STYLE = {Status.PASS: "green", Status.DIALECT: "cyan", Status.FAIL: "bold red", Status.NONDETERMINISTIC: "magenta",
                Status.UNSUPPORTED: "dim", Status.ERROR: "bold yellow", Status.OK: "green"}


def _fmt_err(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def verify_table(results: list[VerifyResult]) -> Table:
    """Cases as rows, backends as columns: the status and the worst relative error."""
    backends = list(dict.fromkeys(r.backend for r in results))
    table = Table(title="dcnbench verify", title_justify="left")
    table.add_column("case")
    for b in backends:
        table.add_column(b)
    by_case: dict[str, dict[str, VerifyResult]] = {}
    for r in results:
        by_case.setdefault(r.case.case_id, {})[r.backend] = r
    for case_id, row in by_case.items():
        cells = []
        for b in backends:
            r = row.get(b)
            if r is None:
                cells.append(Text("-"))
                continue
            errs = [q.rel_err for q in r.quantities if q.rel_err is not None and q.reference != "C"]
            detail = ""
            if r.status == "fail":
                detail = " " + ",".join(q.quantity for q in r.failing)
            elif r.status == "dialect":
                detail = f" rule {r.dialect.rule}"
            elif errs:
                detail = f" {worst(errs):.0e}"
            if any(q.unsupported for q in r.quantities):
                detail += " (grads unsupported)"
            cells.append(Text(r.status + detail, style=STATUS_STYLE[r.status]))
        table.add_row(case_id, *cells)
    return table


def dialect_table(results: list[VerifyResult]) -> Table | None:
    """For backends that declare another boundary rule: where they part from the paper, and by how much."""
    rows = [r for r in results if r.dialect is not None and r.status in ("pass", "dialect", "fail", "nondeterministic")]
    if not rows:
        return None
    table = Table(title="dialects: each backend against the paper's rule Z and against the rule it declares",
                  title_justify="left")
    for name, justify in (("case", "left"), ("backend", "left"), ("rule", "left"), ("vs its rule", "left"),
                          ("interior outputs", "right"), ("max |Δ| vs Z", "right"), ("band outputs", "right"),
                          ("max |Δ| vs Z", "right"), ("verdict", "left")):
        table.add_column(name, justify=justify)
    for r in rows:
        d = r.dialect
        worst_rel = worst(q.rel_err for q in r.quantities if q.reference == d.rule)
        verdict = {"pass": "agrees with the paper everywhere", "dialect": "diverges from the paper only in the border bands"}
        table.add_row(r.case.case_id, r.backend, d.rule, ("agrees" if d.matches_rule else "differs") + f" ({_fmt_err(worst_rel)})",
                      str(d.interior_outputs), _fmt_err(d.interior_max_abs_vs_z), str(d.band_outputs),
                      _fmt_err(d.band_max_abs_vs_z), Text(verdict.get(r.status, r.status), style=STATUS_STYLE[r.status]))
    return table


def verify_summary(results: list[VerifyResult]) -> Table:
    backends = list(dict.fromkeys(r.backend for r in results))
    table = Table(title="summary", title_justify="left")
    table.add_column("backend")
    for s in VERIFY_STATUSES:
        table.add_column(s, justify="right")
    for b in backends:
        mine = [r for r in results if r.backend == b]
        table.add_row(b, *[str(sum(r.status == s for r in mine)) for s in VERIFY_STATUSES])
    return table


# What `verify --show` prints after the summary: the results that did not pass, the full matrix too, or nothing.
SHOW_CHOICES = ("failures", "all", "none")


def not_passing(results: list[VerifyResult], examples: int = 3) -> list[RenderableType]:
    """One aligned line per result that did not pass (per failing quantity for a `fail`), failures
    first; `unsupported` results one line per backend and reason, with a few of the cases."""
    found = problems.problems(results)
    groups = problems.unsupported(results)
    counts = {s: sum(r.status == s for r in results) for s in VERIFY_STATUSES if s != Status.PASS}
    head = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"
    lines: list[RenderableType] = [Text(f"not passing: {head}", style="bold")]
    if found:
        w = [max(len(x) for x in col) for col in zip(*[(p.status, p.case_id, p.backend, p.quantity) for p in found])]
        for p in found:
            lines.append(Text.assemble("  ", (p.status.ljust(w[0]), STATUS_STYLE[p.status]), "  ", p.case_id.ljust(w[1]), "  ",
                                       p.backend.ljust(w[2]), "  ", p.quantity.ljust(w[3]), "  ", p.detail))
    for g in groups:
        shown = ", ".join(g.case_ids[:examples]) + (f", ... (+{len(g.case_ids) - examples})" if len(g.case_ids) > examples else "")
        lines.append(Text.assemble("  ", (Status.UNSUPPORTED.value, STATUS_STYLE[Status.UNSUPPORTED]),
                                   f"  {g.backend}: {len(g.case_ids)} case(s): {g.reason}  [{shown}]"))
    return lines


def verify_report(results: list[VerifyResult], show: str = "failures") -> list[RenderableType]:
    """What `verify` prints, in order: the summary per backend, then (unless `show` is "none") what
    did not pass, then (with `show` "all") the full case x backend matrix and the dialect table."""
    parts: list[RenderableType] = [verify_summary(results)]
    if show in ("failures", "all"):
        parts += not_passing(results)
    if show == "all":
        parts += [t for t in (verify_table(results), dialect_table(results)) if t is not None]
    elif show == "failures":
        parts.append(Text("(the full case x backend matrix: --show all, or -v)", style="dim"))
    return parts


def speed_tables(results: list[SpeedResult], baseline: str | None,
                 bound_pct: dict[tuple[str, str], float | None] | None = None) -> list[RenderableType]:
    """One table per workload, backends as rows, coloured by ratio to the fastest; with `bound_pct`
    ((case id, backend) -> % of the roofline, `speed --roofline`), a column for it.

    A backend that cannot run the workload is one footnote line under its table (a long reason in
    a table cell folds over many lines); one that raised keeps a row, its message in a footnote.
    """
    tables = []
    by_case: dict[str, list[SpeedResult]] = {}
    for r in results:
        by_case.setdefault(r.case.case_id, []).append(r)
    for case_id, rows in by_case.items():
        ok = [r for r in rows if r.measurement]
        best = min((r.measurement.median_ms for r in ok), default=None)
        table = Table(title=case_id, title_justify="left")
        table.add_column("backend")
        base = next((r.baseline for r in rows if r.baseline), baseline)
        for name in ("median ms", "IQR ms", f"x {base}" if base else "ratio", "x best", "GFLOP/s", "peak mem") + \
                (("% bound",) if bound_pct is not None else ()):
            table.add_column(name, justify="right")
        table.add_column("notes")
        notes = []
        for r in rows:
            if not r.measurement:
                notes.append(Text(f"  {r.backend}: {r.status}: {r.message}", style=STATUS_STYLE[r.status]))
                if r.status == Status.ERROR:
                    table.add_row(r.backend, "-", "-", "-", "-", "-", "-", *(("-",) if bound_pct is not None else ()),
                                  Text("error (below)", style=STATUS_STYLE[r.status]))
                continue
            m = r.measurement
            vs_best = m.median_ms / best if best else None
            style = "green" if vs_best is not None and vs_best < 1.05 else "yellow" if vs_best and vs_best < 3 else "red"
            table.add_row(
                Text(r.backend, style=style), f"{m.median_ms:.2f}", f"{m.iqr_ms:.2f}",
                "-" if r.ratio_to_baseline is None else f"{r.ratio_to_baseline:.2f}",
                Text(f"{vs_best:.2f}", style=style), "-" if r.gflops is None else f"{r.gflops:.1f}",
                _fmt_bytes(r.peak_bytes), *(() if bound_pct is None else (_fmt_pct(bound_pct.get((r.case.case_id, r.backend))),)),
                r.message,
            )
        tables.append(Group(table, *notes) if notes else table)
    return tables


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def speed_warnings(results: list[SpeedResult]) -> list[str]:
    """Measurement warnings as lines to print under the tables (one per backend and workload)."""
    return [f"warning: {r.backend} on {r.case.case_id}: {w}" for r in results for w in r.warnings()]


def backends_table(backends: list[Backend]) -> Table:
    table = Table(title="backends", title_justify="left")
    for name in ("name", "kind", "origin", "version", "devices", "dtypes", "status"):
        table.add_column(name)
    for b in backends:
        dtypes = "; ".join(f"{dev}: {','.join(d)}" for dev, d in b.dtypes.items())
        problem = b.unavailable or (b.check() if b.check else None)
        status = Text(f"unavailable: {problem}", style="yellow") if problem else Text("available", style="green")
        if not problem and b.environment:
            status.append(f" ({b.environment()})", style="dim")
        table.add_row(b.name, b.kind, b.origin, b.version or "-", ",".join(b.devices) or "-", dtypes or "-", status)
    return table
