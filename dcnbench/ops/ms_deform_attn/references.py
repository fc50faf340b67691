"""The second formulation of multi-scale deformable attention, through `grid_sample`, as mmcv's
`multi_scale_deformable_attn_pytorch` and transformers' eager `MultiScaleDeformableAttention`
write it (written here from that description, not copied): per level, the heads' maps as a batch
of (D, H, W) images, the locations as a grid `2·loc − 1`, grid_sample with align_corners=False and
zero padding, then the attention-weighted sum over the level's points.

It is the identity the `ms-grid-sample-identity*` cases check every backend against (the direct
bilinear oracle and this agree to rounding: grid_sample's pixel coordinate ((2·loc − 1 + 1)·W − 1)/2
is loc·W − 0.5), and, run in the case's dtype, the `grid_sample` reference row of `speed` (what
transformers runs without the CUDA hub kernel). Also here: the pixel-centre identity (a location
exactly on a pixel centre reads that pixel alone) and the export layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcnbench.ops.ms_deform_attn.contract import check_call


def via_grid_sample(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                    im2col_step):
    """The op as one grid_sample per level, in the inputs' dtype (the eager formulation): the levels'
    samples stacked, levels and points flattened into one axis, weighted and summed at once."""
    geo = check_call(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                     im2col_step)
    n, _, m, d = value.shape
    samples = []
    for level, ((h, w), start) in enumerate(zip(geo.levels, geo.start_index)):
        # (N, H·W, M, D) -> (N·M, D, H, W): each head's map is one image of D channels.
        maps = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N·M, Lq, P, 2), in grid_sample's [-1, 1].
        grid = (2 * sampling_locations[:, :, :, level] - 1).permute(0, 2, 1, 3, 4).reshape(n * m, geo.queries,
                                                                                           geo.points, 2)
        samples.append(F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N·M, D, Lq, L, P) -> (N·M, D, Lq, L·P), and the weights (N, Lq, M, L, P) -> (N·M, 1, Lq, L·P).
    stacked = torch.stack(samples, dim=-2).flatten(-2)
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(n * m, 1, geo.queries, geo.num_levels * geo.points)
    out = (stacked * weights).sum(-1)  # (N·M, D, Lq)
    return out.reshape(n, m * d, geo.queries).transpose(1, 2).contiguous()


def grid_sample_identity(case):
    """The reference of the `grid_sample` identity cases: the grid_sample formulation in float64."""
    return via_grid_sample


def at_pixel_centres(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                     im2col_step):
    """The op where every location is exactly a pixel centre ((i + 0.5) / size), or one pixel outside
    the map: a centre reads its pixel at weight 1, the outside ones read 0. No interpolation at all,
    so this checks the level layout, the start index and the weighting with nothing in common with
    the bilinear code (the location gradient is one-sided there and is not compared)."""
    geo = check_call(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                     im2col_step)
    n, s, m, d = value.shape
    out = value.new_zeros(n, geo.queries, m, d)
    heads = torch.arange(m).view(1, 1, m, 1)
    images = torch.arange(n).view(n, 1, 1, 1)
    for level, ((h, w), start) in enumerate(zip(geo.levels, geo.start_index)):
        loc = sampling_locations[:, :, :, level].detach()
        col = torch.round(loc[..., 0] * w - 0.5).long()
        row = torch.round(loc[..., 1] * h - 0.5).long()
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        pixel = start + row.clamp(0, h - 1) * w + col.clamp(0, w - 1)
        picked = value[images, pixel, heads]  # (n, Lq, M, P, D)
        picked = torch.where(inside.unsqueeze(-1), picked, 0)
        out = out + (picked * attention_weights[:, :, :, level].unsqueeze(-1)).sum(3)
    return out.reshape(geo.output_shape)


def pixel_centre_identity(case):
    return at_pixel_centres


# ---- the ONNX export check ----------------------------------------------------------------------


class Layer(torch.nn.Module):
    """One attention call around a backend's callable, the levels fixed (as in a model, where they
    come from the backbone's shapes): forward(value, sampling_locations, attention_weights)."""

    def __init__(self, fn, levels, starts, im2col_step: int):
        super().__init__()
        self.fn, self.levels, self.starts, self.im2col_step = fn, levels, starts, im2col_step

    def forward(self, value, sampling_locations, attention_weights):
        shapes = torch.tensor(self.levels, dtype=torch.int64, device=value.device)
        starts = torch.tensor(self.starts, dtype=torch.int64, device=value.device)
        return self.fn(value, shapes, starts, sampling_locations, attention_weights, self.im2col_step)


def export_layer(case, fn) -> tuple[torch.nn.Module, tuple]:
    """The module the export check exports for this case, and its call's arguments."""
    geo = case.geometry
    t = case.inputs("cpu")
    layer = Layer(fn, [list(hw) for hw in geo.levels], list(geo.start_index), geo.im2col_step)
    return layer, (t["value"], t["sampling_locations"], t["attention_weights"])


def oracle_for(case):
    """The export cases compare the exported model's output with the float64 oracle."""
    from dcnbench.ops.ms_deform_attn.oracle import ms_deform_attn

    return ms_deform_attn
