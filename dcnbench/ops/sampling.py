"""Pure-PyTorch sampling pieces the oracles share: the bilinear sampler under the paper's rule Z
(and MXNet DCNv1's rule C), and the per-bin pooling matmul of the RoI pooling oracles.

Non-finite values (README "Non-finite values"): a sample reads the pixels at the corners of its
bilinear cell inside the map and nothing else, so a NaN or Inf pixel reaches exactly the outputs
(and gradients) whose samples read it. Both pieces keep it so: the sampler never multiplies a pixel
outside the map by its zero weight, and the pooling product multiplies a bin's weights only with
the pixels the bin reads. A sampling point that is not finite reads nothing and makes its output
NaN."""

from __future__ import annotations

import math

import torch

RULES = ("Z", "C")

# Half types are computed in float32 and rounded once at the end, so an oracle run as a backend is
# as accurate as its inputs allow rather than accumulating in half precision.
COMPUTE_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return COMPUTE_DTYPE.get(dtype, dtype)


def _clamp_high(p: torch.Tensor, p0: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rule C: a point with floor(p) >= size-1 becomes exactly size-1 (a constant: no gradient)."""
    high = p0 >= size - 1
    last = torch.full_like(p, size - 1)
    return torch.where(high, last, p), torch.where(high, last, p0)


def bilinear_sample(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor, scale: torch.Tensor | None = None,
                    rule: str = "Z") -> torch.Tensor:
    """Sample x (B, Cg, H, W) at points (B, P) by bilinear interpolation under `rule` -> (B, Cg, P).

    Rule Z (the paper's Eq. 3-4): a corner outside the map contributes zero, so the sample fades
    linearly to zero over the band -1 < p < 0 (and H-1 < p < H) and is zero beyond. Rule C (MXNet's
    DCNv1): zero unless 0 <= p < H, and floor(p) >= H-1 reads row H-1 at full weight.
    `scale` (B, P) multiplies each sample (the DCNv2 mask); folding it into the four corner
    weights costs O(B*P) instead of a pass over all channels.
    """
    b, cg, h, w = x.shape
    flat = x.reshape(b, cg, h * w)
    point_y, point_x = py, px
    y0, x0 = torch.floor(py), torch.floor(px)
    support = None
    if rule == "C":
        support = (py >= 0) & (py < h) & (px >= 0) & (px < w)  # a sample outside reads nothing
        inside_map = support.to(py.dtype)
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
            inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)  # False for a point that is not finite
            if support is not None:
                inside = inside & support
            index = (torch.nan_to_num(yi).clamp(0, h - 1) * w + torch.nan_to_num(xi).clamp(0, w - 1)).long()
            weight, _ = nan_if_not_finite(wy * wx * inside.to(py.dtype), point_y, point_x)
            if scale is not None:
                weight = weight * scale
            values = flat.gather(2, index.unsqueeze(1).expand(b, cg, index.shape[1]))
            # A corner outside the map is not read: its clamped stand-in must not meet its zero weight.
            term = torch.where(inside.unsqueeze(1), values, 0) * weight.unsqueeze(1)
            out = term if out is None else out + term
    return out


class _ReadProduct(torch.autograd.Function):
    """matrix @ table where only the (row, pixel) pairs in `reads` meet: out[r] = sum over the pixels
    q that row r reads of matrix[r, q] * table[q]. A plain matmul multiplies every row's zeros with
    every pixel, so one non-finite pixel (or one non-finite incoming gradient row) would reach all.
    Finite values go through the matmul; pixels (gradient rows) holding a non-finite value are added
    separately, only where they are read."""

    @staticmethod
    def forward(ctx, matrix, reads, table):
        ctx.save_for_backward(matrix, reads, table)
        return _read_product(matrix, reads, table)

    @staticmethod
    def backward(ctx, grad):
        matrix, reads, table = ctx.saved_tensors
        # d out[r] / d matrix[r, q] = table[q]; only the entries of read pixels are used upstream.
        grad_matrix = grad @ table.transpose(0, 1) if ctx.needs_input_grad[0] else None
        grad_table = _read_product(matrix.transpose(0, 1), reads.transpose(0, 1), grad) if ctx.needs_input_grad[2] else None
        return grad_matrix, None, grad_table


def _read_product(matrix: torch.Tensor, reads: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    finite = torch.isfinite(table)
    out = matrix @ torch.where(finite, table, 0)
    bad = (~finite).any(dim=1).nonzero().flatten()
    for chunk in bad.split(64):  # (rows x 64 x columns) at a time
        odd = torch.where(finite[chunk], 0, table[chunk])  # the non-finite entries of these pixels
        terms = matrix[:, chunk, None] * odd[None]
        out = out + torch.where(reads[:, chunk, None], terms, 0).sum(1)
    return out


def nan_if_not_finite(weight: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(`weight` with NaN where the point (y, x) is not finite, that mask): such a point reads nothing
    and poisons its output, and its offset gradient is NaN. The NaN branch is built from those points
    only, so no NaN reaches the gradient of the others (autograd multiplies an unused branch by 0)."""
    bad = ~(torch.isfinite(y) & torch.isfinite(x))
    yb, xb = torch.where(bad, y, 0), torch.where(bad, x, 0)
    return torch.where(bad, (yb + xb) * math.nan, weight), bad


def pool_rows(index: torch.Tensor, weight: torch.Tensor, reads: torch.Tensor, image: torch.Tensor, group: torch.Tensor,
              table: torch.Tensor) -> torch.Tensor:
    """Each bin row's weighted sum of pixels: (R, D).

    index/weight/reads (R, S): the row's samples' corner pixels (y*W + x), weights, and whether the
    corner is read (a corner of an active sample with a finite point inside the map); image/group
    (R,): which image and which position-sensitive channel group the row reads; table (N, groups,
    HW, D). Per (image, group), the read corners' weights are scattered into a (rows x HW) matrix
    and multiplied with the map: channels become one matmul, and autograd keeps that matrix rather
    than a gathered copy of the map per sample. A corner that is not read contributes nothing; one
    whose weight is not finite (its point is not finite) makes the row NaN.
    """
    n_images, groups, hw, d = table.shape
    out = torch.zeros(index.shape[0], d, dtype=table.dtype, device=table.device)
    kept = torch.where(reads, weight, 0)
    # NaN where a row has a sample whose point is not finite (its offset is NaN or infinite), else 0;
    # differentiable, so that offset's gradient is NaN too.
    poison = (torch.where(reads, 0, weight).sum(1, keepdim=True) * 0).to(table.dtype)
    for n in range(n_images):
        for g in range(groups):
            rows = ((image == n) & (group == g)).nonzero().flatten()
            if rows.numel():
                matrix = torch.zeros(rows.numel(), hw, dtype=table.dtype, device=table.device)
                matrix = matrix.scatter_add(1, index[rows], kept[rows])
                counts = torch.zeros(rows.numel(), hw, dtype=table.dtype, device=table.device)
                read = counts.scatter_add(1, index[rows], reads[rows].to(table.dtype)) > 0
                out = out.index_copy(0, rows, _ReadProduct.apply(matrix, read, table[n, g]))
    return out + poison
