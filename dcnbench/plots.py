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
