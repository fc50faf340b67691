"""The RoI pooling oracles against values worked out by hand, and their argument checks.

The map is x[y, x] = 10*y + x, which bilinear interpolation reproduces exactly inside the map, so
each expected value is the sampling point's coordinates written as 10*y + x.
"""

import pytest
import torch

from dcnbench.ops.deform_psroi_pool.oracle import deform_psroi_pool
from dcnbench.ops.deform_roi_pool.oracle import deform_roi_pool
from dcnbench.ops.deform_psroi_pool.points import psroi_rois_for_roi_align
from dcnbench.ops.rois import c_round


def _ramp(n=1, c=1, h=4, w=5):
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    return (10 * y + x).expand(n, c, h, w).clone()


def _rois(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_roi_pool_samples_bin_centres_and_shifts_x_by_channel_0():
    # RoI (0.5, 0.5)-(2.5, 2.5) at scale 1 -> [0, 2] x [0, 2]; 2x2 bins of size 1; one sample per bin at its centre.
    x = _ramp()
    offset = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    offset[0, 0, 0, 0] = 0.5   # x shift of bin (0, 0): gamma * roi_w * 0.5 = 0.1 * 2 * 0.5 = 0.1
    offset[0, 1, 1, 1] = -1.0  # y shift of bin (1, 1): 0.1 * 2 * -1 = -0.2
    out = deform_roi_pool(x, _rois([0, 0.5, 0.5, 2.5, 2.5]), offset, (2, 2), 1.0, 1, 0.1)
    expected = torch.tensor([[10 * 0.5 + 0.5 + 0.1, 10 * 0.5 + 1.5], [10 * 1.5 + 0.5, 10 * (1.5 - 0.2) + 1.5]],
                            dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-12)


def test_roi_pool_offset_gradient_is_gamma_times_roi_size_times_slope():
    x = _ramp()
    offset = torch.full((1, 2, 1, 1), 0.1, dtype=torch.float64, requires_grad=True)
    out = deform_roi_pool(x, _rois([0, 0.5, 0.5, 3.5, 2.5]), offset, (1, 1), 1.0, 2, 0.1)  # roi 3 wide, 2 high
    out.sum().backward()
    # d/d offset_x = gamma * roi_w * (slope 1 in x); d/d offset_y = gamma * roi_h * (slope 10 in y).
    torch.testing.assert_close(offset.grad.flatten(), torch.tensor([0.1 * 3 * 1, 0.1 * 2 * 10], dtype=torch.float64))


def test_roi_pool_border_rule_clamps_within_one_pixel_and_zeroes_beyond():
    x = _ramp()
    # One sample at the centre: x = (x1 + x2)/2 - 0.5. Centre x -0.7 (inside [-1, 0]) reads column 0;
    # centre x -2.6 is beyond -1 and reads 0; centre y 3.6 (past H-1 = 3, before H = 4) reads row 3.
    rois = _rois([0, -0.4, 1.5, 0.0, 2.5], [0, -4.0, 1.5, -1.2, 2.5], [0, 1.5, 3.6, 2.5, 4.6])
    out = deform_roi_pool(x, rois, None, (1, 1), 1.0, 1, 0.1).flatten()
    torch.testing.assert_close(out, torch.tensor([10 * 1.5 + 0, 0.0, 10 * 3 + 1.5], dtype=torch.float64))


def test_roi_pool_adaptive_grid_and_degenerate_rois():
    x = _ramp(h=6, w=6)
    # Zero width with sampling_ratio 0: ceil(0 / bins) = 0 samples, so the bin is 0; with 2 it samples a line.
    rois = _rois([0, 2.0, 1.0, 2.0, 4.0])
    assert deform_roi_pool(x, rois, None, (1, 1), 1.0, 0, 0.1).abs().max() == 0
    line = deform_roi_pool(x, rois, None, (1, 1), 1.0, 2, 0.1).flatten()
    torch.testing.assert_close(line, torch.tensor([10 * 2.0 + 1.5], dtype=torch.float64))  # y 0.5..3.5 averages 2
    # RoI 2.5 high -> ceil(2.5) = 3 samples per axis; on a linear map the mean is the centre.
    out = deform_roi_pool(x, _rois([0, 1.0, 1.0, 3.5, 3.5]), None, (1, 1), 1.0, 0, 0.1).flatten()
    torch.testing.assert_close(out, torch.tensor([10 * 1.75 + 1.75], dtype=torch.float64))


def test_psroi_pool_rounds_rois_samples_bin_starts_and_is_position_sensitive():
    # RoI 0.6..2.4 rounds to 1..2: start 1 - 0.5 = 0.5, end 3 - 0.5 = 2.5, bins of 1, one sample at each bin start.
    x = _ramp()
    out = deform_psroi_pool(x, _rois([0, 0.6, 0.6, 2.4, 2.4]), None, 1.0, 1, 1, 2, 2, 1, 0.0, True)
    expected = torch.tensor([[10 * 0.5 + 0.5, 10 * 0.5 + 1.5], [10 * 1.5 + 0.5, 10 * 1.5 + 1.5]], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-12)
    # group 2: bin (ph, pw) of output channel 0 reads input channel ph * 2 + pw (each channel a constant).
    const = torch.arange(1.0, 5.0, dtype=torch.float64).reshape(1, 4, 1, 1).expand(1, 4, 4, 5).clone()
    ps = deform_psroi_pool(const, _rois([0, 0.6, 0.6, 2.4, 2.4]), None, 1.0, 1, 2, 2, 2, 1, 0.0, True)
    torch.testing.assert_close(ps[0, 0], torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))


def test_psroi_pool_trans_channel_0_is_x_scaled_by_trans_std_and_roi_size():
    x = _ramp()
    trans = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    trans[0, 0] = 0.5  # x shift: trans_std * roi_w * 0.5 = 0.25 * 2 * 0.5 = 0.25
    trans[0, 1] = -0.5  # y shift: -0.25
    out = deform_psroi_pool(x, _rois([0, 1.0, 1.0, 2.0, 2.0]), trans, 1.0, 1, 1, 1, 1, 1, 0.25, False)
    torch.testing.assert_close(out.flatten(), torch.tensor([10 * (0.5 - 0.25) + 0.5 + 0.25], dtype=torch.float64))


def test_psroi_pool_skips_samples_outside_and_divides_by_the_kept():
    x = _ramp()
    # x: start -2.5, width 3 (0 + 1 - 0.5 + 2.5), 3 samples at -2.5, -1.5, -0.5: only -0.5 is kept (clamped to 0).
    # y: start 1.5, height 1, samples 1.5, 1.833, 2.167: all kept.
    out = deform_psroi_pool(x, _rois([0, -2.0, 2.0, 0.0, 2.0]), None, 1.0, 1, 1, 1, 1, 3, 0.0, True)
    ys = [1.5 + i / 3 for i in range(3)]
    expected = sum(10 * y + 0 for y in ys) / 3
    torch.testing.assert_close(out.flatten(), torch.tensor([expected], dtype=torch.float64))
    # With 2 samples (-2.5, -1.0) none is kept: the bin is 0.
    none_kept = deform_psroi_pool(x, _rois([0, -2.0, 2.0, 0.0, 2.0]), None, 1.0, 1, 1, 1, 1, 2, 0.0, True)
    assert none_kept.abs().max() == 0


def test_c_round_rounds_halves_away_from_zero():
    got = c_round(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49], dtype=torch.float64))
    assert got.tolist() == [1.0, 2.0, 3.0, -1.0, -2.0, 0.0]


@pytest.mark.any_cpu
def test_no_trans_ignores_trans_and_equals_zero_trans():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    rois = _rois([0, 1.2, 0.3, 5.1, 4.4], [1, -1.0, 2.0, 3.0, 9.0])
    kw = dict(spatial_scale=1.0, output_dim=2, group_size=2, pooled_size=2, part_size=2, sample_per_part=2, trans_std=0.25)
    ignored = deform_psroi_pool(x, rois, torch.randn(2, 2, 2, 2, dtype=torch.float64), **kw, no_trans=True)
    zero = deform_psroi_pool(x, rois, torch.zeros(2, 2, 2, 2, dtype=torch.float64), **kw, no_trans=False)
    assert torch.equal(ignored, zero)


def test_psroi_rois_for_roi_align_starts_half_a_sub_bin_early():
    moved = psroi_rois_for_roi_align(_rois([0, 1.4, 2.6, 3.2, 5.0]), 0.5, 2, 2)
    # MXNet box: x 1 * 0.5 - 0.5 = 0 .. (3 + 1) * 0.5 - 0.5 = 1.5, width 1.5; sub-bin 1.5 / 2 / 2 = 0.375.
    x1 = (0.0 - 0.375 / 2 + 0.5) / 0.5
    torch.testing.assert_close(moved[0, [1, 3]], torch.tensor([x1, x1 + 1.5 / 0.5], dtype=torch.float64))


@pytest.mark.parametrize("rois, offset, size, message", [
    (_rois([0, 1, 1, 3]), None, (2, 2), "rois must have shape (K, 5)"),
    (_rois([2, 1, 1, 3, 3]), None, (2, 2), "rois[0, 0] = 2 is not a batch index of the 2-image input"),
    (_rois([0.5, 1, 1, 3, 3]), None, (2, 2), "is not a batch index"),
    (_rois([0, 1, 1, 3, 3]), None, (-2, 2), "output_size (-2, 2) must be positive"),
    (_rois([0, 1, 1, 3, 3]), torch.zeros(1, 2, 3, 2, dtype=torch.float64), (2, 2), "offset has shape (1, 2, 3, 2), expected (1, 2, 2, 2)"),
])
def test_roi_pool_rejects_bad_arguments_with_got_and_expected(rois, offset, size, message):
    with pytest.raises(ValueError) as err:
        deform_roi_pool(torch.zeros(2, 3, 5, 5, dtype=torch.float64), rois, offset, size, 1.0, 0, 0.1)
    assert message in str(err.value)


def test_psroi_pool_rejects_channels_that_are_not_output_dim_times_group_squared():
    with pytest.raises(ValueError, match="C=5 must be output_dim"):
        deform_psroi_pool(torch.zeros(1, 5, 5, 5, dtype=torch.float64), _rois([0, 1, 1, 3, 3]), None, 1.0, 1, 2, 2, 2, 1, 0.1, True)
    with pytest.raises(ValueError, match=r"trans has shape \(1, 2, 3, 3\), expected \(1, 2, 2, 2\)"):
        deform_psroi_pool(torch.zeros(1, 4, 5, 5, dtype=torch.float64), _rois([0, 1, 1, 3, 3]),
                          torch.zeros(1, 2, 3, 3, dtype=torch.float64), 1.0, 1, 2, 2, 2, 1, 0.1, False)
