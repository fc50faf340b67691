"""DCNv3 in pure PyTorch: the float64 oracle (and, as the `pytorch` backend, a usable kernel); DCNv4's
oracle unpacks its offset_mask and calls the same core.

Written from the semantics in contract.py, following the CUDA kernels (what users run) where
InternImage's own PyTorch reference `dcnv3_core_pytorch` departs from them (it pads H by pad_w and
W by pad_h, and builds its sampling grid in float32). Vectorised over batch, positions, groups,
points and channels; the only Python loop is over the four bilinear corners (and over batch
chunks of im2col_step images, which bound memory and change no value). Autograd gives every
gradient.

NaN and infinity travel as in the kernels: a point whose position fails the pre-test
(−1 < y < H, −1 < x < W; NaN fails it) adds nothing, an out-of-map corner is never read, and an
in-map corner is read even where its weight is 0 (so an infinite pixel gives NaN there, as in CUDA).
"""

from __future__ import annotations

import torch

from dcnbench.ops.dcnv3.contract import GroupGeometry, check_call, float32, kernel_points
from dcnbench.ops.sampling import compute_dtype


def positions(offset: torch.Tensor, geo: GroupGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling coordinates y, x (N, Ho, Wo, G, P) from offsets (N, Ho, Wo, G, P, 2) = (dx, dy).

    Evaluated in the kernels' order, (p0 − c·os) + (k·dil + offset)·os, with os rounded to float32.
    """
    dt, dev = offset.dtype, offset.device
    os_ = float32(geo.offset_scale)
    cy = geo.dilation[0] * (geo.kh - 1) // 2
    cx = geo.dilation[1] * (geo.kw - 1) // 2
    pts = kernel_points(geo.kh, geo.kw, geo.remove_center)
    ki = torch.tensor([i * geo.dilation[1] for i, _ in pts], dtype=dt, device=dev)
    kj = torch.tensor([j * geo.dilation[0] for _, j in pts], dtype=dt, device=dev)
    p0x = torch.arange(geo.wo, dtype=dt, device=dev) * geo.stride[1] + (cx - geo.padding[1]) - cx * os_
    p0y = torch.arange(geo.ho, dtype=dt, device=dev) * geo.stride[0] + (cy - geo.padding[0]) - cy * os_
    x = p0x.view(1, 1, -1, 1, 1) + (ki + offset[..., 0]) * os_
    y = p0y.view(1, -1, 1, 1, 1) + (kj + offset[..., 1]) * os_
    return y, x


def aggregate(value: torch.Tensor, y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ_p weight · bilinear(value at (y, x)) per group, under rule Z with the kernels' pre-test.

    value (N, H, W, G, D); y, x, weight (N, Ho, Wo, G, P) -> (N, Ho, Wo, G, D). Each point's
    corner weights are computed once and shared by its group's D channels.
    """
    n, h, w, g, d = value.shape
    valid = (y > -1) & (x > -1) & (y < h) & (x < w)  # False for NaN too
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    ys, xs = torch.where(valid, y, zero), torch.where(valid, x, zero)  # no gradient reaches invalid points
    y0, x0 = torch.floor(ys).detach(), torch.floor(xs).detach()
    ly, lx = ys - y0, xs - x0
    # Rows of D channels: row (n·H·W + pixel)·G + g. index_select's backward (index_add) is
    # deterministic on the CPU, where advanced indexing's (index_put with accumulate) is not.
    rows = value.reshape(n * h * w * g, d)
    first = (torch.arange(n, device=y.device).view(n, 1, 1, 1, 1) * (h * w)) * g \
        + torch.arange(g, device=y.device).view(1, 1, 1, g, 1)
    out = None
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yi, xi = y0 + dy, x0 + dx
            read = valid & (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
            index = first + (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long() * g
            picked = rows.index_select(0, index.reshape(-1)).reshape(*index.shape, d)
            # A corner that is not read contributes an exact 0, even where the clamped pixel is NaN.
            v = torch.where(read.unsqueeze(-1), picked, zero.to(value.dtype))
            term = torch.einsum("nhwgp,nhwgpd->nhwgd", wy * wx * weight, v)
            out = term if out is None else out + term
    return out


def core(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geo: GroupGeometry) -> torch.Tensor:
    """The op on validated tensors: offset (N, Ho, Wo, G, P, 2), mask (N, Ho, Wo, G, P), both in
    the compute dtype -> (N, Ho, Wo, C) in the compute dtype."""
    value = input.to(offset.dtype).reshape(geo.n, geo.h, geo.w, geo.group, geo.group_channels)
    step = max(1, min(geo.n, geo.im2col_step))
    chunks = []
    for b in range(0, max(geo.n, 1), step):  # bounds memory only: no value depends on the chunking
        y, x = positions(offset[b:b + step], geo)
        chunks.append(aggregate(value[b:b + step], y, x, mask[b:b + step]))
    return torch.cat(chunks).reshape(geo.output_shape)


def dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
          group, group_channels, offset_scale, im2col_step, remove_center):
    geo = check_call(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                     group, group_channels, offset_scale, im2col_step, remove_center)
    compute = compute_dtype(input.dtype)
    shape = (geo.n, geo.ho, geo.wo, geo.group, geo.points)
    out = core(input, offset.to(compute).reshape(*shape, 2), mask.to(compute).reshape(shape), geo)
    return out.to(input.dtype)
