"""The two deformable RoI pooling operators: signatures, geometry, validation and sampling points.

Both pool a (K, 5) list of RoIs, rows (batch_index, x1, y1, x2, y2) in image coordinates, from an
(N, C, H, W) feature map into k x k bins, each bin shifted by a learned offset (the paper's Eq. 5-6):

    deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1)
        mmcv's operator. offset (K, 2, ph, pw) or None; channel 0 shifts x, channel 1 shifts y, by
        gamma * offset * RoI width (height). RoIAlign sampling: RoI = coordinates * scale - 0.5, no
        rounding; sampling_ratio^2 points per bin (0: ceil(RoI size / bins) per axis), centred in
        sub-bins; a point outside [-1, size] reads 0, others are clamped into the map.
        Output (K, C, ph, pw).

    deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size,
                      part_size=0, sample_per_part=1, trans_std=0.0, no_trans=False)
        MXNet's DeformablePSROIPooling (the authors'). trans (K, 2 * classes, part, part); channel
        2c shifts x and 2c+1 shifts y for the output channels of class c, by trans_std * trans * RoI
        width (height); bin (ph, pw) reads offset cell (ph * part // pooled, pw * part // pooled).
        RoI = round(x1) * scale - 0.5 .. (round(x2) + 1) * scale - 0.5 (round half away from zero),
        at least 0.1 wide; sample_per_part^2 points per bin at bin start + i * bin / sample_per_part;
        points outside [-0.5, size - 0.5] are skipped and the rest clamped into the map; the bin is
        the mean of the points kept (0 if none). Position-sensitive: output channel d of bin
        (ph, pw) reads input channel (d * group + gh) * group + gw, gh = ph * group // pooled, so
        C = output_dim * group^2; group_size = 1 is plain deformable RoI pooling.
        part_size 0 means pooled_size. no_trans ignores trans. Output (K, output_dim, pooled, pooled).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dcnbench.ops import pair

OP_DEFORM_ROI_POOL = "deform_roi_pool"
OP_DEFORM_PSROI_POOL = "deform_psroi_pool"


@dataclass(frozen=True)
class RoIPoolGeometry:
    """One deform_roi_pool call, apart from tensor values."""

    n: int
    c: int
    h: int
    w: int
    rois: int
    output_size: tuple[int, int] = (7, 7)
    spatial_scale: float = 1.0
    sampling_ratio: int = 0
    gamma: float = 0.1
    op: str = OP_DEFORM_ROI_POOL

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.rois, self.c, *self.output_size)

    @property
    def offset_shape(self) -> tuple[int, ...]:
        return (self.rois, 2, *self.output_size)

    def kwargs(self) -> dict:
        return {"output_size": self.output_size, "spatial_scale": self.spatial_scale,
                "sampling_ratio": self.sampling_ratio, "gamma": self.gamma}

    def problems(self) -> list[str]:
        found = _map_problems(self)
        if min(self.output_size) < 1:
            found.append(f"output_size {self.output_size} must be positive")
        if self.sampling_ratio < 0:
            found.append(f"sampling_ratio {self.sampling_ratio} must be >= 0 (0: adaptive)")
        return found

    @property
    def shape_text(self) -> str:
        ph, pw = self.output_size
        out = str(ph) if ph == pw else f"{ph}x{pw}"
        return f"{self.n},{self.c},{self.h},{self.w}:{self.rois},{out}:{self.spatial_scale:g},{self.sampling_ratio},{self.gamma:g}"


@dataclass(frozen=True)
class PSRoIPoolGeometry:
    """One deform_psroi_pool call, apart from tensor values (output_dim = C / group_size^2)."""

    n: int
    c: int
    h: int
    w: int
    rois: int
    pooled_size: int = 7
    spatial_scale: float = 0.0625
    sample_per_part: int = 4
    trans_std: float = 0.1
    group_size: int = 7
    part_size: int = 7
    classes: int = 1  # offset classes: trans has 2 * classes channels
    op: str = OP_DEFORM_PSROI_POOL

    @property
    def output_dim(self) -> int:
        return self.c // (self.group_size ** 2) if self.group_size > 0 else 0

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.rois, self.output_dim, self.pooled_size, self.pooled_size)

    @property
    def offset_shape(self) -> tuple[int, ...]:
        return (self.rois, 2 * self.classes, self.part_size, self.part_size)

    def kwargs(self) -> dict:
        return {"spatial_scale": self.spatial_scale, "output_dim": self.output_dim, "group_size": self.group_size,
                "pooled_size": self.pooled_size, "part_size": self.part_size,
                "sample_per_part": self.sample_per_part, "trans_std": self.trans_std}

    def problems(self) -> list[str]:
        found = _map_problems(self)
        if min(self.pooled_size, self.group_size, self.part_size, self.sample_per_part, self.classes) < 1:
            found.append("pooled_size, group_size, part_size, sample_per_part and classes must be positive")
        elif self.c % (self.group_size ** 2) or self.output_dim < 1:
            found.append(f"C={self.c} must be output_dim * group_size^2 = a positive multiple of {self.group_size ** 2}")
        elif self.output_dim % self.classes:
            found.append(f"classes={self.classes} must divide output_dim={self.output_dim}")
        return found

    @property
    def shape_text(self) -> str:
        return (f"{self.n},{self.c},{self.h},{self.w}:{self.rois},{self.pooled_size}:{self.spatial_scale:g},"
                f"{self.sample_per_part},{self.trans_std:g},{self.group_size},{self.part_size},{self.classes}")


PoolGeometry = RoIPoolGeometry | PSRoIPoolGeometry


def _map_problems(geo) -> list[str]:
    found = []
    if min(geo.n, geo.c, geo.h, geo.w) < 1 or geo.rois < 0:
        found.append("N, C, H and W must be positive and the RoI count >= 0")
    if not (geo.spatial_scale > 0 and math.isfinite(geo.spatial_scale)):
        found.append(f"spatial_scale {geo.spatial_scale} must be a positive number")
    return found


def pool_geometry_from_dict(d: dict) -> PoolGeometry:
    cls = RoIPoolGeometry if d["op"] == OP_DEFORM_ROI_POOL else PSRoIPoolGeometry
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ---- validation, torchvision-style: "got X, expected Y" ------------------------------------------


def _check_rois(input: torch.Tensor, rois: torch.Tensor) -> None:
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape (K, 5), rows (batch_index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    if rois.dtype != input.dtype or rois.device != input.device:
        raise ValueError(f"rois must match input's dtype and device, got {rois.dtype} on {rois.device}, "
                         f"expected {input.dtype} on {input.device}")
    if rois.shape[0]:
        index = rois[:, 0].detach()
        bad = (index != index.floor()) | (index < 0) | (index > input.shape[0] - 1)
        if bool(bad.any()):
            k = int(bad.nonzero()[0, 0])
            raise ValueError(f"rois[{k}, 0] = {float(index[k]):g} is not a batch index of the {input.shape[0]}-image input, "
                             f"expected an integer in [0, {input.shape[0] - 1}]")
        if not bool(torch.isfinite(rois.detach()).all()):
            raise ValueError("rois contain NaN or infinity")


def _check_offset(name: str, offset: torch.Tensor | None, input: torch.Tensor, expected: tuple[int, ...]) -> None:
    if offset is None:
        return
    if tuple(offset.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(offset.shape)}, expected {expected}")
    if offset.dtype != input.dtype or offset.device != input.device:
        raise ValueError(f"{name} must match input's dtype and device, got {offset.dtype} on {offset.device}")


def check_roi_pool_call(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1) -> RoIPoolGeometry:
    _check_rois(input, rois)
    n, c, h, w = input.shape
    geo = RoIPoolGeometry(n=n, c=c, h=h, w=w, rois=rois.shape[0], output_size=pair(output_size),
                          spatial_scale=float(spatial_scale), sampling_ratio=int(sampling_ratio), gamma=float(gamma))
    problems = geo.problems()
    if problems:
        raise ValueError("; ".join(problems))
    _check_offset("offset", offset, input, geo.offset_shape)
    return geo


def check_psroi_pool_call(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                          sample_per_part=1, trans_std=0.0, no_trans=False) -> PSRoIPoolGeometry:
    _check_rois(input, rois)
    n, c, h, w = input.shape
    part = int(part_size) or int(pooled_size)
    if trans is not None and not no_trans and (trans.dim() != 4 or trans.shape[1] < 2 or trans.shape[1] % 2):
        raise ValueError(f"trans must be (K, 2 * classes, part_size, part_size), got shape {tuple(trans.shape)}")
    classes = 1 if no_trans or trans is None else trans.shape[1] // 2
    if not no_trans and trans is None:
        raise ValueError("trans is None but no_trans is False: pass offsets, or no_trans=True")
    geo = PSRoIPoolGeometry(n=n, c=c, h=h, w=w, rois=rois.shape[0], pooled_size=int(pooled_size),
                            spatial_scale=float(spatial_scale), sample_per_part=int(sample_per_part),
                            trans_std=float(trans_std), group_size=int(group_size), part_size=part, classes=classes)
    problems = geo.problems()
    if problems:
        raise ValueError("; ".join(problems))
    if geo.output_dim != output_dim:
        raise ValueError(f"output_dim={output_dim} does not match the input's {c} channels: expected "
                         f"C / group_size^2 = {geo.output_dim}")
    if not no_trans:
        _check_offset("trans", trans, input, geo.offset_shape)
    return geo


# ---- where each operator samples (shared by the oracle and the workload generator) ----------------


def c_round(x: torch.Tensor) -> torch.Tensor:
    """C's round(): halves away from zero (torch.round rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


@dataclass(frozen=True)
class Samples:
    """The points one sample index (iy, ix) places in every bin, and which bins it counts in."""

    y: torch.Tensor  # (K, [classes,] ph, pw)
    x: torch.Tensor
    active: torch.Tensor | None  # (K, 1, 1) bool for adaptive grids, None when every bin has it


def roi_pool_samples(rois: torch.Tensor, offset: torch.Tensor | None,
                     geo: RoIPoolGeometry) -> tuple[Iterator[Samples], torch.Tensor]:
    """mmcv's sampling points, one sample index at a time, and each RoI's divisor (K,)."""
    s, (ph, pw) = geo.spatial_scale, geo.output_size
    x1, y1 = rois[:, 1] * s - 0.5, rois[:, 2] * s - 0.5
    roi_w, roi_h = rois[:, 3] * s - 0.5 - x1, rois[:, 4] * s - 0.5 - y1
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if geo.sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(roi_h, geo.sampling_ratio, dtype=torch.long)
    else:
        grid_h, grid_w = torch.ceil(roi_h / ph).long(), torch.ceil(roi_w / pw).long()
    count = torch.clamp(grid_h * grid_w, min=1).to(rois.dtype)
    start_y, start_x = y1[:, None, None], x1[:, None, None]
    if offset is not None:
        start_x = start_x + geo.gamma * roi_w[:, None, None] * offset[:, 0]
        start_y = start_y + geo.gamma * roi_h[:, None, None] * offset[:, 1]
    iy_base = torch.arange(ph, dtype=rois.dtype, device=rois.device)[None, :, None] * bin_h[:, None, None]
    ix_base = torch.arange(pw, dtype=rois.dtype, device=rois.device)[None, None, :] * bin_w[:, None, None]
    safe_h, safe_w = grid_h.clamp(min=1).to(rois.dtype), grid_w.clamp(min=1).to(rois.dtype)
    most_h = int(grid_h.max()) if grid_h.numel() else 0
    most_w = int(grid_w.max()) if grid_w.numel() else 0

    def points() -> Iterator[Samples]:
        for iy in range(most_h):
            y = start_y + iy_base + ((iy + 0.5) * bin_h / safe_h)[:, None, None]
            for ix in range(most_w):
                x = start_x + ix_base + ((ix + 0.5) * bin_w / safe_w)[:, None, None]
                active = None if geo.sampling_ratio > 0 else ((iy < grid_h) & (ix < grid_w))[:, None, None]
                yield Samples(*torch.broadcast_tensors(y, x), active)

    return points(), count


def psroi_bins(geo: PSRoIPoolGeometry, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(part cell, position-sensitive group) index of each bin row/column: (pooled,) each."""
    p = torch.arange(geo.pooled_size, device=device)
    part = p * geo.part_size // geo.pooled_size
    group = torch.clamp(p * geo.group_size // geo.pooled_size, 0, geo.group_size - 1)
    return part, group


def psroi_box(rois: torch.Tensor, spatial_scale: float) -> tuple[torch.Tensor, ...]:
    """MXNet's RoI on the map: (x1, y1, width, height), (K,) each; rounded, one pixel added, >= 0.1."""
    s = spatial_scale
    x1 = c_round(rois[:, 1]) * s - 0.5
    y1 = c_round(rois[:, 2]) * s - 0.5
    roi_w = torch.clamp((c_round(rois[:, 3]) + 1.0) * s - 0.5 - x1, min=0.1)
    roi_h = torch.clamp((c_round(rois[:, 4]) + 1.0) * s - 0.5 - y1, min=0.1)
    return x1, y1, roi_w, roi_h


def psroi_pool_samples(rois: torch.Tensor, trans: torch.Tensor | None, geo: PSRoIPoolGeometry,
                       no_trans: bool) -> Iterator[Samples]:
    """MXNet's sampling points (before skipping and clamping), (K, classes, pooled, pooled) each."""
    p, spp = geo.pooled_size, geo.sample_per_part
    x1, y1, roi_w, roi_h = psroi_box(rois, geo.spatial_scale)
    bin_w, bin_h = roi_w / p, roi_h / p
    sub_w, sub_h = bin_w / spp, bin_h / spp
    idx = torch.arange(p, dtype=rois.dtype, device=rois.device)
    wstart = idx[None, None, None, :] * bin_w[:, None, None, None] + x1[:, None, None, None]
    hstart = idx[None, None, :, None] * bin_h[:, None, None, None] + y1[:, None, None, None]
    if not no_trans and trans is not None:
        part, _ = psroi_bins(geo, rois.device)
        k, classes = trans.shape[0], trans.shape[1] // 2
        cells = trans.reshape(k, classes, 2, geo.part_size, geo.part_size)[:, :, :, part][:, :, :, :, part]
        wstart = wstart + cells[:, :, 0] * geo.trans_std * roi_w[:, None, None, None]
        hstart = hstart + cells[:, :, 1] * geo.trans_std * roi_h[:, None, None, None]
    wstart, hstart = torch.broadcast_tensors(wstart, hstart)
    for ih in range(spp):
        for iw in range(spp):
            yield Samples(hstart + ih * sub_h[:, None, None, None], wstart + iw * sub_w[:, None, None, None], None)


def psroi_rois_for_roi_align(rois: torch.Tensor, spatial_scale: float, pooled_size: int, sample_per_part: int) -> torch.Tensor:
    """RoIs on which torchvision's (ps_)roi_align samples where deform_psroi_pool with zero offsets does.

    roi_align(aligned=True) takes box * scale - 0.5 unrounded and centres its points in sub-bins;
    MXNet rounds the box, adds one pixel to its end and puts its points at sub-bin starts. Moving
    the box to MXNet's and back by half a sub-bin makes the points coincide.
    """
    s = spatial_scale
    x1, y1, roi_w, roi_h = psroi_box(rois, s)
    half_w, half_h = roi_w / pooled_size / sample_per_part / 2, roi_h / pooled_size / sample_per_part / 2
    nx1, ny1 = (x1 - half_w + 0.5) / s, (y1 - half_h + 0.5) / s
    return torch.stack([rois[:, 0], nx1, ny1, nx1 + roi_w / s, ny1 + roi_h / s], dim=1)
