"""Pure-PyTorch sampling pieces the oracles share: the bilinear sampler under the paper's rule Z
(and MXNet DCNv1's rule C), and the per-bin pooling matmul of the RoI pooling oracles."""

from __future__ import annotations

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


def pool_rows(index: torch.Tensor, weight: torch.Tensor, image: torch.Tensor, group: torch.Tensor,
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
