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


def backend() -> Backend:
    return Backend(
        name="pytorch",
        description="pure PyTorch, vectorised, autograd backward; float64 on the CPU is the oracle",
        ops={OP_DEFORM_CONV2D: deform_conv2d},
        dtypes=local_devices(ALL_DTYPES),
        version=torch.__version__,
    )
