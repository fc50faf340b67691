"""Pure-PyTorch deform_conv2d: the float64 oracle and a usable backend.

Vectorised over batch, channels and positions; the only Python loop is over the four bilinear
corners. Autograd provides every gradient. Two boundary rules (DCN.md):

- rule Z, the paper's Eq. 3-4 and the default: a corner outside the map contributes zero, so the
  sample fades linearly to zero over the band -1 < p < 0 (and H-1 < p < H) and is zero beyond;
- rule C, MXNet's DCNv1 (the authors' first operator): the sample is zero unless 0 <= p < H, and a
  point with floor(p) >= H-1 reads row H-1 at full weight (so its offset gradient is zero there).
"""

from __future__ import annotations

import torch

from dcnbench.ops import OP_DEFORM_CONV2D, check_call
from dcnbench.registry import ALL_DTYPES, Backend, local_devices
from dcnbench.roi_ops import (OP_DEFORM_PSROI_POOL, OP_DEFORM_ROI_POOL, check_psroi_pool_call, check_roi_pool_call,
                              psroi_bins, psroi_pool_samples, roi_pool_samples)

# Half types are computed in float32 and rounded once at the end, so the backend is as accurate
# as its inputs allow rather than accumulating in half precision.
_COMPUTE_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


RULES = ("Z", "C")


def _clamp_high(p: torch.Tensor, p0: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rule C: a point with floor(p) >= size-1 becomes exactly size-1 (a constant: no gradient)."""
    high = p0 >= size - 1
    last = torch.full_like(p, size - 1)
    return torch.where(high, last, p), torch.where(high, last, p0)


def bilinear_sample(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor, scale: torch.Tensor | None = None,
                    rule: str = "Z") -> torch.Tensor:
    """Sample x (B, Cg, H, W) at points (B, P) by bilinear interpolation under `rule` -> (B, Cg, P).

    `scale` (B, P) multiplies each sample (the DCNv2 mask); folding it into the four corner
    weights costs O(B*P) instead of a pass over all channels.
    """
    b, cg, h, w = x.shape
    flat = x.reshape(b, cg, h * w)
    y0, x0 = torch.floor(py), torch.floor(px)
    if rule == "C":
        inside_map = ((py >= 0) & (py < h) & (px >= 0) & (px < w)).to(py.dtype)
        scale = inside_map if scale is None else scale * inside_map
        py, y0 = _clamp_high(py, y0, h)
        px, x0 = _clamp_high(px, x0, w)
    elif rule != "Z":
        raise ValueError(f"unknown boundary rule {rule!r}, expected one of {RULES}")
    ly, lx = py - y0, px - x0
    out = None
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yi, xi = y0 + dy, x0 + dx
            inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
            index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
            weight = wy * wx * inside.to(py.dtype)
            if scale is not None:
                weight = weight * scale
            values = flat.gather(2, index.unsqueeze(1).expand(b, cg, index.shape[1]))
            term = values * weight.unsqueeze(1)
            out = term if out is None else out + term
    return out


def sampling_points(offset: torch.Tensor, geo) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute sampling coordinates (N, G, K, Ho, Wo) for py and px."""
    g, k, ho, wo = geo.offset_groups, geo.taps, geo.ho, geo.wo
    off = offset.reshape(geo.n, g, k, 2, ho, wo)
    dev, dt = offset.device, offset.dtype
    tap_i = torch.arange(geo.kh, device=dev, dtype=dt).repeat_interleave(geo.kw)  # taps row-major
    tap_j = torch.arange(geo.kw, device=dev, dtype=dt).repeat(geo.kh)
    out_y = torch.arange(ho, device=dev, dtype=dt)
    out_x = torch.arange(wo, device=dev, dtype=dt)
    base_y = out_y[None, :] * geo.stride[0] - geo.padding[0] + tap_i[:, None] * geo.dilation[0]  # (K, Ho)
    base_x = out_x[None, :] * geo.stride[1] - geo.padding[1] + tap_j[:, None] * geo.dilation[1]  # (K, Wo)
    py = base_y[None, None, :, :, None] + off[:, :, :, 0]
    px = base_x[None, None, :, None, :] + off[:, :, :, 1]
    return py, px


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None,
                  *, rule: str = "Z"):
    geo = check_call(input, offset, weight, bias, stride, padding, dilation, mask)
    out_dtype = input.dtype
    compute = _COMPUTE_DTYPE.get(out_dtype, out_dtype)
    x, offset, weight = input.to(compute), offset.to(compute), weight.to(compute)
    n, c, g, k, l = geo.n, geo.c, geo.offset_groups, geo.taps, geo.ho * geo.wo

    py, px = sampling_points(offset, geo)
    scale = None if mask is None else mask.to(compute).reshape(n * g, k * l)
    # Each offset group samples its own C/G channels at its own points: (N*G, C/G, K*L).
    cols = bilinear_sample(x.reshape(n * g, c // g, geo.h, geo.w), py.reshape(n * g, k * l), px.reshape(n * g, k * l), scale, rule)
    # Column c*K + k matches weight (O, C/groups, kh, kw) flattened, so each group is one matmul.
    cols = cols.reshape(n, geo.groups, (c // geo.groups) * k, l)
    wmat = weight.reshape(geo.groups, geo.o // geo.groups, (c // geo.groups) * k)
    out = torch.matmul(wmat.unsqueeze(0), cols).reshape(n, geo.o, geo.ho, geo.wo)
    if bias is not None:
        out = out + bias.to(compute).reshape(1, -1, 1, 1)
    return out.to(out_dtype)


# ---- deformable RoI pooling ---------------------------------------------------------------------
# Each sampling point's corner indices and weights are computed once and shared by every channel
# that reads the same point.


def _pool_rows(index: torch.Tensor, weight: torch.Tensor, image: torch.Tensor, group: torch.Tensor,
               table: torch.Tensor) -> torch.Tensor:
    """Each bin row's weighted sum of pixels: (R, D).

    index/weight (R, S): the row's samples' corner pixels (y*W + x) and weights; image/group (R,):
    which image and which position-sensitive channel group the row reads; table (N, groups, HW, D).
    Per (image, group), the rows' weights are scattered into a (rows x HW) matrix and multiplied
    with the map: channels become one matmul, and autograd keeps that matrix rather than a
    gathered copy of the map per sample.
    """
    n_images, groups, hw, d = table.shape
    out = torch.zeros(index.shape[0], d, dtype=table.dtype, device=table.device)
    for n in range(n_images):
        for g in range(groups):
            rows = ((image == n) & (group == g)).nonzero().flatten()
            if rows.numel():
                matrix = torch.zeros(rows.numel(), hw, dtype=table.dtype, device=table.device)
                matrix = matrix.scatter_add(1, index[rows], weight[rows])
                out = out.index_copy(0, rows, torch.matmul(matrix, table[n, g]))
    return out


def _roialign_corners(y, x, h: int, w: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """mmcv's (RoIAlign's) bilinear read at (y, x): four (pixel index y*w+x, weight) pairs.

    0 outside [-1, size]; a coordinate in [-1, 0] reads as 0 and one past size-1 as size-1
    (clamped coordinates are constants, so they carry no offset gradient).
    """
    valid = ((y >= -1) & (y <= h) & (x >= -1) & (x <= w)).to(y.dtype)
    axes = []
    for p, size in ((y, h), (x, w)):
        p = torch.where(p <= 0, torch.zeros_like(p), p)
        low = torch.floor(p)
        high_edge = low >= size - 1
        last = torch.full_like(p, size - 1)
        p, low = torch.where(high_edge, last, p), torch.where(high_edge, last, low)
        high = torch.where(high_edge, last, low + 1)
        frac = p - low
        axes.append(((low.long().clamp(0, size - 1), 1 - frac), (high.long().clamp(0, size - 1), frac)))
    return [(yi * w + xi, wy * wx * valid) for yi, wy in axes[0] for xi, wx in axes[1]]


def deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    geo = check_roi_pool_call(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)
    out_dtype = input.dtype
    compute = _COMPUTE_DTYPE.get(out_dtype, out_dtype)
    k, c = geo.rois, geo.c
    bins = geo.output_size[0] * geo.output_size[1]
    table = input.to(compute).reshape(geo.n, 1, c, geo.h * geo.w).transpose(2, 3)
    rois = rois.detach().to(compute)
    offset = None if offset is None else offset.to(compute)
    points, count = roi_pool_samples(rois, offset, geo)
    index, weight = [], []
    for pt in points:
        for pixel, wt in _roialign_corners(pt.y, pt.x, geo.h, geo.w):
            index.append(pixel)
            weight.append(wt if pt.active is None else wt * pt.active.to(compute))
    if not index:  # no RoI has a sample: zeros, still connected to the input for autograd
        return (table.sum() * 0).expand(k, c, *geo.output_size).to(out_dtype)
    index = torch.stack(index, dim=-1).reshape(k * bins, -1)
    weight = (torch.stack(weight, dim=-1) / count.reshape(-1, 1, 1, 1)).reshape(k * bins, -1)
    image = rois[:, 0].long().repeat_interleave(bins)
    out = _pool_rows(index, weight, image, torch.zeros_like(image), table)
    return out.reshape(k, *geo.output_size, c).permute(0, 3, 1, 2).contiguous().to(out_dtype)


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                      sample_per_part=1, trans_std=0.0, no_trans=False):
    geo = check_psroi_pool_call(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                                sample_per_part, trans_std, no_trans)
    out_dtype = input.dtype
    compute = _COMPUTE_DTYPE.get(out_dtype, out_dtype)
    g, p, d, h, w, k = geo.group_size, geo.pooled_size, geo.output_dim, geo.h, geo.w, geo.rois
    classes = 1 if no_trans else geo.classes
    # Input channel (c * g + gh) * g + gw: a (N, g*g, HW, output_dim) table per channel group.
    table = input.to(compute).reshape(geo.n, d, g * g, h * w).permute(0, 2, 3, 1)
    rois = rois.detach().to(compute)
    trans = None if no_trans else trans.to(compute)
    index, weight, count = [], [], None
    for pt in psroi_pool_samples(rois, trans, geo, no_trans):
        keep = (~((pt.x < -0.5) | (pt.x > w - 0.5) | (pt.y < -0.5) | (pt.y > h - 0.5))).to(compute)
        x, y = pt.x.clamp(0, w - 1), pt.y.clamp(0, h - 1)
        x0, y0 = torch.floor(x), torch.floor(y)
        dx, dy = x - x0, y - y0
        for yi, wy in ((y0, 1 - dy), (torch.ceil(y), dy)):  # MXNet's corners: floor and ceil
            for xi, wx in ((x0, 1 - dx), (torch.ceil(x), dx)):
                index.append(yi.long() * w + xi.long())
                weight.append(wy * wx * keep)
        count = keep if count is None else count + keep
    rows = k * classes * p * p
    index = torch.stack(index, dim=-1).reshape(rows, -1)
    weight = (torch.stack(weight, dim=-1) / count.clamp(min=1).unsqueeze(-1)).reshape(rows, -1)
    _, gp = psroi_bins(geo, input.device)
    group = (gp[:, None] * g + gp[None, :]).expand(k, classes, p, p).reshape(-1)
    image = rois[:, 0].long().reshape(-1, 1, 1, 1).expand(k, classes, p, p).reshape(-1)
    out = _pool_rows(index, weight, image, group, table)  # (rows, d)
    # Bin rows are per offset class; output channel c belongs to class c // (d / classes).
    out = out.reshape(k, classes, p, p, classes, d // classes).diagonal(dim1=1, dim2=4)  # (K, p, p, d/cls, cls)
    return out.permute(0, 4, 3, 1, 2).reshape(k, d, p, p).contiguous().to(out_dtype)


def backend() -> Backend:
    return Backend(
        name="pytorch",
        description="pure PyTorch, vectorised, autograd backward; float64 on the CPU is the oracle",
        ops={OP_DEFORM_CONV2D: deform_conv2d, OP_DEFORM_ROI_POOL: deform_roi_pool,
             OP_DEFORM_PSROI_POOL: deform_psroi_pool},
        dtypes=local_devices(ALL_DTYPES),
        version=torch.__version__,
    )
