"""What the two deformable RoI pooling operators share beyond their contracts: the RoI case base,
drawing RoIs from named distributions, redrawing those whose samples fall near a kink, reading
user RoI/offset files, and the no-offset identity.

RoIs are drawn in image coordinates (the map's size divided by spatial_scale) from named
distributions, so a case states where its boxes lie relative to the map. Every sampling point is
kept a margin away from the operator's kinks (each op's case says where they are), so gradients
are two-sided and a float32 kernel cannot land on the other side of a kink from the float64
oracle; boxes too close are redrawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch

from dcnbench.errors import UsageError
from dcnbench.timing.limits import Cost
from dcnbench.ops.case import DTYPES, Case, drawn_values, non_finite_like
from dcnbench.ops.contract import ITEMSIZE

# Where RoIs lie, in image coordinates (map size / spatial_scale):
#   inside:    within the map, 10-70 % of its size
#   border:    centred on one of the four borders, in turn
#   outside:   half partly outside (across a corner), half wholly outside the map
#   tiny:      under one feature pixel; every third RoI has zero width or zero height
#   large:     larger than the map on every side
#   mixed:     each RoI from one of the five above
#   proposals: a detector's proposals: anywhere in the image, 32 px to the full image, clipped to it
ROI_KINDS = ("inside", "border", "outside", "tiny", "large", "mixed", "proposals")
_MIXED_FROM = ("inside", "border", "outside", "tiny", "large")


def c_round(x: torch.Tensor) -> torch.Tensor:
    """C's round(): halves away from zero (torch.round rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


@dataclass(frozen=True)
class Samples:
    """The points one sample index (iy, ix) places in every bin, and which bins it counts in."""

    y: torch.Tensor  # (K, [classes,] ph, pw)
    x: torch.Tensor
    active: torch.Tensor | None  # (K, 1, 1) bool for adaptive grids, None when every bin has it


@dataclass(frozen=True, kw_only=True)
class PoolCase(Case):
    """A RoI pooling case; each operator's subclass says how to call it and where its kinks are."""

    rois: str = "mixed"  # a ROI_KINDS distribution
    # offsets: "uniform" (normalised offsets ~ U(-scale, scale)) or "zero"
    # offset=None (deform_roi_pool) or no_trans=True (deform_psroi_pool, given non-zero trans to ignore)
    no_offset: bool = False
    kink_margin: float | None = 1e-4
    rois_file: str | None = None  # user RoIs (speed --rois) instead of drawn ones
    offset_file: str | None = None
    # "large": input values whose bin sums pass float16's range (case.py's LARGE_VALUES); None: N(0, 1). Left
    # out of the definition when None, so older cases keep their digests.
    values: str | None = None

    differentiable: ClassVar[tuple[str, ...]] = ("input", "offset")

    def inputs(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        return make_pool_inputs(self, device)

    def kinked(self, rois: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        """(K,) bool: RoIs with a sampling point (or a grid size) within kink_margin of a kink."""
        raise NotImplementedError

    def check_call(self, tensors: dict[str, torch.Tensor]) -> None:
        """Validate tensors for this case's op (raises ValueError, "got X, expected Y")."""
        raise NotImplementedError

    def samples_per_bin(self, rois: torch.Tensor) -> float:
        """The most sampling points one bin averages, for these RoIs (float: it may be absurdly large)."""
        raise NotImplementedError

    @property
    def keeps_offset_argument(self) -> bool:
        """Whether the offset tensor is passed at all (deform_roi_pool's no-offset call passes None)."""
        return True

    @classmethod
    def for_speed(cls, s) -> "PoolCase":
        """A detector's proposals, offsets uniform in ±offset_scale, or the user's files."""
        return cls(name="speed", geometry=s.geometry, dtype=s.dtype, rois="proposals", offset_scale=s.offset_scale,
                   seed=s.seed, kink_margin=None, rois_file=s.rois_file, offset_file=s.offset_file)

    @classmethod
    def suite(cls, seed: int, cases: dict[str, tuple[int, object, dict]], once: dict[str, tuple[int, object, dict]],
              float32_only: dict[str, tuple[int, object, dict]] | None = None,
              half_only: dict[str, tuple[int, object, dict]] | None = None) -> list:
        """Each of `cases` (name -> (seed, geometry, options)) in float64 and float32, each of `once` in
        float64 only, each of `float32_only` in float32 only, each of `half_only` in float16 and bfloat16."""
        found = []
        for name, (offset, geo, opts) in cases.items():
            base = cls(name=name, geometry=geo, seed=seed + offset, **opts)
            found += [replace(base, dtype=d) for d in ("float64", "float32")]
        for name, (offset, geo, opts) in once.items():
            found.append(cls(name=name, geometry=geo, seed=seed + offset, **opts))
        for name, (offset, geo, opts) in (float32_only or {}).items():
            found.append(cls(name=name, geometry=geo, seed=seed + offset, dtype="float32", **opts))
        for name, (offset, geo, opts) in (half_only or {}).items():
            base = cls(name=name, geometry=geo, seed=seed + offset, **opts)
            found += [replace(base, dtype=d) for d in ("float16", "bfloat16")]
        return found


def near(p: torch.Tensor, margin: float, lines: tuple[float, ...] = ()) -> torch.Tensor:
    """(K,) bool: RoIs with a point p (K, ...) within margin of an integer or of one of `lines`."""
    close = (p - torch.round(p)).abs() < margin
    for line in lines:
        close |= (p - line).abs() < margin
    return close.flatten(1).any(dim=1)


def _boxes(kinds: list[str], gen: torch.Generator, height: float, width: float, scale: float,
           indices: list[int] | None = None) -> torch.Tensor:
    """(len(kinds), 4) boxes x1, y1, x2, y2 in image coordinates, float64; `indices` are the RoIs'
    positions in the case (kinds that alternate by position keep doing so when a box is redrawn)."""
    rows = []
    for i, kind in zip(indices or range(len(kinds)), kinds):
        u = torch.rand(6, generator=gen, dtype=torch.float64).tolist()
        if kind == "mixed":
            kind = _MIXED_FROM[int(u[5] * len(_MIXED_FROM))]
        if kind == "inside":
            bw, bh = width * (0.1 + 0.6 * u[0]), height * (0.1 + 0.6 * u[1])
            x1, y1 = 0.5 + u[2] * (width - 2 - bw), 0.5 + u[3] * (height - 2 - bh)
            rows.append((x1, y1, x1 + bw, y1 + bh))
        elif kind == "border":
            bw, bh = width * (0.2 + 0.3 * u[0]), height * (0.2 + 0.3 * u[1])
            cx, cy = u[2] * width, u[3] * height
            cx, cy = [(0.0, cy), (width, cy), (cx, 0.0), (cx, height)][i % 4]
            rows.append((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
        elif kind == "outside":
            bw, bh = width * (0.2 + 0.3 * u[0]), height * (0.2 + 0.3 * u[1])
            if i % 2:  # across a corner
                x1, y1 = -bw * (0.3 + 0.4 * u[2]), height - bh * (0.3 + 0.4 * u[3])
            else:  # wholly outside, beyond the right edge or above the top
                x1, y1 = (width * (1.1 + 0.3 * u[2]), u[3] * height) if u[4] < 0.5 else (u[3] * width, -bh - height * (0.1 + 0.3 * u[2]))
            rows.append((x1, y1, x1 + bw, y1 + bh))
        elif kind == "tiny":
            bw, bh = 0.9 * u[0] / scale, 0.9 * u[1] / scale
            bw, bh = (0.0, bh) if i % 3 == 0 else (bw, 0.0) if i % 3 == 1 and i % 2 else (bw, bh)
            x1, y1 = u[2] * (width - 1), u[3] * (height - 1)
            rows.append((x1, y1, x1 + bw, y1 + bh))
        elif kind == "large":
            rows.append((-width * (0.2 + 0.5 * u[0]), -height * (0.2 + 0.5 * u[1]),
                         width * (1.2 + 0.5 * u[2]), height * (1.2 + 0.5 * u[3])))
        elif kind == "proposals":
            bw = math.exp(math.log(32.0) + u[0] * (math.log(max(width, 33.0)) - math.log(32.0)))
            bh = math.exp(math.log(32.0) + u[1] * (math.log(max(height, 33.0)) - math.log(32.0)))
            x1, y1 = u[2] * width - bw / 2, u[3] * height - bh / 2
            rows.append((max(x1, 0.0), max(y1, 0.0), min(x1 + bw, width - 1), min(y1 + bh, height - 1)))
        else:
            raise UsageError(f"unknown RoI distribution '{kind}'", hint=f"choose from: {', '.join(ROI_KINDS)}")
    return torch.tensor(rows, dtype=torch.float64).reshape(len(kinds), 4)


def load_tensor(path: str, what: str) -> torch.Tensor:
    p = Path(path)
    try:
        if p.suffix == ".npy":
            import numpy as np
            return torch.from_numpy(np.load(p)).double()
        if p.suffix == ".pt":
            t = torch.load(p, weights_only=True)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"holds a {type(t).__name__}, not a tensor")
            return t.double()
        if p.suffix in (".csv", ".txt"):
            import numpy as np
            return torch.from_numpy(np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)).double()
    except Exception as exc:
        raise UsageError(f"cannot read {what} from '{path}': {exc}", hint="give a .npy, .pt or .csv file") from None
    raise UsageError(f"cannot read {what} from '{path}': unknown file type", hint="give a .npy, .pt or .csv file")


def make_pool_inputs(case: PoolCase, device: str = "cpu") -> dict[str, torch.Tensor]:
    """input, rois and (unless offset=None) offset, in the case's dtype on `device` (fresh copies of
    one draw per case: drawing tens of thousands of RoIs takes seconds, and verify asks often)."""
    return {name: case.arrange(t.clone().to(device)) for name, t in _drawn(case).items()}


@lru_cache(maxsize=8)
def _drawn(case: PoolCase) -> dict[str, torch.Tensor]:
    geo = case.geometry
    gen = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    height, width = geo.h / geo.spatial_scale, geo.w / geo.spatial_scale
    x = torch.randn(geo.n, geo.c, geo.h, geo.w, generator=gen, dtype=torch.float64)
    x = drawn_values(x, case.values)  # "large": a bin averaging 28 samples or more sums past 65504
    kinds = [case.rois] * geo.rois
    if case.rois == "mixed":  # fix each RoI's kind once, so a redraw keeps it
        kinds = [_MIXED_FROM[int(v * len(_MIXED_FROM))] for v in torch.rand(geo.rois, generator=gen, dtype=torch.float64).tolist()]
    # A poisoned case keeps its last image out of every RoI (it holds the unread NaN/Inf pixels).
    images = geo.n - 1 if case.poison else geo.n
    if case.poison and images < 1:
        raise ValueError(f"{case.case_id}: a poisoned pooling case needs two images or more")
    batch = (torch.arange(geo.rois) % images)[torch.randperm(geo.rois, generator=gen)].double()

    def draw_offsets(k: int) -> torch.Tensor:
        s = case.offset_scale
        off = -s + 2 * s * torch.rand(k, *geo.offset_shape[1:], generator=gen, dtype=torch.float64)
        return torch.zeros_like(off) if case.offsets == "zero" else off

    def rounded(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).double()

    if case.rois_file:
        rois = load_tensor(case.rois_file, "RoIs")
    else:
        rois = rounded(torch.cat([batch[:, None], _boxes(kinds, gen, height, width, geo.spatial_scale)], dim=1))
    offset = rounded(draw_offsets(geo.rois)) if not case.offset_file else load_tensor(case.offset_file, "offsets")
    if case.kink_margin is not None and not case.rois_file and geo.rois:
        for _ in range(500):
            bad = case.kinked(rois, None if case.no_offset else offset)
            if not bool(bad.any()):
                break
            idx = bad.nonzero().flatten().tolist()
            fresh = _boxes([kinds[i] for i in idx], gen, height, width, geo.spatial_scale, idx)
            rois[idx, 1:] = rounded(fresh)
            if case.offsets != "zero":
                offset[idx] = rounded(draw_offsets(len(idx)))
        else:  # a suite case that cannot keep its margin would make verification flaky: say so
            raise RuntimeError(f"{case.case_id}: no RoIs found whose samples stay {case.kink_margin} from a kink")
    if case.poison:
        x[-1] = non_finite_like(x[-1])  # no RoI reads the last image
        if case.poison == "read":  # the centre pixel (all channels) of two RoIs: read by their samples
            for roi, value in zip(rois[:2], (float("inf"), float("nan"))):
                cx, cy = ((roi[1:3] + roi[3:5]) / 2 * geo.spatial_scale).tolist()
                x[int(roi[0]), :, min(max(int(cy), 0), geo.h - 1), min(max(int(cx), 0), geo.w - 1)] = value
    tensors = {"input": x, "rois": rois}
    if case.keeps_offset_argument:
        tensors["offset"] = offset
    return {name: t.to(dtype) for name, t in tensors.items()}


def check_files(case: PoolCase) -> None:
    """Validate RoIs/offsets a user gave by file against the workload: one clear line (exit 2)."""
    if not (case.rois_file or case.offset_file):
        return
    try:
        tensors = make_pool_inputs(case)
        case.check_call(tensors)
        if "offset" in tensors and not bool(tensors["offset"].isfinite().all()):
            # Timing a workload whose offsets place samples nowhere measures nothing the operator defines.
            raise ValueError("offsets contain NaN or infinity")
    except ValueError as exc:
        raise UsageError(f"invalid {' and '.join(f for f in (case.rois_file, case.offset_file) if f)}: {exc}",
                         hint="RoIs are (K, 5) rows (batch_index, x1, y1, x2, y2); offsets (K, 2, ph, pw) for "
                              "deform_roi_pool, (K, 2*classes, part, part) for deform_psroi_pool") from None


def geometry_for_files(geometry, files: dict[str, str]):
    """The workload with K taken from the user's RoI file (its shape is checked with the rest)."""
    if not files.get("rois"):
        return geometry
    t = load_tensor(files["rois"], "RoIs")
    return replace(geometry, rois=t.shape[0]) if t.dim() == 2 else geometry


def cost(case: PoolCase) -> Cost:
    """One forward and backward: the map and its gradient, the output, and the oracle's per-bin
    sample tables (four corners' indices and weights per sample) and bin x pixel matrices."""
    geo = case.geometry
    item = max(4, ITEMSIZE[case.dtype])
    per_bin = case.samples_per_bin(case.inputs("cpu")["rois"].double())
    bins = float(math.prod(geo.output_shape[2:])) * geo.rois * max(getattr(geo, "classes", 1), 1)
    tables = bins * per_bin * 4 * (8 + item)
    matrices = bins * geo.h * geo.w * item
    tensors = 2.0 * geo.n * geo.c * geo.h * geo.w + 2.0 * math.prod(geo.output_shape)
    return Cost(bytes=item * tensors + tables + matrices, samples_per_bin=per_bin)


def zero_offset(case: PoolCase):
    """The same operator with zero offsets passed explicitly (what offset=None / no_trans must equal)."""
    from dcnbench import ops

    oracle = ops.of(case).oracle

    def fn(input, rois, offset, **kwargs):
        kwargs.pop("no_trans", None)
        return oracle(input, rois, torch.zeros(case.geometry.offset_shape, dtype=input.dtype), **kwargs)

    return fn
