"""`dcnbench report`: from results files, a Markdown report and a self-contained HTML page.

One builder turns records into neutral sections (text, tables, figures); two small writers render
them as Markdown (figures as PNG files beside it) and as HTML (figures embedded as data URIs).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dcnbench import ops

from dcnbench.results import plots
from dcnbench.results import expand, frame, partial_note, worst
from dcnbench.status import VERIFY_STATUSES


@dataclass
class Section:
    """A titled list of blocks, in order: ("text", str), ("table", header, rows), ("figure", name, png)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def text(self, value: str) -> None:
        self.blocks.append(("text", value))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def figure(self, name: str, png: bytes) -> None:
        self.blocks.append(("figure", name, png))

    @property
    def figures(self) -> list[tuple[str, bytes]]:
        return [(b[1], b[2]) for b in self.blocks if b[0] == "figure"]


def _fmt(x, spec=".2f"):
    if x is None or x == "":
        return "–"
    if x != x:
        return "NaN"
    return format(x, spec)


def _mib(n):
    return "–" if n is None else f"{n / 2**20:.1f} MiB"


def build(docs: list[dict]) -> list[Section]:
    docs = expand(docs)
    rows = frame(docs, exact=True)  # the JSON's values: a missing figure prints "–", a NaN error "NaN"
    verify, speed = rows[rows.kind == "verify"], rows[rows.kind == "speed"]
    sections = [_at_a_glance(verify, speed)]
    note = partial_note(docs)
    if note:  # say it first: every figure below covers only the results that ran
        sections[0].blocks.insert(0, ("text", f"Partial results: {note} (the run was interrupted or crashed)."))
    if len(verify):
        sections.append(_correctness(verify))
    if len(speed):
        sections.append(_speed(speed))
    sections += [_training(d, i) for i, d in enumerate(d for d in docs if d["kind"] == "train")]
    sections.append(_environment(docs))
    return sections


def _at_a_glance(verify, speed) -> Section:
    s = Section("At a glance")
    backends = list(dict.fromkeys([*verify.backend, *speed.backend]))
    if not backends:  # e.g. only `train` files: their own sections follow
        s.text("No verify or speed results in these files.")
        return s
    records = verify.drop_duplicates("record")
    counts = pd.crosstab(records.backend, pd.Categorical(records.status, VERIFY_STATUSES), dropna=False)
    counts = counts.reindex(index=backends, fill_value=0)
    ran, problems = counts.sum(axis=1), counts[["fail", "error", "nondeterministic"]].sum(axis=1)
    best = speed[speed.ratio_to_baseline.fillna(0) > 0].groupby("backend").ratio_to_baseline.min() if len(speed) else {}
    rows = [[b, "not verified" if not ran[b] else "problems" if problems[b] else "correct", *map(str, counts.loc[b]),
             _fmt(best[b]) if b in best else "–"] for b in backends]
    s.table(["backend", "verdict", "pass", "dialect", "fail", "nondet.", "unsupported", "error", "best × baseline"], rows)
    return s


def _correctness(verify) -> Section:
    s = Section("Correctness")
    s.text("Worst normwise relative error per backend and quantity over every case, and that error divided by its "
           "tolerance (≤ 1 passes). A `dialect` result counts against the boundary rule its backend declares.")
    backends = list(dict.fromkeys(verify.backend))
    v = verify.reindex(columns=verify.columns.union(["reference", "dialect.rule", "ok", "rel_err", "tolerance"], sort=False))
    ref = v.reference.where(v.reference.notna(), "Z")
    judged_by = v["dialect.rule"].where(v.status == "dialect")
    judged = v[v.compared & ((ref == judged_by) | (judged_by.isna() & (ref != "C")))]
    judged = judged.assign(quantity=judged.quantity.str.split("@").str[0],  # cotangent layouts count for their gradient
                           ratio=[e / t for e, t in zip(judged.rel_err, judged.tolerance)])
    table = judged.groupby(["backend", "quantity"], sort=False)[["rel_err", "ratio"]].agg(worst)
    every = dict.fromkeys(q for spec in ops.all_ops() for q in spec.quantities)
    quantities = [q for q in every if q in set(judged.quantity)]
    s.table(["backend"] + quantities,
            [[b] + [f"{_fmt(table.rel_err[b, q], '.1e')} ({_fmt(table.ratio[b, q], '.1e')}×tol)"
                    if (b, q) in table.index else "–" for q in quantities] for b in backends])
    s.figure("error-matrix.png", plots.error_matrix(backends, quantities, table.ratio.to_dict()))
    failing = v[v.ok.eq(False)].groupby("record").quantity.agg(", ".join)
    shown = v.drop_duplicates("record")
    shown = shown[shown.status.isin(("fail", "error", "nondeterministic", "dialect"))]
    problems = [[r.case_id, r.backend, r.status, r.message or failing.get(r.record, "")] for r in shown.itertuples()]
    if problems:
        s.text("Cases that did not simply pass (dialect: agrees with the backend's declared boundary rule, "
               "differs from the paper's only in the border bands):")
        s.table(["case", "backend", "status", "detail"], problems)
    return s


def _speed(speed) -> Section:
    named = speed.baseline.where(speed.baseline.notna(), speed.get("run_baseline"))
    baseline = next((b for b in named if b), "baseline")
    s = Section("Speed")
    s.text(f"Medians of interleaved samples; `× {baseline}` divides by {baseline}'s median measured in the same run, "
           "so it is comparable across machines where absolute times are not.")
    workloads, backends = list(dict.fromkeys(speed.case_id)), list(dict.fromkeys(speed.backend))
    ok = speed.set_index(["case_id", "backend"])[speed.status.eq("ok").to_numpy()]
    ratios = ok.ratio_to_baseline[ok.ratio_to_baseline.fillna(0).to_numpy() > 0].to_dict()
    peaks = ok.peak_bytes.dropna().to_dict()
    rows = [[r.case_id, r.backend, r.status, _fmt(r.median_ms), _fmt(r.iqr_ms), _fmt(r.ratio_to_baseline),
             _fmt(r.gflops, ".1f"), _mib(r.peak_bytes), r.message if r.status != "ok" else ""] for r in speed.itertuples()]
    s.table(["workload", "backend", "status", "median ms", "IQR ms", f"× {baseline}", "GFLOP/s", "peak mem", "note"], rows)
    if ratios:
        s.figure("speed-ratios.png", plots.speed_ratios(workloads, backends, ratios, baseline))
    if peaks:
        s.text("Peak memory: " + "; ".join(sorted(set(speed.memory_method.dropna()) - {""})) + ".")
        s.figure("peak-memory.png", plots.peak_memory(workloads, backends, peaks))
    return s


def _training(doc: dict, index: int) -> Section:
    """One `dcnbench train` run: each backend's loss curve, its drift from float64 against its bound."""
    settings = doc.get("settings", {})
    what = ", ".join(f"{k} {settings[k]}" for k in ("dcn", "steps", "batch", "lr", "seed", "dtype") if k in settings)
    s = Section(f"Training parity ({what})" if what else "Training parity")
    s.text(f"Each backend trains the same net from the same weights on the same batches; its loss and weights may "
           f"drift from the float64 oracle's run by {settings.get('bound_factor', '?')} x the float32 PyTorch run's "
           "largest drift so far (floor: one float32 epsilon).")
    rows, losses, drifts = [], {}, {}
    for r in doc["records"]:
        label = r["backend"] if r["role"] == "backend" else f"{r['backend']} {r['role']} ({r['dtype']}, rule {r['rule']})"
        rows.append([label, r["rule"], r["status"], _fmt(r["losses"][-1] if r["losses"] else None, ".5f"),
                     _fmt(max(r["loss_diff"], default=None), ".1e") if r["role"] == "backend" else "–",
                     str(r.get("first_failing_step") or "–"), _fmt(r.get("step_ms"), ".1f"), r.get("message", "")])
        if r["losses"] and r["role"] != "yardstick":
            losses[label] = r["losses"]
        if r["role"] == "backend" and r["loss_diff"]:
            drifts[r["backend"]] = (r["loss_diff"], r["loss_bound"])
    s.table(["run", "rule", "status", "last loss", "max |Δ loss|", "first bad step", "step ms", "note"], rows)
    if losses:
        s.figure(f"train-loss-{index + 1}.png", plots.loss_curves(f"training loss ({what})", losses, drifts))
    return s


def _environment(docs) -> Section:
    keys = ("kind", "partial", "dcnbench_version", "git_commit", "timestamp", "device", "device_name", "cpu_model", "threads",
            "torch_version", "torchvision_version", "backend_versions")
    rows = [[str(d["kind"]), "yes" if d.get("partial") else "no"] + [str(d["environment"].get(k, "–")) for k in keys[2:]]
            for d in docs]
    s = Section("Environment")
    s.table(list(keys), rows)
    return s


# ---- writers -------------------------------------------------------------------------------------


def to_markdown(sections: list[Section], title: str, figure_dir: str = "plots") -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for block in s.blocks:
            if block[0] == "text":
                out += [block[1], ""]
            elif block[0] == "table":
                _, header, rows = block
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
                out.append("")
            else:
                out += [f"![{block[1]}]({figure_dir}/{block[1]})", ""]
    return "\n".join(out)


def to_html(sections: list[Section], title: str) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{e(s.title)}</h2>")
        for block in s.blocks:
            if block[0] == "text":
                body.append(f"<p>{e(block[1])}</p>")
            elif block[0] == "table":
                _, header, rows = block
                body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
                body += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
                body.append("</table>")
            else:
                png = base64.b64encode(block[2]).decode()
                body.append(f'<figure><img alt="{e(block[1])}" src="data:image/png;base64,{png}"></figure>')
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
             "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


FILES = ("report.md", "report.html")  # what write_report writes into its folder (and plots/)


def write_report(docs: list[dict], out_dir: Path, title: str = "dcnbench report") -> tuple[Path, Path]:
    sections = build(docs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plots").mkdir(exist_ok=True)
    for s in sections:
        for name, png in s.figures:
            (out_dir / "plots" / name).write_bytes(png)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(to_markdown(sections, title))
    page.write_text(to_html(sections, title))
    return md, page
