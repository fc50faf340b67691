"""RoI pooling workloads: a frozen case spec, its seeded RoIs and offsets, shape grammar, presets.

RoIs are drawn in image coordinates (the map's size divided by spatial_scale) from named
distributions, so a case states where its boxes lie relative to the map. Like convolution cases,
every sampling point is kept a margin away from the operator's kinks (integers for both; also the
skip lines -0.5 and size-0.5 for MXNet's), so gradients are two-sided and a float32 kernel cannot
land on the other side of a kink from the float64 oracle; boxes too close are redrawn.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dcnbench.errors import UsageError
from dcnbench.roi_ops import (OP_DEFORM_PSROI_POOL, OP_DEFORM_ROI_POOL, PoolGeometry, PSRoIPoolGeometry,
                              RoIPoolGeometry, check_psroi_pool_call, check_roi_pool_call, pool_geometry_from_dict,
                              psroi_pool_samples, roi_pool_samples)
from dcnbench.workloads import DTYPES, digest_of, noncontiguous

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
POOL_CHECKS = ("oracle", "no_offset", "roi_align", "ps_roi_align", "gradcheck")
SHORT = {OP_DEFORM_ROI_POOL: "roi", OP_DEFORM_PSROI_POOL: "psroi"}


@dataclass(frozen=True)
class PoolCase:
    name: str
    geometry: PoolGeometry
    dtype: str = "float64"
    rois: str = "mixed"
    offsets: str = "uniform"  # "uniform": normalised offsets ~ U(-scale, scale); "zero"
    offset_scale: float = 1.0
    # offset=None (deform_roi_pool) or no_trans=True (deform_psroi_pool, given non-zero trans to ignore)
    no_offset: bool = False
    contiguous: bool = True
    check: str = "oracle"
    seed: int = 0
    kink_margin: float | None = 1e-4
    rois_file: str | None = None  # user RoIs (speed --rois) instead of drawn ones
    offset_file: str | None = None

    differentiable = ("input", "offset")

    @property
    def op(self) -> str:
        return self.geometry.op

    @property
    def case_id(self) -> str:
        return f"{self.name}/{self.dtype}"

    @property
    def variant(self) -> str:
        return SHORT[self.op]

    @property
    def shape_text(self) -> str:
        return self.geometry.shape_text

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.geometry.output_shape

    def definition(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "kink_margin"}

    def digest(self, **extra) -> str:
        return digest_of(self.definition() | extra)

    @classmethod
    def from_dict(cls, d: dict) -> "PoolCase":
        return cls(**{**d, "geometry": pool_geometry_from_dict(d["geometry"])})

    def inputs(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        return make_pool_inputs(self, device)

    def call(self, fn, t: dict[str, torch.Tensor]):
        geo = self.geometry
        if geo.op == OP_DEFORM_ROI_POOL:
            return fn(t["input"], t["rois"], t.get("offset"), **geo.kwargs())
        return fn(t["input"], t["rois"], t.get("offset"), **geo.kwargs(), no_trans=self.no_offset)


# ---- drawing RoIs and offsets ---------------------------------------------------------------------


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


def _kinked(case: PoolCase, rois: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """(K,) bool: RoIs with a sampling point (or, for adaptive grids, a grid size) near a kink."""
    geo, margin = case.geometry, case.kink_margin
    bad = torch.zeros(rois.shape[0], dtype=torch.bool)

    def near(p: torch.Tensor, lines: tuple[float, ...] = ()) -> torch.Tensor:
        close = (p - torch.round(p)).abs() < margin
        for line in lines:
            close |= (p - line).abs() < margin
        return close.flatten(1).any(dim=1)

    if geo.op == OP_DEFORM_ROI_POOL:
        points, _ = roi_pool_samples(rois, None if case.no_offset else offset, geo)
        for pt in points:
            active = pt.active if pt.active is not None else torch.ones_like(pt.y, dtype=torch.bool)
            bad |= near(torch.where(active, pt.y, 0.5)) | near(torch.where(active, pt.x, 0.5))
        if geo.sampling_ratio == 0:  # ceil(size / bins) must not depend on the last bit
            s = geo.spatial_scale
            for size, bins in ((rois[:, 4] * s - rois[:, 2] * s, geo.output_size[0]), (rois[:, 3] * s - rois[:, 1] * s, geo.output_size[1])):
                ratio = size / bins
                bad |= ((ratio - torch.round(ratio)).abs() < margin) & (ratio.abs() > margin)
    else:
        for pt in psroi_pool_samples(rois, offset, geo, case.no_offset):
            bad |= near(pt.y, (-0.5, geo.h - 0.5)) | near(pt.x, (-0.5, geo.w - 0.5))
    return bad


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
    """input, rois and (unless offset=None) offset, in the case's dtype on `device`."""
    geo = case.geometry
    gen = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    height, width = geo.h / geo.spatial_scale, geo.w / geo.spatial_scale
    x = torch.randn(geo.n, geo.c, geo.h, geo.w, generator=gen, dtype=torch.float64)
    kinds = [case.rois] * geo.rois
    if case.rois == "mixed":  # fix each RoI's kind once, so a redraw keeps it
        kinds = [_MIXED_FROM[int(v * len(_MIXED_FROM))] for v in torch.rand(geo.rois, generator=gen, dtype=torch.float64).tolist()]
    batch = (torch.arange(geo.rois) % geo.n)[torch.randperm(geo.rois, generator=gen)].double()

    def draw_offsets(k: int) -> torch.Tensor:
        s = case.offset_scale
        off = -s + 2 * s * torch.rand(k, *geo.offset_shape[1:], generator=gen, dtype=torch.float64)
        return torch.zeros_like(off) if case.offsets == "zero" else off

    def rounded(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).double()

    if case.rois_file:
        boxes = load_tensor(case.rois_file, "RoIs")
        rois = boxes
    else:
        rois = rounded(torch.cat([batch[:, None], _boxes(kinds, gen, height, width, geo.spatial_scale)], dim=1))
    offset = rounded(draw_offsets(geo.rois)) if not case.offset_file else load_tensor(case.offset_file, "offsets")
    if case.kink_margin is not None and not case.rois_file and geo.rois:
        for _ in range(500):
            bad = _kinked(case, rois, offset)
            if not bool(bad.any()):
                break
            idx = bad.nonzero().flatten().tolist()
            fresh = _boxes([kinds[i] for i in idx], gen, height, width, geo.spatial_scale, idx)
            rois[idx, 1:] = rounded(fresh)
            if case.offsets != "zero":
                offset[idx] = rounded(draw_offsets(len(idx)))
        else:  # a suite case that cannot keep its margin would make verification flaky: say so
            raise RuntimeError(f"{case.case_id}: no RoIs found whose samples stay {case.kink_margin} from a kink")
    tensors = {"input": x, "rois": rois}
    if not (case.no_offset and geo.op == OP_DEFORM_ROI_POOL):
        tensors["offset"] = offset
    out = {}
    for name, t in tensors.items():
        t = t.to(dtype).to(device)
        out[name] = t if case.contiguous else noncontiguous(t)
    return out


def check_user_inputs(case: PoolCase) -> None:
    """Validate RoIs/offsets a user gave by file against the workload: one clear line (exit 2)."""
    if not (case.rois_file or case.offset_file):
        return
    t = make_pool_inputs(case)
    try:
        if case.op == OP_DEFORM_ROI_POOL:
            check_roi_pool_call(t["input"], t["rois"], t.get("offset"), **case.geometry.kwargs())
        else:
            check_psroi_pool_call(t["input"], t["rois"], t.get("offset"), **case.geometry.kwargs(), no_trans=case.no_offset)
    except ValueError as exc:
        raise UsageError(f"invalid {' and '.join(f for f in (case.rois_file, case.offset_file) if f)}: {exc}",
                         hint="RoIs are (K, 5) rows (batch_index, x1, y1, x2, y2); offsets (K, 2, ph, pw) for "
                              "deform_roi_pool, (K, 2*classes, part, part) for deform_psroi_pool") from None


# ---- shape grammar and presets -------------------------------------------------------------------

POOL_GRAMMAR = {
    OP_DEFORM_ROI_POOL: "N,C,H,W:K,PH[xPW][:spatial_scale[,sampling_ratio[,gamma]]]",
    OP_DEFORM_PSROI_POOL: "N,C,H,W:K,pooled[:spatial_scale[,sample_per_part[,trans_std[,group_size[,part_size[,classes]]]]]]",
}
_EXAMPLE = {OP_DEFORM_ROI_POOL: "1,256,38,63:300,7:0.0625,2,0.1", OP_DEFORM_PSROI_POOL: "1,1029,38,63:300,7:0.0625,4,0.1,7,7"}


def parse_pool_shape(op: str, spec: str) -> PoolGeometry:
    hint = f"write {POOL_GRAMMAR[op]}, e.g. {_EXAMPLE[op]}"
    parts = spec.strip().split(":")
    if len(parts) not in (2, 3):
        raise UsageError(f"malformed --shape '{spec}' for {op}: expected 2 or 3 ':'-separated parts", hint=hint)

    def num(text: str, kind=int):
        try:
            return kind(text.strip())
        except ValueError:
            raise UsageError(f"malformed --shape '{spec}': '{text}' is not {'an integer' if kind is int else 'a number'}",
                             hint=hint) from None

    head = parts[0].split(",")
    body = parts[1].split(",")
    if len(head) != 4 or len(body) != 2:
        raise UsageError(f"malformed --shape '{spec}': expected N,C,H,W then K,bins", hint=hint)
    n, c, h, w = (num(t) for t in head)
    k = num(body[0])
    extra = parts[2].split(",") if len(parts) == 3 else []
    if op == OP_DEFORM_ROI_POOL:
        a, _, b = body[1].partition("x")
        size = (num(a), num(b or a))
        if len(extra) > 3:
            raise UsageError(f"malformed --shape '{spec}': at most spatial_scale,sampling_ratio,gamma", hint=hint)
        kinds = (float, int, float)
        names = ("spatial_scale", "sampling_ratio", "gamma")
        values = {"spatial_scale": 0.0625} | dict(zip(names, [num(t, kind) for kind, t in zip(kinds, extra)]))
        geo = RoIPoolGeometry(n=n, c=c, h=h, w=w, rois=k, output_size=size, **values)
    else:
        if len(extra) > 6:
            raise UsageError(f"malformed --shape '{spec}': too many values after the second ':'", hint=hint)
        kinds = (float, int, float, int, int, int)
        names = ("spatial_scale", "sample_per_part", "trans_std", "group_size", "part_size", "classes")
        values = dict(zip(names, [num(t, kind) for kind, t in zip(kinds, extra)]))
        pooled = num(body[1])
        values.setdefault("group_size", pooled)
        values.setdefault("part_size", pooled)
        geo = PSRoIPoolGeometry(n=n, c=c, h=h, w=w, rois=k, pooled_size=pooled, **values)
    problems = geo.problems()
    if problems:
        raise UsageError(f"invalid --shape '{spec}' for {op}: {'; '.join(problems)}", hint=hint)
    return geo


# Named workloads (DCN.md section 3): each times both pooling operators on the same map and RoIs.
POOL_PRESETS: dict[str, tuple[PoolGeometry, ...]] = {
    # R-FCN head on ResNet-101 (600x1000 image, stride 16: a 38x63 map), 300 RoIs, 7x7 bins. The
    # position-sensitive map has 7*7*(20+1) = 1029 channels (VOC); mmcv's operator pools 1024.
    "rfcn": (
        PSRoIPoolGeometry(n=1, c=1029, h=38, w=63, rois=300, pooled_size=7, spatial_scale=0.0625, sample_per_part=4,
                          trans_std=0.1, group_size=7, part_size=7),
        RoIPoolGeometry(n=1, c=1024, h=38, w=63, rois=300, output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=0),
    ),
    # The authors' deformable Faster R-CNN head: plain deformable RoI pooling (group_size 1) of 256 channels.
    "faster-rcnn": (
        PSRoIPoolGeometry(n=1, c=256, h=38, w=63, rois=300, pooled_size=7, spatial_scale=0.0625, sample_per_part=4,
                          trans_std=0.1, group_size=1, part_size=7),
        RoIPoolGeometry(n=1, c=256, h=38, w=63, rois=300, output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=0),
    ),
}


def speed_pool_case(geo: PoolGeometry, dtype: str, seed: int, offset_scale: float,
                    rois_file: str | None = None, offset_file: str | None = None) -> PoolCase:
    return PoolCase(name="speed", geometry=geo, dtype=dtype, rois="proposals", offset_scale=offset_scale, seed=seed,
                    kink_margin=None, rois_file=rois_file, offset_file=offset_file)
