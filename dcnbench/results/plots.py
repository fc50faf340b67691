"""Report figures (matplotlib, Agg): each function takes plain records and returns PNG bytes."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def speed_ratios(workloads: list[str], backends: list[str], ratios: dict[tuple[str, str], float], baseline: str) -> bytes:
    """Grouped bars: each backend's median time over the baseline's, per workload (log scale)."""
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(workloads) * max(1, len(backends)) / 3), 3.8))
    width = 0.8 / max(1, len(backends))
    for i, b in enumerate(backends):
        xs = [w + i * width for w in range(len(workloads))]
        ys = [ratios.get((wl, b), np.nan) for wl in workloads]
        ax.bar(xs, ys, width, label=b)
        for x, y in zip(xs, ys):
            if not math.isnan(y):
                ax.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([w + 0.4 - width / 2 for w in range(len(workloads))], [w.replace("/", "\n", 1) for w in workloads], fontsize=7)
    ax.set_ylabel(f"time ÷ {baseline} (same run)")
    ax.set_title("speed: lower is faster")
    ax.legend(fontsize=8)
    return _png(fig)


def error_matrix(backends: list[str], quantities: list[str], worst: dict[tuple[str, str], float | None]) -> bytes:
    """Backend x quantity: log10(worst relative error / tolerance); green passes (< 0), red fails.

    A NaN or infinite error is the worst possible: its cell is full red and says so.
    """
    data = np.full((len(backends), len(quantities)), np.nan)
    labels = {}
    for i, b in enumerate(backends):
        for j, q in enumerate(quantities):
            v = worst.get((b, q))
            if v is not None and not math.isfinite(v):
                data[i, j], labels[(i, j)] = 6.0, "NaN" if v != v else "inf"
            elif v is not None:
                data[i, j] = math.log10(max(v, 1e-20))
    fig, ax = plt.subplots(figsize=(1.3 * len(quantities) + 2, 0.6 * len(backends) + 1.5))
    im = ax.imshow(np.clip(data, -6, 6), cmap="RdYlGn_r", vmin=-6, vmax=6, aspect="auto")
    for i in range(len(backends)):
        for j in range(len(quantities)):
            text = labels.get((i, j)) or ("n/a" if math.isnan(data[i, j]) else f"{data[i, j]:+.1f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(quantities)), quantities, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(backends)), backends, fontsize=8)
    fig.colorbar(im, ax=ax, label="log10(worst error / tolerance)")
    ax.set_title("correctness: worst error over all cases, against the tolerance (< 0 passes)")
    return _png(fig)


def peak_memory(workloads: list[str], backends: list[str], peaks: dict[tuple[str, str], int]) -> bytes:
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(workloads) * max(1, len(backends)) / 3), 3.5))
    width = 0.8 / max(1, len(backends))
    for i, b in enumerate(backends):
        xs = [w + i * width for w in range(len(workloads))]
        ax.bar(xs, [peaks.get((wl, b), np.nan) / 2**20 for wl in workloads], width, label=b)
    ax.set_xticks([w + 0.4 - width / 2 for w in range(len(workloads))], [w.replace("/", "\n", 1) for w in workloads], fontsize=7)
    ax.set_ylabel("peak memory (MiB)")
    ax.set_title("peak memory of one call")
    ax.legend(fontsize=8)
    return _png(fig)


def loss_curves(title: str, losses: dict[str, list[float]], drifts: dict[str, tuple[list[float], list[float]]]) -> bytes:
    """Training loss per step for each run (left) and each backend's |loss - reference| beside its
    bound (right, log scale; dashed: the bound, a cross: the first step outside it)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, ys in losses.items():
        left.plot(range(1, len(ys) + 1), ys, label=label, lw=1.2)
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.set_title(title, fontsize=9)
    left.legend(fontsize=7)
    for label, (diff, bound) in drifts.items():
        steps = range(1, len(diff) + 1)
        (line,) = right.plot(steps, [max(d, 1e-12) for d in diff], label=label, lw=1.2)
        right.plot(range(1, len(bound) + 1), bound, ls="--", lw=0.8, color=line.get_color())
        bad = next((i for i, (d, b) in enumerate(zip(diff, bound)) if not d <= b), None)
        if bad is not None:
            right.plot([bad + 1], [max(diff[bad], 1e-12) if math.isfinite(diff[bad]) else 1.0], "x", color=line.get_color(), ms=9)
    right.set_yscale("log")
    right.set_xlabel("step")
    right.set_ylabel("|loss − float64 reference| (dashed: bound)")
    right.set_title("drift from the float64 oracle", fontsize=9)
    right.legend(fontsize=7)
    return _png(fig)


def experiment_curves(phases: list[dict]) -> bytes:
    """The scaled-digits runs: each phase's training loss per step (left) and its test accuracy after
    each epoch (right; solid: regular digits, dashed: scaled). A phase that starts from another's
    trained net (a `starts_from` key naming it) is drawn after it, from its last point."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    by_key = {p["key"]: p for p in phases}
    for p in phases:
        start = by_key.get(p["starts_from"])
        steps0, epochs0 = (len(start["losses"]), len(start["epochs"])) if start else (0, 0)
        steps = np.arange(steps0 + 1, steps0 + len(p["losses"]) + 1)
        (line,) = left.plot(steps, p["losses"], lw=0.5, alpha=0.35)
        window = min(10, len(p["losses"]))  # batches of 32 are noisy: the 10-step running mean on top
        left.plot(steps[window - 1:], np.convolve(p["losses"], np.ones(window) / window, mode="valid"), lw=1.4,
                  color=line.get_color(), label=p["label"])
        first = [start["epochs"][-1]] if start else []
        xs = range(epochs0 + 1 - len(first), epochs0 + len(p["epochs"]) + 1)
        for name, style in (("regular", "-"), ("scaled", "--")):
            right.plot(xs, [100 * a[name] for a in first + p["epochs"]], style, marker=".", color=line.get_color(), lw=1.2)
    left.set_xlabel("training step (batches of the run so far)")
    left.set_ylabel("training loss")
    left.set_title("training loss (faint: each step; bold: mean of the last 10)", fontsize=9)
    left.legend(fontsize=7)
    right.set_xlabel("epoch")
    right.set_ylabel("test accuracy, % (solid: regular, dashed: scaled)")
    right.set_ylim(0, 100)
    right.axhline(10, color="grey", lw=0.6, ls=":")
    right.set_title("test accuracy after each epoch (dotted: chance)", fontsize=9)
    return _png(fig)


def offset_fields(panels: list, columns: int = 3) -> bytes:
    """Where a deformable net samples for a few activation units (the paper's Figure 5): each panel
    the digit, the unit (green), its learned sampling points (red) and the regular grid (grey)."""
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        ax.imshow(panel.image, cmap="gray_r", extent=(-0.5, panel.image.shape[1] - 0.5, panel.image.shape[0] - 0.5, -0.5))
        ax.scatter(panel.regular[:, 1], panel.regular[:, 0], s=4, c="#999999", alpha=0.5, label="zero offsets")
        ax.scatter(panel.learned[:, 1], panel.learned[:, 0], s=3, c="red", alpha=0.6, label="learned offsets")
        ax.plot([panel.unit[1]], [panel.unit[0]], "s", color="limegreen", ms=7)
        low = min(-4.0, float(panel.learned.min()) - 1)
        high = max(panel.image.shape[0] + 3.0, float(panel.learned.max()) + 1)
        ax.set_xlim(low, high)
        ax.set_ylim(high, low)
        ax.set_title(panel.title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="lower left")
    return _png(fig)
