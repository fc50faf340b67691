"""How far two float64 implementations of deform_conv2d may differ by rounding alone.

Two libraries computing the same function round differently: another summation order, a vector
width (AVX2 here, AVX-512 elsewhere), a fused multiply-add. Bit-equality between them is a fact
about one CPU, not about the code (onnxruntime and torchvision agree bitwise on this AVX2 machine
and differ by one ulp at 65 of 972 outputs of `border-heavy/float64` on an AVX-512 one), so tests
compare them within this bound instead.

Each output is `b + sum_t w_t * m_t * sum_q g_tq * x_q` over its K = C/groups * kh * kw taps t
and the (at most four) in-map corners q of each tap's sample, with bilinear weights
`g = (1 - |py - qy|) * (1 - |px - qx|)`. Standard forward error analysis (Higham, "Accuracy and
Stability of Numerical Algorithms", 2nd ed., section 3.1), to first order in the unit roundoff
u = 2^-53, for ANY order of the operations, with or without FMA:

- the products: each term is a product of five factors (w, m, two weight factors, x), four
  roundings; the sum of at most 4K + 1 terms (the bias): together at most gamma(4K + 5) times
  S = |b| + sum_t |w_t| |m_t| sum_q g_tq |x_q|, with gamma(n) = n u / (1 - n u). S is the oracle
  evaluated on |x|, |w|, |m|, |b| at the same offsets (the weights g are never negative);
- the weights: the sampling coordinate p = base + offset is rounded once (|dp| <= u |p|), and
  `1 - |p - q|` rounds at most twice more, so each weight factor is off by at most u (|p| + 2), a
  corner's weight by u (|py| + |px| + 5), and the output by that times
  sum_t |w_t| |m_t| sum_q |x_q| <= 4 max|x| R, R = sum_t |w_t| |m_t|.

Each library is within E = gamma(4K + 5) S + 4 u (P + 5) max|x| R of the exact value (P the
largest |py| + |px| of any sample), so two of them are within 2E of each other, elementwise.
"""

from __future__ import annotations

import torch

from dcnbench.ops.deform_conv2d.oracle import deform_conv2d as oracle
from dcnbench.ops.deform_conv2d.oracle import sampling_points

U = 2.0**-53  # float64's unit roundoff


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def deform_conv2d_bound(case, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The elementwise bound 2E (above) on |a - b| for two float64 deform_conv2d results of `case`
    on the tensors `t` (the case's inputs)."""
    geo = case.geometry
    x, w = t["input"].double(), t["weight"].double()
    mask = t.get("mask")
    bias = t.get("bias")
    m = torch.ones(geo.n, geo.offset_groups * geo.taps, geo.ho, geo.wo, dtype=torch.float64) if mask is None \
        else mask.double()
    s = oracle(x.abs(), t["offset"].double(), w.abs(), None if bias is None else bias.double().abs(), stride=geo.stride,
               padding=geo.padding, dilation=geo.dilation, mask=m.abs())
    # R per output (n, o, ho, wo): sum over the taps of |w| times the mask of the tap's offset group.
    per_group = geo.c // geo.groups
    channel_group = torch.arange(geo.c) // (geo.c // geo.offset_groups)  # input channel -> offset group
    w_abs = w.abs().reshape(geo.o, per_group, geo.taps)
    first_channel = (torch.arange(geo.o) // (geo.o // geo.groups)) * per_group  # output channel -> its first input channel
    og = channel_group[first_channel[:, None] + torch.arange(per_group)[None, :]]  # (O, C/groups): offset group of each
    by_group = torch.zeros(geo.o, geo.offset_groups, geo.taps, dtype=torch.float64)
    by_group.scatter_add_(1, og[:, :, None].expand(-1, -1, geo.taps), w_abs)
    r = torch.einsum("ogk,ngkhw->nohw", by_group, m.abs().reshape(geo.n, geo.offset_groups, geo.taps, geo.ho, geo.wo))
    py, px = sampling_points(t["offset"].double(), geo)
    p = float((py.abs() + px.abs()).max()) if py.numel() else 0.0
    k = per_group * geo.taps
    e = gamma(4 * k + 5) * s + 4 * U * (p + 5) * float(x.abs().max()) * r
    return 2 * e
